"""Content codings of a response body: gzip and deflate, inflated under the caller's cap.

The crawler asks for `gzip, deflate` (`ACCEPT_ENCODING`, what aiohttp asked for before); a body
in any other coding is passed on as it came, and then fails as a body that is not JSON would.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from crawler.http.errors import BodyTooLarge, PayloadError

ACCEPT_ENCODING = "gzip, deflate"
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


def decode_body(
    body: bytes, coding: str, *, cap: int, status: int, headers: Mapping[str, str]
) -> bytes:
    """`body` inflated if `coding` (the Content-Encoding, lower case) is gzip or deflate.

    Raises:
        BodyTooLarge: it inflates to more than `cap` bytes (no more than cap + 1 are made).
        PayloadError: the compressed stream is malformed or cut short.
    """
    coding = coding.strip()
    if coding in ("gzip", "x-gzip"):
        wbits = _GZIP_WBITS
    elif coding == "deflate":
        # "deflate" is meant to be zlib-wrapped, but some servers send a raw deflate stream.
        wrapped = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        wbits = _ZLIB_WBITS if wrapped else _RAW_DEFLATE_WBITS
    else:
        return body
    inflater = zlib.decompressobj(wbits)
    try:
        inflated = inflater.decompress(body, cap + 1)
    except zlib.error as exc:
        raise PayloadError(
            f"the {coding} body is malformed: {exc}", status=status, headers=headers
        ) from exc
    if len(inflated) > cap:
        raise BodyTooLarge(f"inflates to more than {cap} bytes", status=status, headers=headers)
    if not inflater.eof:
        raise PayloadError(f"the {coding} body is cut short", status=status, headers=headers)
    return inflated
