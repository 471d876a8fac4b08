"""The run's HTTP client: signed GETs over a keep-alive pool, each under a total time limit.

`HttpSession.get` writes one request (origin-form, or absolute-form to an http proxy, with the
caller's headers exactly as given: the Host that was signed is the Host sent), waits for its whole
response, inflates a gzip or deflate body and returns it; or raises an `HttpError` subclass or
`TimeoutError`. It never follows a redirect, keeps no cookies and reads no environment.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from types import TracebackType

from crawler.http.connection import Connection, Response
from crawler.http.decoding import ACCEPT_ENCODING, decode_body
from crawler.http.errors import ConnectionFailed
from crawler.http.pool import ConnectionPool, Origin

_CLOSE_ITERATIONS = 10


class HttpSession:
    """A keep-alive pool of at most `concurrency` connections, and the requests sent on it.

    Use it as an async context manager, or call `close`.
    """

    def __init__(
        self, *, concurrency: int, user_agent: str, tls: ssl.SSLContext | None = None
    ) -> None:
        """Args:
        concurrency: connections open at most, all origins together (requests in flight).
        user_agent: sent as `User-Agent` with every request.
        tls: the context that verifies https servers; None for the system's trusted
            certificates (built at the first https connection).

        Raises:
            ValueError: when `concurrency` is below 1.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.concurrency = concurrency
        self.user_agent = user_agent
        self._pool = ConnectionPool(concurrency, tls)
        self._fixed = (
            f"User-Agent: {_checked(user_agent)}\r\nAccept: */*\r\n"
            f"Accept-Encoding: {ACCEPT_ENCODING}\r\n\r\n"
        )

    @property
    def closed(self) -> bool:
        return self._pool.closed

    async def __aenter__(self) -> HttpSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection (requests still in flight fail)."""
        closing = self._pool.close()
        # connection_lost runs a loop iteration or two later (two for TLS): wait for it, so that
        # no socket is left for the garbage collector when the event loop closes next.
        for _ in range(_CLOSE_ITERATIONS):
            if all(connection.closed for connection in closing):
                break
            await asyncio.sleep(0)

    async def get(
        self,
        origin: Origin,
        target: str,
        headers: Mapping[str, str],
        *,
        timeout_s: float,
        max_body_bytes: int,
    ) -> Response:
        """Send `GET target` to `origin` and return the whole response, body decoded.

        Args:
            origin: where to connect (and through which proxy).
            target: the path and query, `/v1/...?...`.
            headers: sent as given (with `Host`); `User-Agent`, `Accept` and `Accept-Encoding`
                are added, and `Proxy-Authorization` for a request through an http proxy.
            timeout_s: the whole exchange (waiting for a connection, connecting, TLS, sending,
                reading) must end within this.
            max_body_bytes: a larger body (declared, sent, or inflated) is a `BodyTooLarge`.

        Raises:
            HttpError: its subclasses for a failed connection, a refused certificate or proxy,
                a malformed response, a body cut short or too large.
            TimeoutError: the exchange did not finish within `timeout_s`.
            ValueError: a header holds a CR or LF.
        """
        if self._pool.closed:
            raise ConnectionFailed("the HTTP session is closed")
        request = self._request(origin, target, headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        connection = self._pool.take_idle(origin)
        try:
            response = await self._exchange(origin, connection, request, deadline, max_body_bytes)
        except ConnectionFailed as exc:
            if connection is None or not exc.before_answer:
                raise
            # The server closed the idle connection as this request went out: a GET is safe to
            # send again, once, on a new connection.
            response = await self._exchange(origin, None, request, deadline, max_body_bytes)
        coding = response.headers.get("content-encoding")
        if coding is not None:
            response.body = decode_body(
                response.body,
                coding.lower(),
                cap=max_body_bytes,
                status=response.status,
                headers=response.headers,
            )
        return response

    async def _exchange(
        self,
        origin: Origin,
        connection: Connection | None,
        request: bytes,
        deadline: float,
        cap: int,
    ) -> Response:
        loop = asyncio.get_running_loop()
        if connection is None:
            async with asyncio.timeout_at(deadline):
                connection = await self._pool.open(origin)
        timer = loop.call_at(deadline, connection.time_out)
        try:
            return await connection.send(request, cap)
        finally:
            timer.cancel()
            self._pool.release(origin, connection)

    def _request(self, origin: Origin, target: str, headers: Mapping[str, str]) -> bytes:
        proxy = origin.proxy
        if proxy is not None and origin.scheme == "http":
            host = f"[{origin.host}]" if ":" in origin.host else origin.host
            target = f"http://{host}:{origin.port}{target}"
            if proxy.authorization is not None:
                headers = {**headers, "Proxy-Authorization": proxy.authorization}
        lines = [f"GET {_checked(target)} HTTP/1.1\r\n"]
        for name, value in headers.items():
            lines.append(f"{_checked(name)}: {_checked(value)}\r\n")
        lines.append(self._fixed)
        return "".join(lines).encode("utf-8")


def _checked(text: str) -> str:
    """`text`, refused if it could end a request line or header early."""
    if "\n" in text or "\r" in text:
        raise ValueError("a CR or LF in an HTTP request line or header")
    return text
