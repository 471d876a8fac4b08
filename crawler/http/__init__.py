"""The crawler's own HTTP/1.1 client, on asyncio's transports (issue 14).

Only what a signed GET against the JD Cloud API needs, one job per module: `connection` (the
protocol that frames a response), `decoding` (gzip, deflate), `pool` (keep-alive connections,
TLS, proxies), `session` (a request under its time limit), `errors` (what can go wrong).
It replaced aiohttp in the crawl's request path, where aiohttp took ~0.125 CPU ms of every
request (README, "The HTTP client"); aiohttp remains the simulator's server.
"""

from crawler.http.connection import Response
from crawler.http.errors import (
    BodyTooLarge,
    CertificateRefused,
    ConnectionFailed,
    HttpError,
    MalformedResponse,
    PayloadError,
    ProxyRefused,
)
from crawler.http.pool import Origin, ProxyRoute, basic_authorization
from crawler.http.session import HttpSession

__all__ = [
    "BodyTooLarge",
    "CertificateRefused",
    "ConnectionFailed",
    "HttpError",
    "HttpSession",
    "MalformedResponse",
    "Origin",
    "PayloadError",
    "ProxyRefused",
    "ProxyRoute",
    "Response",
    "basic_authorization",
]
