"""Connections to one origin, kept alive and shared: at most `limit` open at once.

A connection is opened directly (TCP, then TLS for https), or through a forward proxy: for http
the requests themselves go to the proxy, for https a `CONNECT host:port` tunnel is opened first
and TLS is started inside it (`loop.start_tls`). TLS always verifies the certificate and the
host name (SNI is sent for a name); a refused certificate is a `CertificateRefused`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast

from crawler.http.connection import Connection
from crawler.http.errors import CertificateRefused, ConnectionFailed, ProxyRefused

_CONNECT_HEAD_CAP = 0


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """A forward proxy: where it listens, and the `Proxy-Authorization` it wants, if any."""

    host: str
    port: int
    authorization: str | None = None


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: `scheme://host:port` (the host bare, without IPv6 brackets)."""

    scheme: str
    host: str
    port: int
    proxy: ProxyRoute | None = None


def basic_authorization(username: str, password: str) -> str:
    """`Basic base64(user:password)`, latin-1 as aiohttp sent it, UTF-8 beyond latin-1."""
    text = f"{username}:{password}"
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:
        raw = text.encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


@functools.cache
def default_tls() -> ssl.SSLContext:
    """The system's trusted certificates, verifying certificate and host name.

    Built at the first https connection, not at import: an http crawl never pays its ~17 ms.
    """
    return ssl.create_default_context()


class ConnectionPool:
    """Idle keep-alive connections by origin, and a limit on how many are open at once."""

    def __init__(self, limit: int, tls: ssl.SSLContext | None) -> None:
        self._limit = limit
        self._tls = tls
        self._open = 0  # connections open or being opened, idle ones included
        self._idle: dict[Origin, list[Connection]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._all: set[Connection] = set()
        self.closed = False

    def take_idle(self, origin: Origin) -> Connection | None:
        """An idle connection to `origin` that still looks open, or None."""
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
            self._forget(connection)
        return None

    async def open(self, origin: Origin) -> Connection:
        """A new connection to `origin`, once the limit allows one (an idle one elsewhere is
        closed to make room)."""
        while self._open >= self._limit:
            if not self._close_one_idle():
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                except BaseException:
                    if not waiter.cancelled() and waiter.done():
                        self._wake()  # pass the slot on: this one no longer wants it
                    raise
                if (found := self.take_idle(origin)) is not None:
                    return found
        self._open += 1
        try:
            connection = await self._connect(origin)
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        self._all.add(connection)
        return connection

    def release(self, origin: Origin, connection: Connection) -> None:
        """Give a connection back: kept for reuse if its last response allows, else closed."""
        if connection.reusable and not connection.closed and not self.closed:
            self._idle.setdefault(origin, []).append(connection)
        else:
            connection.close()
            self._forget(connection)
        if self._waiters:
            self._wake()

    def close(self) -> list[Connection]:
        """Close every connection (returned, to wait for); the pool opens no more."""
        self.closed = True
        closing = list(self._all)
        for connection in closing:
            connection.close()
        self._all.clear()
        self._idle.clear()
        return closing

    def _forget(self, connection: Connection) -> None:
        if connection in self._all:
            self._all.discard(connection)
            self._open -= 1

    def _close_one_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                connection = idle.pop(0)
                connection.close()
                self._forget(connection)
                return True
        return False

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, origin: Origin) -> Connection:
        loop = asyncio.get_running_loop()
        proxy = origin.proxy
        https = origin.scheme == "https"
        tls = (self._tls or default_tls()) if https else None
        host, port = (proxy.host, proxy.port) if proxy is not None else (origin.host, origin.port)
        direct_tls = tls if proxy is None else None
        try:
            _, connection = await loop.create_connection(
                Connection,
                host,
                port,
                ssl=direct_tls,
                server_hostname=origin.host if direct_tls is not None else None,
            )
        except ssl.SSLCertVerificationError as exc:
            raise CertificateRefused(origin.host, origin.port, exc) from exc
        except OSError as exc:  # refused, unreachable, no such host, a TLS handshake failure
            shown = "the proxy " if proxy is not None else ""
            raise ConnectionFailed(f"cannot connect to {shown}{host}:{port}: {exc}") from exc
        if proxy is not None and https:
            assert tls is not None
            await self._tunnel(loop, connection, origin, proxy, tls)
        return connection

    async def _tunnel(
        self,
        loop: asyncio.AbstractEventLoop,
        connection: Connection,
        origin: Origin,
        proxy: ProxyRoute,
        tls: ssl.SSLContext,
    ) -> None:
        """CONNECT through the proxy, then TLS with the origin inside the tunnel."""
        authority = _authority(origin.host, origin.port)
        lines = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if proxy.authorization is not None:
            lines += f"Proxy-Authorization: {proxy.authorization}\r\n"
        try:
            answer = await connection.send(
                (lines + "\r\n").encode("ascii"), _CONNECT_HEAD_CAP, tunnel=True
            )
            if not 200 <= answer.status < 300:
                raise ProxyRefused(
                    f"the proxy answered the CONNECT with HTTP {answer.status}",
                    status=answer.status,
                    headers=answer.headers,
                )
            assert connection.transport is not None
            try:
                transport = await loop.start_tls(
                    connection.transport, connection, tls, server_hostname=origin.host
                )
            except ssl.SSLCertVerificationError as exc:
                raise CertificateRefused(origin.host, origin.port, exc) from exc
            except OSError as exc:
                message = f"TLS through the proxy to {authority} failed: {exc}"
                raise ConnectionFailed(message) from exc
        except BaseException:
            connection.close()
            raise
        connection.transport = cast(asyncio.Transport, transport)


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
