"""Listing every image visible in some regions, for a targets file nobody has to keep by hand.

Pages through describeImages (`pageSize` 100) per region and image source until `totalCount`
is reached, retrying each page under the same policy as a crawl.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from crawler.errors import ApiError
from crawler.models import ImagesPage, JsonObject, Target

if TYPE_CHECKING:  # a type only: the CLI reads IMAGE_SOURCES without importing tenacity
    from crawler.retry import Retrier

log = logging.getLogger(__name__)

IMAGE_SOURCES = ("public", "private", "shared", "thirdparty", "community")
PAGE_SIZE = 100


class ImageLister(Protocol):
    """What discovery needs of the API client."""

    async def describe_images(
        self, region_id: str, *, image_source: str | None, page_number: int, page_size: int
    ) -> ImagesPage: ...


Found = Callable[[Target, JsonObject], None]


@dataclass(slots=True)
class DiscoveryStats:
    """What a discovery saw."""

    images: int = 0
    requests: int = 0
    by_region: dict[str, int] = field(default_factory=dict)


class Discovery:
    """Lists the images of some regions and sources, each image reported once per region."""

    def __init__(self, api: ImageLister, retrier: Retrier, found: Found) -> None:
        self.stats = DiscoveryStats()
        self._api = api
        self._retrier = retrier
        self._found = found

    async def run(self, regions: Sequence[str], sources: Sequence[str]) -> DiscoveryStats:
        """List every region concurrently; raises the first error that ended a listing."""
        await asyncio.gather(*(self._list_region(region, sources) for region in regions))
        return self.stats

    async def _list_region(self, region_id: str, sources: Sequence[str]) -> None:
        seen: set[str] = set()  # an image can be listed under more than one source
        for source in sources:
            page_number = 1
            while await self._list_page(region_id, source, page_number, seen):
                page_number += 1
        self.stats.by_region[region_id] = len(seen)

    async def _list_page(
        self, region_id: str, source: str, page_number: int, seen: set[str]
    ) -> bool:
        """List one page; True when there are more pages."""
        page = await self._page(region_id, source, page_number)
        for image in page.images:
            image_id = image.get("imageId") if isinstance(image, dict) else None
            if isinstance(image_id, str) and image_id not in seen:
                seen.add(image_id)
                self.stats.images += 1
                self._found(Target(region_id, image_id), image)
        full = len(page.images) >= PAGE_SIZE
        return full and page_number * PAGE_SIZE < page.total_count

    async def _page(self, region_id: str, source: str, page_number: int) -> ImagesPage:
        async def attempt() -> ImagesPage:
            self.stats.requests += 1
            return await self._api.describe_images(
                region_id, image_source=source, page_number=page_number, page_size=PAGE_SIZE
            )

        attempted = await self._retrier.call(attempt)
        if attempted.value is None:
            assert attempted.error is not None
            raise _listing_failed(region_id, source, page_number, attempted.error) from (
                attempted.error
            )
        return attempted.value


def _listing_failed(region_id: str, source: str, page_number: int, error: ApiError) -> ApiError:
    """The same kind of error, saying which listing it ended."""
    where = f"listing {source} images of {region_id}, page {page_number}"
    return type(error)(
        f"{where}: {error.message}",
        http_status=error.http_status,
        error_status=error.error_status,
        request_id=error.request_id,
    )
