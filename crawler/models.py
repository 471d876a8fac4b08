"""Frozen values passed between layers."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

JsonObject = dict[str, Any]
Row = dict[str, Any]


@dataclass(frozen=True, slots=True, order=True)
class Target:
    """One (region, image) pair to crawl.

    `answer_digest` is the store's `images.answer_digest` for the pair when the run's targets
    were read, if any: not part of the target's identity (equality, order and hash ignore it).
    """

    region_id: str
    image_id: str
    answer_digest: bytes | None = field(default=None, compare=False, repr=False)


class Outcome(enum.StrEnum):
    """How a target ended in one run."""

    FETCHED = "fetched"
    MISSING = "missing"
    FAILED = "failed"


class RunStatus(enum.StrEnum):
    """The status column of `crawl_runs`."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    # Finished, but the mass-deletion guard held back its missing marks (`crawler accept`).
    HELD = "held"


class VersionStatus(enum.StrEnum):
    """The status column of `image_versions`: whether the image existed in that span of runs."""

    PRESENT = "present"
    MISSING = "missing"


class Change(enum.StrEnum):
    """How an image differs between two runs (`crawler diff`, the `image_changes` view)."""

    ADDED = "added"
    REMOVED = "removed"
    RESTORED = "restored"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class ImageResponse:
    """A successful describeImage: the `image` object exactly as parsed."""

    image: JsonObject
    request_id: str | None
    http_status: int = 200
    remaining_minute: int | None = None
    # `images.answer_digest` of this answer (None: its body was not of the expected shape).
    answer_digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class KnownAnswer:
    """A successful describeImage whose answer digest is the one the caller said is stored: the
    same bytes as the answer the image's rows were made from, but for the requestId. Not parsed;
    `parse` gives its `image` object should it be needed after all."""

    request_id: str
    http_status: int
    remaining_minute: int | None
    digest: bytes
    body: bytes
    parse: Callable[[bytes], JsonObject]


@dataclass(frozen=True, slots=True)
class ImagesPage:
    """A successful describeImages page."""

    images: list[JsonObject]
    total_count: int
    request_id: str | None
    remaining_minute: int | None = None


@dataclass(frozen=True, slots=True)
class ImageRows:
    """One image normalised into rows keyed by column name, ready for the store."""

    image: Row
    disks: list[Row] = field(default_factory=list)
    attachments: list[Row] = field(default_factory=list)
    tags: list[Row] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FetchedImage:
    """A fetched image checked and encoded for storage, its rows built only when needed.

    `digest` identifies what the rows are made from: `raw` and the normaliser's settings. An
    image whose digest equals the one stored with it (`images.raw_digest`) would give the same
    rows again, so an unchanged re-crawl never builds them (`crawler.store.writer`). Building
    them cannot fail for a reason of the answer's: every check that can reject an image has
    run already.
    """

    region_id: str
    image_id: str
    raw: str
    digest: bytes
    # What the rows are built from: the answer's object, whether it held text UTF-8 cannot
    # encode, the zone of times without an offset, and the normaliser's builder. One function
    # for every image rather than a closure each: a batch keeps its fetches alive until it is
    # written, and every object alive that long is one more for the garbage collector to walk.
    image: Mapping[str, Any]
    unencodable: bool
    naive_tz: tzinfo
    rows_from: Callable[[FetchedImage], ImageRows]

    def build(self) -> ImageRows:
        """The image's rows."""
        return self.rows_from(self)


@dataclass(frozen=True, slots=True)
class UnchangedAnswer:
    """The rows of a target whose answer is a `KnownAnswer`: none, since they are stored already.

    The store only moves the image's `last_seen_at` and `last_run_id`, and only where its
    `answer_digest` is still `digest` (checked in the same statement). Should it not be (the
    image was written or marked missing since the targets were read), `build` makes the rows
    from the answer after all, as a fetch would have: the answer was checked once already, so
    that cannot fail for the answer's sake.
    """

    region_id: str
    image_id: str
    digest: bytes
    body: bytes
    parse: Callable[[bytes], JsonObject]
    normalise: Callable[[str, JsonObject], ImageRows | FetchedImage]

    def build(self) -> ImageRows | FetchedImage:
        """The rows of the answer, parsed and normalised."""
        return self.normalise(self.region_id, self.parse(self.body))


@dataclass(frozen=True, slots=True)
class TargetResult:
    """The outcome of one target in one run, with the rows to write when fetched (built, or
    to be built by the store if it needs them)."""

    target: Target
    outcome: Outcome
    attempts: int
    finished_at: datetime
    http_status: int | None = None
    error_status: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    rows: ImageRows | FetchedImage | UnchangedAnswer | None = None
    # The digest of the describeImage answer `rows` were made from, stored with them.
    answer_digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class TargetPage:
    """The next targets of one region for the scheduler, from the store or from claims.

    Attributes:
        targets: the targets, by image id.
        exhausted: the region has no more targets for this process, now or later.
        short: the source had fewer than were asked for right now (None: it did not look).
        retry_in_s: nothing (more) now, but maybe later: ask again after this long.
        after_writes: all that is left is this process's own results on their way to the
            database: ask again as soon as a write of them ends, not only after `retry_in_s`.
    """

    targets: list[Target]
    exhausted: bool
    short: bool | None = None
    retry_in_s: float | None = None
    after_writes: bool = False
