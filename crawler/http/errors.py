"""What can go wrong below the API in one HTTP exchange, as exceptions of the HTTP layer.

Each carries the response's status and headers when they had arrived (a body cut short after a
200 still names its request id), so that `crawler.client` can classify it without knowing how
the bytes were read.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

Headers = Mapping[str, str]
_NO_HEADERS: Headers = {}


class HttpError(Exception):
    """The exchange failed: no usable response (the base of the layer's errors).

    Attributes:
        status: the response's status code, when its status line and headers had arrived.
        headers: its headers then (names in lower case), else empty.
    """

    def __init__(
        self, message: str, *, status: int | None = None, headers: Headers = _NO_HEADERS
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class MalformedResponse(HttpError):
    """The status line or a header is not HTTP/1.1, or the header block is too large."""


class ConnectionFailed(HttpError):
    """No connection, or it failed or closed before a whole status line and headers arrived.

    Attributes:
        before_answer: nothing at all came back on the connection; a request sent on a reused
            keep-alive connection that the server had just closed fails this way, and is safe
            to send again on a new one (a GET changes nothing).
    """

    def __init__(self, message: str, *, before_answer: bool = False) -> None:
        super().__init__(message)
        self.before_answer = before_answer


class CertificateRefused(ConnectionFailed):
    """The server's TLS certificate (or its host name) did not verify.

    Attributes:
        host: the host the certificate was checked for.
        port: its port.
        cause: OpenSSL's verdict (`verify_code`, `verify_message`).
    """

    def __init__(self, host: str, port: int, cause: ssl.SSLCertVerificationError) -> None:
        super().__init__(f"the TLS certificate of {host}:{port} was refused: {cause}")
        self.host = host
        self.port = port
        self.cause = cause


class ProxyRefused(HttpError):
    """The forward proxy answered the CONNECT with something other than 2xx (407: credentials)."""


class PayloadError(HttpError):
    """The body was cut short or malformed (its chunks, its compression)."""


class BodyTooLarge(HttpError):
    """The body is over the caller's cap; it was not read beyond cap + 1 bytes.

    Attributes:
        detail: `declares N bytes` or `sent more than N bytes`.
    """

    def __init__(self, detail: str, *, status: int, headers: Headers) -> None:
        super().__init__(f"the body {detail}", status=status, headers=headers)
        self.detail = detail
