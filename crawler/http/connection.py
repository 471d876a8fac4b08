"""One HTTP/1.1 connection: an `asyncio.Protocol` that sends a request and frames its response.

The response is parsed with plain bytes operations as it arrives, in `data_received`: the status
line and headers (at most `MAX_HEAD_BYTES`), then a body framed by Content-Length, by chunks, or
by the end of the connection, never holding more than the caller's cap + 1 bytes of it. The
awaiting request is woken once, with the whole response or with an `HttpError`.

A connection is offered for reuse (`reusable`) only after a response that was complete, framed
(not read to the end of the connection), HTTP/1.1 without `Connection: close`, and followed by
no stray bytes; after an error, a timeout or a refused body it is closed.
"""

from __future__ import annotations

import asyncio
from typing import Final, cast

from crawler.http.errors import (
    BodyTooLarge,
    ConnectionFailed,
    HttpError,
    MalformedResponse,
    PayloadError,
)

MAX_HEAD_BYTES: Final = 65536
MAX_CHUNK_LINE_BYTES: Final = 4096
MAX_TRAILER_BYTES: Final = 65536
MAX_INTERIM_ANSWERS: Final = 8
_HEX_DIGITS: Final = b"0123456789abcdefABCDEF"
_NO_BODY_STATUSES: Final = frozenset({204, 304})

# Where the response being read is.
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _TO_EOF = range(8)


class Response:
    """A whole response: status, headers (names in lower case) and the undecoded body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Connection(asyncio.Protocol):
    """A client connection carrying one request at a time (no pipelining).

    Attributes:
        transport: the transport (the TLS one once a CONNECT tunnel is wrapped).
        reusable: the last response left the connection fit for another request.
        closed: the connection is gone (`connection_lost` was called).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        self.closed = False
        self._waiter: asyncio.Future[Response] | None = None
        self._state = _IDLE
        self._cap = 0
        self._tunnel = False
        self._received = False
        self._interim = 0  # 1xx answers before this response
        self._trailer = 0  # trailer bytes after its last chunk
        self._buffer = b""  # unparsed bytes: the head, or a chunk's size line or trailer
        self._parts: list[bytes] = []
        self._size = 0  # body bytes kept so far
        self._remaining = 0  # of the Content-Length body, or of the current chunk
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep_alive = False

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (a cast, not an isinstance check: uvloop's do not subclass it).
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        state = self._state
        if state == _IDLE:
            return
        if state == _TO_EOF and exc is None:
            self._finish(b"".join(self._parts))
            return
        why = f": {exc}" if exc is not None else ""
        if state == _HEAD:
            if self._received:
                self._fail(ConnectionFailed(f"the connection closed within the headers{why}"))
            else:
                message = f"the server closed the connection without answering{why}"
                self._fail(ConnectionFailed(message, before_answer=True))
        elif state == _LENGTH:
            got = self._size
            self._fail(self._payload(f"the connection closed {got} bytes into the body{why}"))
        else:
            self._fail(self._payload(f"the connection closed within the body{why}"))

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self._feed(data)
        except HttpError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost then settles the response

    # --- sending -------------------------------------------------------------------------------

    def send(self, request: bytes, cap: int, *, tunnel: bool = False) -> asyncio.Future[Response]:
        """Write `request`; the future gets its response (a body of at most `cap` bytes).

        With `tunnel` the request is a CONNECT: its response ends with its headers.
        """
        assert self.transport is not None and self._state == _IDLE
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._cap = cap
        self._tunnel = tunnel
        self._received = False
        self._interim = 0
        self._trailer = 0
        self.reusable = False
        self._state = _HEAD
        self._buffer = b""
        self._parts = []
        self._size = 0
        if self.closed:  # the server hung up while it sat in the pool, before this was noticed
            message = "the server had closed the connection"
            self._fail(ConnectionFailed(message, before_answer=True))
        else:
            self.transport.write(request)
        return waiter

    def time_out(self) -> None:
        """The request's time is up: fail it and drop the connection."""
        self._fail(TimeoutError())

    def close(self) -> None:
        """Drop the connection now. Aborted, not closed: nothing is left to send, and a TLS
        close would wait for the server's close_notify past the end of the run."""
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # --- parsing -------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        state = self._state
        if state == _HEAD:
            data = self._buffer + data if self._buffer else data
            while True:
                end = data.find(b"\r\n\r\n")
                if end < 0 or end > MAX_HEAD_BYTES:
                    if len(data) > MAX_HEAD_BYTES:
                        message = f"the response's headers are over {MAX_HEAD_BYTES} bytes"
                        raise MalformedResponse(message)
                    self._buffer = data
                    return
                self._buffer = b""
                head, data = data[:end], data[end + 4 :]
                if self._start_body(head):
                    break
                # An interim 1xx answer: the real one follows, after a few at most.
                self._interim += 1
                if self._interim > MAX_INTERIM_ANSWERS:
                    raise MalformedResponse(f"over {MAX_INTERIM_ANSWERS} interim 1xx answers")
            state = self._state
            if not data:
                if state == _LENGTH and self._remaining == 0:
                    self._finish(b"")
                return
        elif state == _IDLE:
            # Bytes nobody asked for: the connection is out of step with the server; drop it.
            self.close()
            return
        if state == _LENGTH:
            self._feed_length(data)
        elif state == _TO_EOF:
            self._keep(data)
        else:
            self._feed_chunks(data)

    def _start_body(self, head: bytes) -> bool:
        """Read the status line and headers; set how the body is framed. False for a 1xx."""
        status, minor, headers = _parse_head(head)
        if 100 <= status < 200 and not self._tunnel:
            return False
        self._status = status
        self._headers = headers
        connection = headers.get("connection", "").lower()
        self._keep_alive = minor == 1 and "close" not in connection
        if self._tunnel or status in _NO_BODY_STATUSES:
            self._state = _LENGTH
            self._remaining = 0
            return True
        coding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if coding is not None:
            if length is not None:
                raise self._malformed("both Content-Length and Transfer-Encoding")
            if coding.lower().rpartition(",")[2].strip() == "chunked":
                self._state = _CHUNK_SIZE
            else:
                self._state = _TO_EOF
                self._keep_alive = False
            return True
        if length is None:
            self._state = _TO_EOF
            self._keep_alive = False
            return True
        if not (length.isdigit() and length.isascii()):
            raise self._malformed(f"a Content-Length that is not a number: {length[:40]!r}")
        size = int(length)
        if size > self._cap:
            raise BodyTooLarge(f"declares {size} bytes", status=status, headers=headers)
        self._state = _LENGTH
        self._remaining = size
        return True

    def _feed_length(self, data: bytes) -> None:
        remaining = self._remaining
        if len(data) < remaining:
            self._parts.append(data)
            self._size += len(data)
            self._remaining = remaining - len(data)
            return
        if len(data) > remaining:  # more than was declared: the next bytes cannot be trusted
            self._keep_alive = False
            data = data[:remaining]
        if self._parts:
            self._parts.append(data)
            self._finish(b"".join(self._parts))
        else:
            self._finish(data)

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._cap:
            raise self._too_large()
        self._parts.append(data)

    def _feed_chunks(self, data: bytes) -> None:
        data = self._buffer + data if self._buffer else data
        self._buffer = b""
        at, end = 0, len(data)
        state = self._state
        while at < end:
            if state == _CHUNK_DATA:
                take = min(self._remaining, end - at)
                self._parts.append(data[at : at + take])
                at += take
                self._remaining -= take
                if self._remaining == 0:
                    state = _CHUNK_END
            elif state == _CHUNK_SIZE:
                line_end = data.find(b"\r\n", at)
                if line_end < 0:
                    if end - at > MAX_CHUNK_LINE_BYTES:
                        raise self._payload("a chunk size line is too long")
                    break
                size = _chunk_size(data[at:line_end])
                if size is None:
                    raise self._payload(f"a malformed chunk size {data[at:line_end][:40]!r}")
                at = line_end + 2
                if size == 0:
                    state = _TRAILER
                else:
                    self._size += size
                    if self._size > self._cap:
                        raise self._too_large()
                    self._remaining = size
                    state = _CHUNK_DATA
            elif state == _CHUNK_END:
                if end - at < 2:
                    break
                if data[at : at + 2] != b"\r\n":
                    raise self._payload("a chunk is longer than its size")
                at += 2
                state = _CHUNK_SIZE
            else:  # _TRAILER: header lines after the last chunk, up to an empty line
                line_end = data.find(b"\r\n", at)
                if line_end < 0:
                    if end - at > MAX_TRAILER_BYTES:
                        raise self._payload("the trailer is too long")
                    break
                if line_end > at:
                    if b":" not in data[at:line_end]:
                        raise self._payload("a malformed trailer line")
                    self._trailer += line_end + 2 - at
                    if self._trailer > MAX_TRAILER_BYTES:
                        raise self._payload("the trailer is too long")
                    at = line_end + 2
                    continue
                if line_end + 2 < end:
                    self._keep_alive = False  # bytes after the response: out of step
                self._finish(b"".join(self._parts))
                return
        self._state = state
        if at < end:
            self._buffer = data[at:]

    # --- settling ------------------------------------------------------------------------------

    def _finish(self, body: bytes) -> None:
        self._state = _IDLE
        self._parts = []  # an idle connection holds no piece of the last body
        self.reusable = self._keep_alive and not self.closed
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._headers, body))

    def _fail(self, exc: BaseException) -> None:
        self._state = _IDLE
        self.reusable = False
        self._parts = []
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()  # nothing more is read from a connection in an unknown state

    def _malformed(self, what: str) -> MalformedResponse:
        return MalformedResponse(f"the response has {what}")

    def _payload(self, message: str) -> PayloadError:
        return PayloadError(message, status=self._status, headers=self._headers)

    def _too_large(self) -> BodyTooLarge:
        detail = f"sent more than {self._cap} bytes"
        return BodyTooLarge(detail, status=self._status, headers=self._headers)


def _chunk_size(line: bytes) -> int | None:
    """A chunk size line's size (its extensions ignored), or None if it is not hex digits."""
    digits = line.split(b";", 1)[0].strip(b" \t")
    if not digits or len(digits) > 16 or digits.strip(_HEX_DIGITS):
        return None
    return int(digits, 16)


def _parse_head(head: bytes) -> tuple[int, int, dict[str, str]]:
    """(status, HTTP/1.x minor version, headers by lower-case name) of a response head.

    Undecodable bytes are kept as surrogates (as aiohttp read them); the caller scrubs what it
    stores. A line that is not `name: value`, a folded line, a bare CR or LF, or a status line
    that is not `HTTP/1.x NNN [reason]` is refused.
    """
    text = head.decode("utf-8", "surrogateescape")
    if text.count("\r") != text.count("\n"):
        raise MalformedResponse("the response has a bare CR or LF in its headers")
    status_line, *lines = text.split("\r\n")
    code = status_line[9:12]
    if (
        not status_line.startswith("HTTP/1.")
        or status_line[7:8] not in ("0", "1")
        or status_line[8:9] != " "
        or not (code.isdigit() and code.isascii() and len(code) == 3)
        or status_line[12:13] not in ("", " ")
    ):
        raise MalformedResponse(f"the response has a malformed status line {status_line[:60]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name or "\t" in name:
            raise MalformedResponse(f"the response has a malformed header line {line[:60]!r}")
        key = name.lower()
        value = value.strip(" \t")
        if key in headers:
            if key == "content-length" and headers[key] != value:
                raise MalformedResponse("the response has two different Content-Lengths")
            if key != "content-length":
                headers[key] = f"{headers[key]}, {value}"
            continue
        headers[key] = value
    return int(code), int(status_line[7]), headers
