"""JD Cloud request signing, byte-for-byte as the official Python SDK 1.6.354 (jdcloud-api.md §1).

Two schemes share one structure and differ in three strings (algorithm label, key prefix, scope
terminator): `JDCLOUD3-HMAC-SHA256`, what the current SDK sends, and the legacy
`JDCLOUD2-HMAC-SHA256`, what the Go SDK and the docs describe. Both use the v3 canonicalisation
here; for the URLs the crawler sends the old v2 canonicalisation gives the same bytes.

Everything is pure: the date and nonce are passed in. `Signer.sign` is on the hot path of a crawl,
so it builds the canonical request from precomputed pieces and caches the signing key per
(UTC day, region); `canonical_request` is the general form, used by `Signer.authorization` and
by `crawler.simulator.verify.verify_request` on the server side.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, get_args
from urllib.parse import quote, unquote_plus

SignatureVersion = Literal["JDCLOUD3", "JDCLOUD2"]
SIGNATURE_VERSIONS: Final[tuple[str, ...]] = get_args(SignatureVersion)

CONTENT_TYPE: Final = "application/json"
DATE_HEADER: Final = "x-jdcloud-date"
NONCE_HEADER: Final = "x-jdcloud-nonce"
CONTENT_SHA256_HEADER: Final = "x-jdcloud-content-sha256"
# A temporary (STS) credential's token: sent as given and signed like any other header.
SECURITY_TOKEN_HEADER: Final = "x-jdcloud-security-token"
EMPTY_PAYLOAD_HASH: Final = hashlib.sha256(b"").hexdigest()

# Never signed: the SDK skips these, and a proxy or HTTP library may rewrite them.
_UNSIGNED_HEADERS: Final = frozenset({"authorization", "user-agent"})
_SLASHES: Final = re.compile("/+")
# Text that unquote_plus and quote leave alone, so canonicalising it is the identity.
_PLAIN_PATH: Final = re.compile(r"[A-Za-z0-9\-._~/]*")
_PLAIN_QUERY: Final = re.compile(r"[A-Za-z0-9\-._~=&]*")
_MAX_CACHED_KEYS: Final = 256


@dataclass(frozen=True, slots=True)
class _Scheme:
    algorithm: str
    key_prefix: str
    terminator: str


_SCHEMES: Final[dict[str, _Scheme]] = {
    "JDCLOUD3": _Scheme("JDCLOUD3-HMAC-SHA256", "JDCLOUD3", "jdcloud3_request"),
    "JDCLOUD2": _Scheme("JDCLOUD2-HMAC-SHA256", "JDCLOUD2", "jdcloud2_request"),
}
_SCHEME_BY_ALGORITHM: Final = {scheme.algorithm: scheme for scheme in _SCHEMES.values()}


def format_date(at: datetime) -> str:
    """The `x-jdcloud-date` value for an instant: `YYYYMMDDTHHMMSSZ` in UTC.

    Args:
        at: an aware datetime (converted to UTC), or a naive one taken to be UTC already.
    """
    if at.tzinfo is not None and at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return f"{at.year:04d}{at.month:02d}{at.day:02d}T{at.hour:02d}{at.minute:02d}{at.second:02d}Z"


def canonical_host(host: str) -> str:
    """The signed `host` value: `host` without a leading `http://`/`https://` and blanks.

    A port is kept as given, even 80 or 443 (the SDK's vectors sign `vm.jdcloud-api.com:443` when
    handed that); dropping a default port is a step of reading a URL, see `Signer.sign`.
    """
    lowered = host[:8].lower()
    if lowered.startswith("http://"):
        host = host[7:]
    elif lowered.startswith("https://"):
        host = host[8:]
    return host.strip()


def _url_host(host: str) -> str:
    """The host as the SDK takes it from a URL: port 80 or 443 dropped, whatever the scheme.

    HTTP clients leave a default port out of the `Host` header too, so this is what is sent.
    """
    host = canonical_host(host)
    for default_port in (":80", ":443"):
        if host.endswith(default_port) and len(host) > len(default_port):
            return host[: -len(default_port)]
    return host


def canonical_uri(path: str) -> str:
    """The canonical URI: decoded (`+` too), slashes collapsed, re-encoded keeping `/` and `~`."""
    plain = _PLAIN_PATH.fullmatch(path) is not None
    decoded = path if plain else unquote_plus(path)
    if "//" in decoded:
        decoded = _SLASHES.sub("/", decoded)
    if not decoded:
        return "/"
    encoded = decoded if plain else quote(decoded, safe="/~")
    return encoded if encoded.startswith("/") else "/" + encoded


def _encode_query_part(part: str) -> str:
    return quote(unquote_plus(part), safe="~")


def canonical_query(query: str) -> str:
    """The canonical query string (without `?`), with the SDK's quirks.

    Pieces without `=` and pieces with an empty key are dropped. Like the SDK, a piece is split on
    every `=`, and one with more than two parts contributes only its value parts joined by `%3D`
    (its key is lost); an `=` inside a value must therefore be sent percent-encoded.
    """
    if not query:
        return ""
    plain = _PLAIN_QUERY.fullmatch(query) is not None
    params = [
        tuple(piece.split("=")) if plain else tuple(map(_encode_query_part, piece.split("=")))
        for piece in query.split("&")
        if piece
    ]
    params.sort()
    pairs = []
    for param in params:
        if not param[0] or len(param) < 2:
            continue
        pairs.append(f"{param[0]}={param[1]}" if len(param) == 2 else "%3D".join(param[1:]))
    return "&".join(pairs)


def _canonical_headers(host: str, headers: Mapping[str, str]) -> tuple[str, str]:
    """The canonical header lines (each ending in a newline) and the SignedHeaders list."""
    values = {"host": host}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered not in _UNSIGNED_HEADERS and lowered != "host":
            values[lowered] = value.strip()
    names = sorted(values)
    return "".join(f"{name}:{values[name]}\n" for name in names), ";".join(names)


def _assemble(
    method: str, uri: str, query: str, header_lines: str, signed_headers: str, payload_hash: str
) -> str:
    # header_lines ends in a newline, so a blank line precedes SignedHeaders (as in the SDK).
    return f"{method}\n{uri}\n{query}\n{header_lines}\n{signed_headers}\n{payload_hash}"


def _payload_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest() if body else EMPTY_PAYLOAD_HASH


def canonical_request(
    method: str, host: str, path: str, query: str, headers: Mapping[str, str], body: bytes
) -> tuple[str, str]:
    """The canonical request of jdcloud-api.md §1.3 and its SignedHeaders.

    Args:
        method: the HTTP method, as sent.
        host: the host (and port) of the URL; see `canonical_host`.
        path: the URL path as sent, percent-encoded.
        query: the raw query string, without `?`.
        headers: every header present at signing time; `Authorization`, `User-Agent` and `Host`
            are skipped (the host line always comes from `host`).
        body: the request body.

    Returns:
        (canonical request, SignedHeaders).
    """
    header_lines, signed_headers = _canonical_headers(canonical_host(host), headers)
    text = _assemble(
        method,
        canonical_uri(path),
        canonical_query(query),
        header_lines,
        signed_headers,
        _payload_hash(body),
    )
    return text, signed_headers


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.digest(key, message.encode(), "sha256")


def _derive_key(seed: bytes, day: str, region: str, service: str, terminator: str) -> bytes:
    """kSigning of jdcloud-api.md §1.5; `seed` is the key prefix followed by the secret key."""
    return _hmac(_hmac(_hmac(_hmac(seed, day), region), service), terminator)


def _string_to_sign(algorithm: str, date: str, scope: str, text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{algorithm}\n{date}\n{scope}\n{digest}"


class Signer:
    """Signs requests for one access key.

    Args:
        access_key: the AccessKey ID.
        secret_key: the secret key; kept out of `repr`.
        version: `JDCLOUD3` (the current SDK) or `JDCLOUD2` (legacy; always signs date and nonce).
        service: the service name in the credential scope (`vm` for the VM API).
        sign_date_nonce: also sign `x-jdcloud-date` and `x-jdcloud-nonce` (the SDK does not).
        session_token: a temporary credential's token, sent and signed on every request as
            `x-jdcloud-security-token`, as the SDK does; kept out of `repr`.
    """

    __slots__ = (
        "_algorithm",
        "_credential_prefix",
        "_date",
        "_host_line",
        "_keys",
        "_scheme",
        "_seed",
        "_signed_headers",
        "_token",
        "access_key",
        "service",
        "sign_date_nonce",
        "version",
    )

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        version: SignatureVersion = "JDCLOUD3",
        service: str = "vm",
        sign_date_nonce: bool = False,
        session_token: str | None = None,
    ) -> None:
        if version not in _SCHEMES:
            raise ValueError(f"unknown signature version {version!r}")
        if not access_key or not secret_key:
            raise ValueError("the access key and the secret key must not be empty")
        self.access_key = access_key
        self.version: SignatureVersion = version
        self.service = service
        # The legacy clients always set date and nonce before building the canonical headers.
        self.sign_date_nonce = sign_date_nonce or version == "JDCLOUD2"
        self._scheme = _SCHEMES[version]
        self._algorithm = self._scheme.algorithm
        self._seed = (self._scheme.key_prefix + secret_key).encode()
        self._credential_prefix = f"{self._algorithm} Credential={access_key}/"
        self._signed_headers = (
            "content-type;host;x-jdcloud-date;x-jdcloud-nonce"
            if self.sign_date_nonce
            else "content-type;host"
        )
        # The SDK adds the token before signing, so it is signed; it sorts after the nonce.
        self._token = session_token.strip() if session_token else None
        if self._token is not None:
            self._signed_headers += f";{SECURITY_TOKEN_HEADER}"
        # (kSigning, scope) per (day, region), derived once.
        self._keys: dict[tuple[str, str], tuple[bytes, str]] = {}
        # The last second signed and its x-jdcloud-date, and the last host and its header line:
        # a crawl signs thousands of requests a second for one host (formatting the date was
        # ~2 us of a request's ~7 us of signing).
        self._date: tuple[datetime | None, str] = (None, "")
        self._host_line: tuple[str | None, str] = (None, "")

    @property
    def session_token(self) -> str | None:
        """The temporary credential's token, if any (a secret: never log it)."""
        return self._token

    def __repr__(self) -> str:
        return (
            f"Signer(access_key={self.access_key!r}, version={self.version!r}, "
            f"service={self.service!r}, sign_date_nonce={self.sign_date_nonce!r})"
        )

    def signing_key(self, day: str, region: str) -> bytes:
        """kSigning for a UTC day (`YYYYMMDD`) and region, derived once and then cached."""
        return self._scoped_key(day, region)[0]

    def _scoped_key(self, day: str, region: str) -> tuple[bytes, str]:
        """(kSigning, credential scope) for a UTC day and region, derived once, then cached."""
        found = self._keys.get((day, region))
        if found is None:
            if len(self._keys) >= _MAX_CACHED_KEYS:
                self._keys.clear()
            key = _derive_key(self._seed, day, region, self.service, self._scheme.terminator)
            found = self._keys[day, region] = (key, self._scope(day, region))
        return found

    def string_to_sign(self, canonical_request: str, *, date: str, region: str) -> str:
        """The string to sign (jdcloud-api.md §1.4) for an `x-jdcloud-date` value and region."""
        return _string_to_sign(
            self._algorithm, date, self._scope(date[:8], region), canonical_request
        )

    def authorization(
        self,
        *,
        method: str,
        host: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        region: str,
        date: str | datetime,
    ) -> str:
        """The `Authorization` value that signs exactly the `headers` given.

        Args:
            method: the HTTP method.
            host: the host (and port) of the URL.
            path: the URL path as sent.
            query: the raw query string, without `?`.
            headers: the headers present at signing time (date and nonce are signed only when
                they are among them).
            body: the request body.
            region: the region of the credential scope.
            date: the `x-jdcloud-date` value, or the instant it stands for.

        Raises:
            ValueError: `headers` holds an `x-jdcloud-date` that differs from `date`.
        """
        date = date if isinstance(date, str) else format_date(date)
        for name, value in headers.items():
            if name.lower() == DATE_HEADER and value.strip() != date:
                raise ValueError("the x-jdcloud-date header differs from the signing date")
        text, signed_headers = canonical_request(method, host, path, query, headers, body)
        return self._authorization(text, signed_headers, date, region)

    def sign(
        self,
        *,
        method: str,
        host: str,
        path: str,
        query: str,
        region: str,
        at: datetime,
        nonce: str,
        body: bytes = b"",
    ) -> dict[str, str]:
        """Every header to send besides `Host` and `User-Agent`, in the SDK's order.

        The signed headers are `Content-Type` and `Host`, plus `x-jdcloud-date` and
        `x-jdcloud-nonce` when `sign_date_nonce` is set, plus `x-jdcloud-security-token` when
        the signer has a session token; the rest are sent unsigned.

        Args:
            method: the HTTP method.
            host: the host (and port) of the URL; a port 80 or 443 is dropped, as the SDK does
                and as HTTP clients do in the `Host` header (which must match what is signed).
            path: the URL path as sent.
            query: the raw query string, without `?`.
            region: the region of the credential scope (the request's `regionId`).
            at: the instant of the request.
            nonce: a fresh nonce, conventionally a uuid4 string.
            body: the request body.
        """
        second = at.replace(microsecond=0)
        last_second, date = self._date
        if second != last_second:
            date = format_date(second)
            self._date = (second, date)
        payload_hash = _payload_hash(body)
        last_host, header_lines = self._host_line
        if host != last_host:
            header_lines = f"content-type:{CONTENT_TYPE}\nhost:{_url_host(host)}\n"
            self._host_line = (host, header_lines)
        if self.sign_date_nonce:
            header_lines += f"{DATE_HEADER}:{date}\n{NONCE_HEADER}:{nonce.strip()}\n"
        if self._token is not None:
            header_lines += f"{SECURITY_TOKEN_HEADER}:{self._token}\n"
        text = _assemble(
            method,
            canonical_uri(path),
            canonical_query(query),
            header_lines,
            self._signed_headers,
            payload_hash,
        )
        authorization = self._authorization(text, self._signed_headers, date, region)
        headers = {"Content-Type": CONTENT_TYPE}
        if self._token is not None:
            headers[SECURITY_TOKEN_HEADER] = self._token
        if self.sign_date_nonce:
            return headers | {
                DATE_HEADER: date,
                NONCE_HEADER: nonce,
                "Authorization": authorization,
                CONTENT_SHA256_HEADER: payload_hash,
                self._algorithm: self._algorithm,
            }
        return headers | {
            "Authorization": authorization,
            DATE_HEADER: date,
            CONTENT_SHA256_HEADER: payload_hash,
            self._algorithm: self._algorithm,
            NONCE_HEADER: nonce,
        }

    def _scope(self, day: str, region: str) -> str:
        return f"{day}/{region}/{self.service}/{self._scheme.terminator}"

    def _authorization(self, text: str, signed_headers: str, date: str, region: str) -> str:
        key, scope = self._scoped_key(date[:8], region)
        to_sign = _string_to_sign(self._algorithm, date, scope, text)
        signature = hmac.digest(key, to_sign.encode(), "sha256").hex()
        return (
            f"{self._credential_prefix}{scope}, SignedHeaders={signed_headers}, "
            f"Signature={signature}"
        )
