"""The server side of JD Cloud request signing: checking a signature as the gateway would.

Only the simulator verifies requests, so this lives with it; the canonical forms and the key
derivation are the signer's own (`crawler.signer`), shared so that both sides agree byte for byte.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from crawler.signer import (
    _MAX_CACHED_KEYS,
    _SCHEME_BY_ALGORITHM,
    DATE_HEADER,
    _assemble,
    _derive_key,
    _payload_hash,
    _string_to_sign,
    canonical_host,
    canonical_query,
    canonical_uri,
)

# The gateway's 401 messages (jdcloud-api.md §6.1), returned by `verify_request`.
LACK_AUTHORIZATION: Final = "lack of header authorization"
LACK_CREDENTIAL: Final = "lack of credential in the header authorization"
LACK_DATE: Final = "lack of header x-jdcloud-date"
LACK_SIGNED_HEADERS: Final = "lack of header signedHeaders"
INVALID_ACCESS_KEY: Final = "Invalid accessKey"
INVALID_CREDENTIALS: Final = "Invalid authentication credentials"
SIGNATURE_MISMATCH: Final = "sign result is not same [gw]"

_DATE_FORMAT: Final = re.compile(r"[0-9]{8}T[0-9]{6}Z")


@lru_cache(maxsize=_MAX_CACHED_KEYS)
def _cached_key(seed: bytes, day: str, region: str, service: str, terminator: str) -> bytes:
    # For verify_request, which sees many requests per key, day and region.
    return _derive_key(seed, day, region, service, terminator)


@dataclass(frozen=True, slots=True)
class ParsedAuthorization:
    """The parts of an `Authorization` header; the signature is kept out of `repr`."""

    algorithm: str
    access_key: str
    date: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str = field(repr=False)


def _authorization_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in text.split(","):
        name, equals, value = part.strip().partition("=")
        if equals:
            fields[name] = value.strip()
    return fields


def parse_authorization(value: str) -> ParsedAuthorization:
    """Splits an `Authorization` value into its parts.

    Raises:
        ValueError: the value is malformed; the message is the gateway's 401 message for it.
    """
    algorithm, _, rest = value.strip().partition(" ")
    scheme = _SCHEME_BY_ALGORITHM.get(algorithm)
    if scheme is None:
        raise ValueError(INVALID_CREDENTIALS)
    fields = _authorization_fields(rest)
    credential = fields.get("Credential", "").split("/")
    if len(credential) != 5 or not all(credential):
        raise ValueError(LACK_CREDENTIAL)
    access_key, day, region, service, terminator = credential
    if terminator != scheme.terminator:
        raise ValueError(INVALID_CREDENTIALS)
    signed_headers = tuple(fields.get("SignedHeaders", "").split(";"))
    if not all(signed_headers):
        raise ValueError(LACK_SIGNED_HEADERS)
    signature = fields.get("Signature", "")
    if not signature:
        raise ValueError(INVALID_CREDENTIALS)
    return ParsedAuthorization(
        algorithm, access_key, day, region, service, terminator, signed_headers, signature
    )


def _lower_case_keys(headers: Mapping[str, str]) -> dict[str, str]:
    # A multidict yields every value of a repeated header; keep the first, as its get() does.
    received: dict[str, str] = {}
    for name, value in headers.items():
        received.setdefault(name.lower(), value)
    return received


def _received_header_lines(
    signed_headers: tuple[str, ...], received: Mapping[str, str], host: str
) -> str | None:
    """The canonical lines for exactly the headers the client says it signed; None if one is
    missing."""
    lines = []
    for name in signed_headers:
        lowered = name.lower()
        if lowered == "host":
            value = canonical_host(received.get("host", host))
        elif lowered in received:
            value = received[lowered].strip()
        else:
            return None
        lines.append(f"{name}:{value}\n")
    return "".join(lines)


def _as_bytes(text: str) -> bytes:
    # Headers decoded with surrogateescape may hold lone surrogates; compare them byte-wise.
    return text.encode("utf-8", "surrogatepass")


def verify_request(
    *,
    method: str,
    host: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_for: Callable[[str], str | None],
) -> str | None:
    """Checks a received request's signature, as the JD Cloud gateway would.

    The canonical request is rebuilt from exactly the SignedHeaders the `Authorization` lists,
    so JDCLOUD3 and JDCLOUD2, with or without date and nonce signed, are all accepted.

    Args:
        method: the HTTP method received.
        host: the `Host` header received; used when `headers` has no `Host`.
        path: the path as received, still percent-encoded.
        query: the raw query string as received, without `?`.
        headers: the received headers, looked up case-insensitively.
        body: the received body.
        secret_for: the secret key of an access key, or None when the key is unknown.

    Returns:
        None when the signature is valid, else the gateway's 401 message.
    """
    received = _lower_case_keys(headers)
    value = received.get("authorization")
    if not value:
        return LACK_AUTHORIZATION
    try:
        parsed = parse_authorization(value)
    except ValueError as exc:
        return str(exc)
    date = received.get(DATE_HEADER, "").strip()
    if not date:
        return LACK_DATE
    if _DATE_FORMAT.fullmatch(date) is None or date[:8] != parsed.date:
        return SIGNATURE_MISMATCH
    secret = secret_for(parsed.access_key)
    if not secret:
        return INVALID_ACCESS_KEY
    header_lines = _received_header_lines(parsed.signed_headers, received, host)
    if header_lines is None:
        return SIGNATURE_MISMATCH
    text = _assemble(
        method,
        canonical_uri(path),
        canonical_query(query),
        header_lines,
        ";".join(parsed.signed_headers),
        _payload_hash(body),
    )
    return None if _signature_matches(parsed, secret, date, text) else SIGNATURE_MISMATCH


def _signature_matches(parsed: ParsedAuthorization, secret: str, date: str, text: str) -> bool:
    """Whether `parsed.signature` signs canonical request `text`, in constant time."""
    scheme = _SCHEME_BY_ALGORITHM[parsed.algorithm]
    scope = f"{parsed.date}/{parsed.region}/{parsed.service}/{scheme.terminator}"
    seed = (scheme.key_prefix + secret).encode()
    key = _cached_key(seed, parsed.date, parsed.region, parsed.service, scheme.terminator)
    to_sign = _string_to_sign(scheme.algorithm, date, scope, text)
    expected = hmac.digest(key, to_sign.encode(), "sha256").hex()
    return hmac.compare_digest(_as_bytes(expected), _as_bytes(parsed.signature))
