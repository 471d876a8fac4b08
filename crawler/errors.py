"""The crawler's one exception tree.

    CrawlerError
    ├── ConfigError            bad config file, key or environment variable (exit 2)
    ├── TargetsError           bad targets file (exit 2)
    ├── ApiError               one API attempt that did not give an image
    │   ├── TransientApiError  worth retrying: 429 (not QUOTA_EXCEEDED), 5xx, timeouts, bad bodies
    │   │   ├── RateLimitedError   429 from a rate limit; carries the remaining-minute budget
    │   │   └── BadBodyError       a 2xx whose body is not the answer asked for (BAD_BODY)
    │   └── PermanentApiError  not worth retrying: 400, 404, 413, 414, QUOTA_EXCEEDED
    │       ├── ImageNotFoundError  the image does not exist: the target is `missing`
    │       ├── RouteNotFoundError  the gateway has no such route: a configuration problem
    │       └── AuthError           401/403: credentials rejected, the whole run stops (exit 3)
    │           └── CertificateError    the server's TLS certificate was refused: same effect
    ├── NormaliseError         an API image object that cannot become rows
    ├── StoreError             the database is unusable (exit 3)
    │   ├── QueryError         `crawler sql` got a query SQLite rejects or that would write (exit 2)
    │   └── RunNotFoundError   no run with the id asked for, e.g. `--resume 99` (exit 2)
    ├── EndpointUnreachableError  no answer at all from the API, only transport failures (exit 3)
    ├── InternalError          a bug: the run is marked failed, the traceback logged (exit 70)
    └── LockHeldError          another crawl holds the database lock (exit 75)

Whether an attempt is retried is decided by its type alone (see `retry`), never by call sites.
Messages name the target and never carry secrets or signatures.
"""

from __future__ import annotations


class CrawlerError(Exception):
    """Base of every error the crawler raises on purpose."""


class ConfigError(CrawlerError):
    """The config file, one of its keys, or an environment variable it names is wrong."""


class TargetsError(CrawlerError):
    """The targets file cannot be read or holds invalid lines."""


class ApiError(CrawlerError):
    """One API attempt failed.

    Attributes:
        http_status: the HTTP status, or None when no response arrived.
        error_status: the envelope's `error.status` (or a local label such as `TIMEOUT`).
        request_id: from the body, else the `x-jdcloud-request-id` header.
        retry_after_s: the server's `Retry-After`, when it sent one.
        remaining_minute: `x-jdcloud-remaining-minute`, when present.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error_status: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        remaining_minute: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.error_status = error_status
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.remaining_minute = remaining_minute


class TransientApiError(ApiError):
    """Worth another attempt after a backoff."""


class RateLimitedError(TransientApiError):
    """A 429 from a rate limit (not a resource quota): slow down, then retry."""


class BadBodyError(TransientApiError):
    """A 2xx whose body is unusable: not JSON, or not the shape the call answers with.

    Retried like any transient failure; a describeImages batch instead asks image by image.
    """


class PermanentApiError(ApiError):
    """Another attempt would give the same answer."""


class ImageNotFoundError(PermanentApiError):
    """A definitive 404 for the image itself: the target's outcome is `missing`."""


class RouteNotFoundError(PermanentApiError):
    """A gateway 404 with no route: the endpoint or path is wrong, not the image."""


class AuthError(PermanentApiError):
    """401/403: the credentials were rejected; the whole run stops."""


class CertificateError(AuthError):
    """The endpoint's TLS certificate failed verification: the server could not be trusted.

    An AuthError with the roles reversed: it is the same for every request to that host, so,
    like rejected credentials, it ends the run at once instead of being retried per target.
    """


class NormaliseError(CrawlerError):
    """An API image object could not be turned into rows."""


class StoreError(CrawlerError):
    """The database cannot be opened, migrated or written."""


class QueryError(StoreError):
    """A read-only query was rejected: bad SQL, or a statement that would write.

    A StoreError so that code catching database failures still catches it; the CLI maps it to a
    usage error (exit 2), since the database itself is fine.
    """


class RunNotFoundError(StoreError):
    """The database has no run with the id asked for (a usage error, exit 2)."""


class EndpointUnreachableError(CrawlerError):
    """Nothing but transport failures (refused, DNS, TLS) since the run began: stop the run."""


class InternalError(CrawlerError):
    """A bug in the crawler (not the API's nor the database's fault): please report it."""


class LockHeldError(CrawlerError):
    """Another crawl holds the lock on the same database."""
