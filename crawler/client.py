"""One HTTP attempt against the JD Cloud VM API, classified into the error tree.

`ApiClient` sends exactly one signed GET per call and either returns the parsed result or raises
one `ApiError` subclass (CONTRACT.md §5, jdcloud-api.md §6):

    2xx with result.image / result.images     -> ImageResponse / ImagesPage
    2xx with a body that is not that          -> BadBodyError  BAD_BODY (any parse failure,
                                                 RecursionError included: the mapping is total)
    401, 403                                  -> AuthError
    407 (from the proxy, or to its CONNECT)   -> AuthError  PROXY_AUTH: the proxy's credentials
    404 NOT_FOUND/RESOURCE_NOT_EXIST (image)  -> ImageNotFoundError
    404 "no route"/"no API", or no envelope   -> RouteNotFoundError
    429 QUOTA_EXCEEDED                        -> PermanentApiError
    429 otherwise                             -> RateLimitedError
    500, 502, 503, 504                        -> TransientApiError
    any other status                          -> PermanentApiError
    body over max_response_bytes              -> PermanentApiError  RESPONSE_TOO_LARGE
    server certificate refused (TLS)          -> CertificateError (an AuthError: ends the run)
    timeout                                   -> TransientApiError  TIMEOUT
    connection error                          -> TransientApiError  CONNECTION_ERROR
    body cut short or undecodable             -> TransientApiError  PAYLOAD_ERROR

Retrying is somebody else's job (`retry`); this module only decides what kind of failure it was.
The bytes on the wire are `crawler.http`'s (the crawler's own HTTP/1.1 client, issue 14).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from crawler.errors import (
    ApiError,
    AuthError,
    BadBodyError,
    CertificateError,
    ConfigError,
    ImageNotFoundError,
    PermanentApiError,
    RateLimitedError,
    RouteNotFoundError,
    TransientApiError,
)
from crawler.http import (
    BodyTooLarge,
    CertificateRefused,
    ConnectionFailed,
    HttpError,
    HttpSession,
    Origin,
    PayloadError,
    ProxyRefused,
    ProxyRoute,
    basic_authorization,
)
from crawler.models import ImageResponse, ImagesPage, JsonObject, KnownAnswer
from crawler.network import Proxy
from crawler.normalise import scrub_text
from crawler.signer import Signer
from crawler.targets import is_valid_image_id, is_valid_region_id

USER_AGENT = "crawler/0.1"
API_VERSION = "v1"
MAX_IDS_PER_CALL = 100
MAX_PAGE_SIZE = 100

REQUEST_ID_HEADER = "x-jdcloud-request-id"
REMAINING_MINUTE_HEADER = "x-jdcloud-remaining-minute"
RETRY_AFTER_HEADER = "retry-after"

_TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
_IMAGE_NOT_FOUND_STATUSES = frozenset({"NOT_FOUND", "RESOURCE_NOT_EXIST"})
_NO_ROUTE_RE = re.compile(r"no route|no api", re.IGNORECASE)
_IMAGE_SOURCE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A gateway message is shown to people and stored; it should never carry a signature or a
# secret-looking hex string, even if a misbehaving server echoed one back.
_SECRET_LIKE_RE = re.compile(r"(?i)signature=[^,\s]*|\b[0-9a-f]{32,}\b")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")
_UUID_VARIANT_DIGITS = "89ab"
_NONCES_PER_DRAW = 256
# orjson reads an integer beyond 64 bits as a float, silently, where json.loads keeps it exact;
# only a run of 19 or more digits can be one, so a body holding such a run goes to json.loads.
# (translate + find: ~1 us for a describeImage body, against ~4 us that orjson saves.)
_DIGIT_MAP = bytes(48 if 48 <= byte <= 57 else 46 for byte in range(256))  # digits to "0"
_LONG_DIGIT_RUN = b"0" * 19
# OpenSSL's X509_V_ERR_* codes for "nothing you trust signed this" (self-signed, unknown issuer):
# the cases a CA bundle fixes, unlike an expired certificate or one for another host.
_UNTRUSTED_ISSUER_CODES = frozenset({2, 18, 19, 20, 21})
_PROXY_REFUSED = (
    "the proxy refused its credentials (check the user name and password in the proxy's URL)"
)
_MESSAGE_MAX_CHARS = 300
_REQUEST_ID_MAX_CHARS = 128
_RAW_VALUE_MAX_CHARS = 80

# Where a describeImage body carries its requestId (jdcloud-api.md §3): the object's first member,
# as the simulator and the SDK's examples write it, or its last, as a gateway error does. Only
# JSON's own blanks may surround it, and only an id of these characters is cut out: another
# would not be certain to leave the rest of the body's meaning alone.
_REQUEST_ID_KEY = b'"requestId"'
_REQUEST_ID_VALUE = re.compile(rb'[ \t\r\n]*:[ \t\r\n]*"([A-Za-z0-9._:-]{1,128})"')
_JSON_BLANKS = b" \t\r\n"
ANSWER_DIGEST_BYTES = 16

Clock = Callable[[], datetime]
NonceFactory = Callable[[], str]
_Reply = tuple[int, Mapping[str, str], bytes]


def open_session(*, concurrency: int, tls: ssl.SSLContext | None = None) -> HttpSession:
    """Open the run's one HTTP session: a keep-alive pool sized to the crawl's concurrency.

    The caller owns the session and closes it. The environment is never read here: the trusted
    certificates and the proxy (`ApiClient`) are chosen by `crawler.network` from the
    environment the caller passes in.

    Args:
        concurrency: requests in flight (connections open) at most, all hosts together.
        tls: the context that verifies servers; None for the system's default trust (built at
            the first https connection; it verifies certificate and host name).

    Returns:
        A session with no cookies that sends the crawler's User-Agent.

    Raises:
        ValueError: when `concurrency` is below 1.
    """
    return HttpSession(concurrency=concurrency, user_agent=USER_AGENT, tls=tls)


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class _NonceSource:
    """Fresh `x-jdcloud-nonce` values: random uuid4 strings, as the official SDK sends.

    Formatted straight from random bytes (`str(uuid.uuid4())` builds a UUID object on the way
    and costs about four times as much), drawn from `os.urandom` for `_NONCES_PER_DRAW` nonces
    at once: one getrandom system call per request showed as 2 % of a crawl's CPU. Called from
    the event loop's thread only (no lock: two threads at once could be handed the same digits).
    """

    __slots__ = ("_at", "_digits")

    def __init__(self) -> None:
        self._digits = ""
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._digits):
            self._digits = os.urandom(16 * _NONCES_PER_DRAW).hex()
            at = 0
        self._at = at + 32
        digits = self._digits[at : at + 32]
        # Version 4 in the 13th digit; the variant bits (10xx) in the 17th.
        variant = _UUID_VARIANT_DIGITS[int(digits[16], 16) & 3]
        return (
            f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"
        )


new_nonce: NonceFactory = _NonceSource()


class ApiClient:
    """Signed describeImage / describeImages calls, one HTTP attempt each.

    Attributes:
        requests_sent: how many HTTP requests this client has started.
    """

    def __init__(
        self,
        session: HttpSession,
        endpoint: str,
        signer: Signer,
        *,
        timeout_s: float,
        max_response_bytes: int,
        clock: Clock = utc_now,
        nonce: NonceFactory = new_nonce,
        proxy: Proxy | None = None,
        answer_salt: bytes | None = None,
    ) -> None:
        """Bind the client to a session, an endpoint and a signer.

        Args:
            session: an open session, usually from `open_session`; not closed here.
            endpoint: `https://host[:port]` (or `http://` for loopback and internal hosts).
            signer: signs each request with the run's credentials.
            timeout_s: the whole attempt (connect, send, read) must finish within this.
            max_response_bytes: a body larger than this is refused without being read.
            clock: gives the signing time (UTC); also used to read a Retry-After date.
            nonce: gives each request's `x-jdcloud-nonce`.
            proxy: send every request through this forward proxy (CONNECT for https); its
                user name and password go only into `Proxy-Authorization`.
            answer_salt: what besides an answer decides the rows made from it (the normaliser's
                version and settings), hashed into every answer digest; None for no digests.

        Raises:
            ConfigError: when the endpoint is not a bare http(s) origin or a limit is not positive.
        """
        if not timeout_s > 0 or max_response_bytes < 1:
            raise ConfigError("timeout_s and max_response_bytes must be positive")
        self._session = session
        self._scheme, self._authority, self._host = _parse_endpoint(endpoint)
        self._origin = _origin(self._scheme, self._authority, proxy)
        self._signer = signer
        self._timeout_s = timeout_s
        self._max_bytes = max_response_bytes
        self._clock = clock
        self._nonce = nonce
        self._answer_seed = None if answer_salt is None else hashlib.sha256(answer_salt)
        self.requests_sent = 0

    def __repr__(self) -> str:
        return f"ApiClient({self._scheme}://{self._authority}, requests_sent={self.requests_sent})"

    async def describe_image(
        self, region_id: str, image_id: str, *, known_digest: bytes | None = None
    ) -> ImageResponse | KnownAnswer:
        """Fetch one image: `GET /v1/regions/{region_id}/images/{image_id}`.

        Args:
            region_id: the image's region.
            image_id: the image.
            known_digest: the `answer_digest` stored for the image, if any: an answer with that
                digest is returned unparsed, as a `KnownAnswer`.

        Raises:
            PermanentApiError: for an invalid id (before any request) or a final error status;
                its subclasses ImageNotFoundError, RouteNotFoundError and AuthError as above.
            TransientApiError: for a failure worth retrying (RateLimitedError for a 429).
        """
        _check_region("describeImage", region_id)
        _check_image("describeImage", "image id", image_id)
        what = f"describeImage {region_id}/{image_id}"
        path = f"/{API_VERSION}/regions/{region_id}/images/{image_id}"
        status, headers, body = await self._get(path, "", region_id, what)
        if 200 <= status < 300:
            return self._image_response(headers, body, what, status, known_digest)
        raise self._error(status, headers, body, what, image_call=True)

    async def describe_images(
        self,
        region_id: str,
        *,
        ids: Sequence[str] = (),
        image_source: str | None = None,
        page_number: int = 1,
        page_size: int = 100,
    ) -> ImagesPage:
        """Fetch one page of images: `GET /v1/regions/{region_id}/images?...`.

        Args:
            region_id: the region to list.
            ids: image ids to ask for (`ids.1`, `ids.2`, ...), at most 100; ids that do not
                exist are simply absent from the page.
            image_source: `public`, `private`, ...; the API requires it unless `ids` is given.
            page_number: 1-based page.
            page_size: images per page, 1 to 100.

        Raises:
            PermanentApiError: for invalid arguments (before any request) or a final error status.
            TransientApiError: for a failure worth retrying (RateLimitedError for a 429).
        """
        _check_region("describeImages", region_id)
        query = _images_query(ids, image_source, page_number, page_size)
        what = f"describeImages {region_id} ({len(ids)} ids, page {page_number})"
        path = f"/{API_VERSION}/regions/{region_id}/images"
        status, headers, body = await self._get(path, query, region_id, what)
        if 200 <= status < 300:
            return self._images_page(headers, body, what, status)
        raise self._error(status, headers, body, what, image_call=False)

    async def _get(self, path: str, query: str, region_id: str, what: str) -> _Reply:
        """Send one signed GET and read its body under the size cap."""
        headers = self._signer.sign(
            method="GET",
            host=self._host,
            path=path,
            query=query,
            region=region_id,
            at=self._clock(),
            nonce=self._nonce(),
        )
        # The Host on the wire is the one that was signed (the session sends headers as given).
        headers["Host"] = self._host
        target = f"{path}?{query}" if query else path
        self.requests_sent += 1
        try:
            response = await self._session.get(
                self._origin,
                target,
                headers,
                timeout_s=self._timeout_s,
                max_body_bytes=self._max_bytes,
            )
        except BodyTooLarge as exc:
            raise self._too_large(exc, what) from exc
        except CertificateRefused as exc:
            raise _certificate_error(exc, what) from exc
        except ProxyRefused as exc:
            if exc.status != 407:
                raise self._transport_error(exc, what) from exc
            raise AuthError(f"{what}: {_PROXY_REFUSED}", http_status=407) from exc
        except (TimeoutError, HttpError) as exc:
            raise self._transport_error(exc, what) from exc
        return response.status, response.headers, response.body

    def _too_large(self, exc: BodyTooLarge, what: str) -> PermanentApiError:
        # The HTTP layer dropped the connection rather than drain a body nobody will read.
        return PermanentApiError(
            f"{what}: the response is too large: it {exc.detail}, the limit is {self._max_bytes}",
            http_status=exc.status,
            error_status="RESPONSE_TOO_LARGE",
            request_id=_request_id(None, exc.headers),
            remaining_minute=_remaining_minute(exc.headers),
        )

    def _transport_error(self, exc: BaseException, what: str) -> TransientApiError:
        """A failure below the API; its status and headers are kept when they had arrived."""
        if isinstance(exc, TimeoutError):
            label, text = "TIMEOUT", f"no complete response within {self._timeout_s:g} s"
        elif isinstance(exc, PayloadError):
            label, text = "PAYLOAD_ERROR", "the response body was cut short or malformed"
        elif isinstance(exc, ConnectionFailed):
            label, text = "CONNECTION_ERROR", "the connection failed"
        else:
            label, text = "HTTP_ERROR", "the HTTP exchange failed"
        detail = _clean_message(str(exc))
        suffix = f": {type(exc).__name__}: {detail}" if detail else f": {type(exc).__name__}"
        status = exc.status if isinstance(exc, HttpError) else None
        if status is None:
            return TransientApiError(f"{what}: {text}{suffix}", error_status=label)
        assert isinstance(exc, HttpError)
        return TransientApiError(
            f"{what}: {text}{suffix}",
            http_status=status,
            error_status=label,
            request_id=_request_id(None, exc.headers),
            remaining_minute=_remaining_minute(exc.headers),
        )

    def _image_response(
        self,
        headers: Mapping[str, str],
        body: bytes,
        what: str,
        status: int,
        known_digest: bytes | None,
    ) -> ImageResponse | KnownAnswer:
        digest = None
        if self._answer_seed is not None:
            cut = answer_digest(self._answer_seed, body)
            if cut is not None:
                digest, request_id = cut
                if digest == known_digest:  # the answer already checked and stored
                    remaining = _remaining_minute(headers)
                    return KnownAnswer(request_id, status, remaining, digest, body, answer_image)
        doc = _json_object(body)
        result = doc.get("result") if doc is not None else None
        image = result.get("image") if isinstance(result, dict) else None
        if not isinstance(image, dict):
            raise _bad_body(doc, headers, what, status, "no result.image object")
        return ImageResponse(
            image, _request_id(doc, headers), status, _remaining_minute(headers), digest
        )

    def _images_page(
        self, headers: Mapping[str, str], body: bytes, what: str, status: int
    ) -> ImagesPage:
        doc = _json_object(body)
        result = doc.get("result") if doc is not None else None
        if not isinstance(result, dict):
            raise _bad_body(doc, headers, what, status, "no result object")
        # A Go server writes an empty list as null.
        images = result.get("images")
        if images is None:
            images = []
        if not isinstance(images, list) or not all(isinstance(i, dict) for i in images):
            raise _bad_body(doc, headers, what, status, "result.images is not a list of objects")
        total = result.get("totalCount", len(images))
        if not isinstance(total, int) or isinstance(total, bool):
            raise _bad_body(doc, headers, what, status, "result.totalCount is not an integer")
        return ImagesPage(images, total, _request_id(doc, headers), _remaining_minute(headers))

    def _error(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        what: str,
        *,
        image_call: bool,
    ) -> ApiError:
        """The error for a non-2xx response, classified by status and envelope."""
        doc = _json_object(body)
        envelope = doc.get("error") if doc is not None else None
        if not isinstance(envelope, dict):
            envelope = None
        error_status = _envelope_text(envelope, "status")
        gateway = _envelope_text(envelope, "message", self._signer.session_token)
        cls, summary = _classify(status, error_status, gateway, envelope is not None, image_call)
        label = error_status or f"HTTP_{status}"
        if envelope is None:
            detail = f"HTTP {status} without a JSON error envelope"
        else:
            detail = f"HTTP {status} {label}: {gateway or '(no message)'}"
        return cls(
            f"{what}: {summary} ({detail})",
            http_status=status,
            error_status=label,
            request_id=_request_id(doc, headers),
            retry_after_s=_retry_after_s(headers.get(RETRY_AFTER_HEADER), self._clock),
            remaining_minute=_remaining_minute(headers),
        )


def _origin(scheme: str, authority: str, proxy: Proxy | None) -> Origin:
    """Where the session connects: the endpoint's bare host and port, and the proxy, if any.

    The proxy's credentials ride on the CONNECT for https and on each request for http (which
    the proxy itself receives).
    """
    host, port = _host_and_port(authority, 443 if scheme == "https" else 80)
    if proxy is None:
        return Origin(scheme, host, port)
    proxy_host, proxy_port = _host_and_port(proxy.url.removeprefix("http://"), 80)
    auth = None
    if proxy.username is not None:
        auth = basic_authorization(proxy.username, proxy.password or "")
    return Origin(scheme, host, port, ProxyRoute(proxy_host, proxy_port, auth))


def _host_and_port(authority: str, default_port: int) -> tuple[str, int]:
    """(`host` without IPv6 brackets, port) of `host[:port]`."""
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, colon, port = authority.rpartition(":")
    return (host, int(port)) if colon else (authority, default_port)


def _certificate_error(exc: CertificateRefused, what: str) -> ApiError:
    """The server's certificate was refused: name the host and OpenSSL's reason."""
    cause = exc.cause
    reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or cause
    advice = ""
    if getattr(cause, "verify_code", None) in _UNTRUSTED_ISSUER_CODES:
        advice = (
            "; if a TLS-inspecting gateway or a private CA signs it, trust that CA's certificate "
            "with [api] ca_bundle or SSL_CERT_FILE"
        )
    return CertificateError(
        f"{what}: the TLS certificate of {exc.host}:{exc.port} was refused: {reason}{advice}",
        error_status="TLS_CERTIFICATE",
    )


def _classify(
    status: int, error_status: str | None, gateway: str, has_envelope: bool, image_call: bool
) -> tuple[type[ApiError], str]:
    """The error class for a non-2xx status, and a short summary for the message."""
    if status in (401, 403):
        return AuthError, "the credentials were rejected"
    if status == 407:  # only a proxy answers 407
        return AuthError, _PROXY_REFUSED
    if status == 429:
        if error_status == "QUOTA_EXCEEDED":
            return PermanentApiError, "a resource quota is exceeded"
        return RateLimitedError, "rate limited"
    if status == 404:
        return _classify_not_found(error_status, gateway, has_envelope, image_call)
    if status in _TRANSIENT_STATUSES:
        return TransientApiError, "the server failed"
    return PermanentApiError, "the request was refused"


def _classify_not_found(
    error_status: str | None, gateway: str, has_envelope: bool, image_call: bool
) -> tuple[type[ApiError], str]:
    # Only a well-formed "this resource does not exist" marks an image missing: a wrong endpoint
    # or path must never make the whole inventory look deleted.
    definitive = (
        has_envelope
        and error_status in _IMAGE_NOT_FOUND_STATUSES
        and _NO_ROUTE_RE.search(gateway) is None
    )
    if not definitive:
        return RouteNotFoundError, "the gateway has no route for this request (check the endpoint)"
    if image_call:
        return ImageNotFoundError, "the image does not exist"
    return PermanentApiError, "not found"


def _parse_endpoint(endpoint: str) -> tuple[str, str, str]:
    """(scheme, authority on the wire, canonical host signed and sent as Host)."""
    try:
        url = urlsplit(endpoint)
        port = url.port
        raw_host = url.hostname or ""
        if not raw_host.isascii():  # an internationalised name goes on the wire as punycode
            raw_host = raw_host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise ConfigError(f"api endpoint {endpoint!r} is not a valid URL") from exc
    bare = url.path in ("", "/") and not (url.query or url.fragment or "@" in url.netloc)
    if url.scheme not in ("http", "https") or not raw_host or not bare:
        raise ConfigError(
            f"api endpoint {endpoint!r} must be an http(s) origin such as "
            "https://vm.jdcloud-api.com, with no path, query or user"
        )
    host = f"[{raw_host}]" if ":" in raw_host else raw_host
    authority = host if port is None else f"{host}:{port}"
    # As the SDK signs it: the port is part of the host unless it is 80 or 443.
    canonical = host if port in (None, 80, 443) else authority
    return url.scheme, authority, canonical


def _check_region(api: str, region_id: str) -> None:
    if not isinstance(region_id, str) or not is_valid_region_id(region_id):
        raise _invalid(api, "region id", region_id)


def _check_image(api: str, what: str, image_id: str) -> None:
    if not isinstance(image_id, str) or not is_valid_image_id(image_id):
        raise _invalid(api, what, image_id)


def _images_query(
    ids: Sequence[str], image_source: str | None, page_number: int, page_size: int
) -> str:
    """The describeImages query string; every value is checked, so none needs encoding."""
    api = "describeImages"
    if isinstance(ids, str):
        raise _invalid(api, "ids (a single string, not a sequence of ids)", ids)
    if len(ids) > MAX_IDS_PER_CALL:
        raise PermanentApiError(
            f"{api}: at most {MAX_IDS_PER_CALL} ids per call, not {len(ids)}; no request was sent"
        )
    parts = []
    for n, image_id in enumerate(ids, start=1):
        _check_image(api, f"image id (ids.{n})", image_id)
        parts.append(f"ids.{n}={image_id}")
    if image_source is not None:
        if not isinstance(image_source, str) or not _IMAGE_SOURCE_RE.fullmatch(image_source):
            raise _invalid(api, "image source", image_source)
        parts.append(f"imageSource={image_source}")
    if not _is_int(page_number) or page_number < 1:
        raise _invalid(api, "page number (an integer from 1)", page_number)
    if not _is_int(page_size) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise _invalid(api, f"page size (an integer from 1 to {MAX_PAGE_SIZE})", page_size)
    parts.append(f"pageNumber={page_number}")
    parts.append(f"pageSize={page_size}")
    return "&".join(parts)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(api: str, what: str, value: object) -> PermanentApiError:
    shown = repr(value)
    if len(shown) > _RAW_VALUE_MAX_CHARS:
        shown = shown[:_RAW_VALUE_MAX_CHARS] + "..."
    return PermanentApiError(f"{api}: invalid {what} {shown}; no request was sent")


def _bad_body(
    doc: JsonObject | None, headers: Mapping[str, str], what: str, status: int, why: str
) -> BadBodyError:
    problem = "the body is not a JSON object" if doc is None else why
    return BadBodyError(
        f"{what}: HTTP {status} with an unusable body: {problem}",
        http_status=status,
        error_status="BAD_BODY",
        request_id=_request_id(doc, headers),
        remaining_minute=_remaining_minute(headers),
    )


def _json_object(body: bytes) -> JsonObject | None:
    """The body as a JSON object, or None when it is anything else.

    Parsed by orjson where it gives exactly what json.loads gives, else by json.loads, whose
    reading is the reference: whatever orjson refuses (NaN, a lone surrogate, a BOM, UTF-16, a
    number beyond float range, deep nesting) is read again by json.loads, which accepts it or
    raises as before, and a body that may hold an integer beyond 64 bits goes to it directly.
    """
    if _LONG_DIGIT_RUN not in body.translate(_DIGIT_MAP):
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            return doc if isinstance(doc, dict) else None
    try:
        doc = json.loads(body)
    # Whatever the parser raises, the body is unusable: ValueError for bad JSON or bytes (and an
    # integer over Python's digit limit), RecursionError for deep nesting, MemoryError for a body
    # that inflates beyond memory. A body must never escape classification as a bare exception.
    except (ValueError, RecursionError, MemoryError):
        return None
    return doc if isinstance(doc, dict) else None


def answer_digest(seed: Any, body: bytes) -> tuple[bytes, str] | None:
    """(`images.answer_digest`, request id) of a describeImage body, or None for another shape.

    The digest is of `seed` (a SHA-256 fed with the normaliser's settings; copied, not changed)
    and of the body without its `requestId` member, the one part of an answer that differs from
    one request to the next. Two bodies with the same digest differ at most in the characters of
    that one id, and so parse to the same `result`. The member is cut only where it cannot be
    anything else: `"requestId"` appears once, its value is a plain id, and it is the first
    member of the body's object (nothing but `{` and blanks before it) or the last (nothing but
    blanks and `}` after it). Any other body gives None and is parsed as usual.
    """
    at = body.find(_REQUEST_ID_KEY)
    if at < 0 or body.find(_REQUEST_ID_KEY, at + len(_REQUEST_ID_KEY)) >= 0:
        return None
    value = _REQUEST_ID_VALUE.match(body, at + len(_REQUEST_ID_KEY))
    if value is None:
        return None
    digest = seed.copy()
    if body[:at].strip(_JSON_BLANKS) == b"{":
        digest.update(b"<")
        digest.update(body[value.end() :])
    else:
        head = body[:at].rstrip(_JSON_BLANKS)
        if not head.endswith(b",") or body[value.end() :].strip(_JSON_BLANKS) != b"}":
            return None
        digest.update(b">")
        digest.update(head[:-1])
    return digest.digest()[:ANSWER_DIGEST_BYTES], value[1].decode("ascii")


def answer_image(body: bytes) -> JsonObject:
    """The `result.image` object of a describeImage body.

    Raises:
        ValueError: the body is not a JSON object with a `result.image` object.
    """
    doc = _json_object(body)
    result = doc.get("result") if doc is not None else None
    image = result.get("image") if isinstance(result, dict) else None
    if not isinstance(image, dict):
        raise ValueError("the answer has no result.image object")
    return image


def _envelope_text(envelope: JsonObject | None, key: str, secret: str | None = None) -> str:
    value: Any = envelope.get(key) if envelope is not None else None
    if not isinstance(value, str):
        return ""
    if secret:  # a gateway that echoes the session token must not put it in a log
        value = value.replace(secret, "[redacted]")
    return _clean_message(value)


def _clean_message(text: str) -> str:
    """A server-supplied text made safe to show and store: one line, short, nothing secret,
    and valid UTF-8 (a lone surrogate from a `\\ud800` escape becomes U+FFFD)."""
    text = _SECRET_LIKE_RE.sub("[redacted]", _CONTROL_RE.sub(" ", scrub_text(text))).strip()
    if len(text) > _MESSAGE_MAX_CHARS:
        text = text[:_MESSAGE_MAX_CHARS] + "..."
    return text


def _request_id(doc: JsonObject | None, headers: Mapping[str, str]) -> str | None:
    value = doc.get("requestId") if doc is not None else None
    if not (isinstance(value, str) and value):
        value = headers.get(REQUEST_ID_HEADER)
    # Stored in crawl_results: valid UTF-8 (undecodable header bytes arrive as surrogates), short.
    return scrub_text(value)[:_REQUEST_ID_MAX_CHARS] if value else None


def _remaining_minute(headers: Mapping[str, str]) -> int | None:
    value = headers.get(REMAINING_MINUTE_HEADER)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _retry_after_s(value: str | None, clock: Clock) -> float | None:
    """Retry-After as seconds from now: either delay-seconds or an HTTP date."""
    if value is None:
        return None
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value, clock)
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _seconds_until(http_date: str, clock: Clock) -> float | None:
    try:
        at = parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:  # an HTTP date is always GMT
        at = at.replace(tzinfo=UTC)
    return (at - clock()).total_seconds()
