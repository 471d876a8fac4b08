"""How a run reaches the API: through which proxy, and trusting which certificates.

The proxy is `[api] proxy` when set; otherwise it comes from the environment the way `requests`
and curl read it: `HTTPS_PROXY` for an https endpoint, `HTTP_PROXY` for an http one (the lower
case name wins over the upper case one), unless `NO_PROXY` names the endpoint's host. A proxy's
user name and password stay out of its `url`, which is the only form ever logged.

TLS always verifies the certificate and the host name: there is deliberately no way to turn that
off. `SSL_CERT_FILE` and `[api] ca_bundle` add trusted certificates to the system's own, for
TLS-inspecting gateways and private endpoints.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from crawler.config import ApiConfig, check_proxy_url
from crawler.errors import ConfigError

NO_PROXY_NAMES: Final = ("no_proxy", "NO_PROXY")
CERT_FILE_ENV: Final = "SSL_CERT_FILE"
_PROXY_NAMES: Final = {
    "https": ("https_proxy", "HTTPS_PROXY"),
    "http": ("http_proxy", "HTTP_PROXY"),
}
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Proxy:
    """A forward proxy to send every request through.

    Attributes:
        url: `http://host:port`, without credentials: safe to log.
        source: where it came from: `api.proxy` or the environment variable's name.
        username: the proxy's user name, from the URL, if any.
        password: its password (kept out of `repr`).
    """

    url: str
    source: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def choose_proxy(api: ApiConfig, environ: Mapping[str, str], endpoint: str) -> Proxy | None:
    """The proxy for `endpoint`, or None to connect directly.

    Args:
        api: the `[api]` section; its `proxy`, when set, wins over the environment (NO_PROXY too).
        environ: the environment to read `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` from.
        endpoint: the API origin the run talks to.

    Raises:
        ConfigError: the proxy URL is not `http://host[:port]`; the message names where it came
            from and never echoes the URL, which may hold a password.
    """
    if api.proxy is not None:
        return _parse_proxy("api.proxy", api.proxy)
    parts = urlsplit(endpoint)
    found = _first_set(environ, _PROXY_NAMES.get(parts.scheme, ()))
    if found is None:
        return None
    name, value = found
    host = parts.hostname or ""
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    no_proxy = _first_set(environ, NO_PROXY_NAMES)
    if no_proxy is not None and bypasses_proxy(host, port, no_proxy[1]):
        return None
    return _parse_proxy(name, value if "://" in value else f"http://{value}")


def bypasses_proxy(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether a `NO_PROXY` list names `host` (and `port`), as curl and `requests` read it.

    Entries are comma separated: `*` (every host), a domain (`example.com` and `.example.com`
    both cover `api.example.com`), a host with a port (`proxy.local:8080`), an IP address or a
    CIDR range (`10.0.0.0/8`).
    """
    host = host.lower().strip("[]")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_host, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if _host_matches(host, entry_host.lstrip(".").strip("[]")):
            return True
    return False


def _host_matches(host: str, entry: str) -> bool:
    if host == entry or host.endswith("." + entry):
        return True
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """(`host`, port) of `host:port`; an IPv6 address without brackets has no port."""
    host, colon, port = entry.rpartition(":")
    if not colon or not port.isdigit() or (":" in host and not host.endswith("]")):
        return entry, None
    return host, int(port)


def _first_set(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _parse_proxy(source: str, value: str) -> Proxy:
    check_proxy_url(source, value)
    parts = urlsplit(value)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    port = parts.port or 80
    return Proxy(
        url=f"http://{shown}:{port}",
        source=source,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def tls_context(api: ApiConfig, environ: Mapping[str, str]) -> ssl.SSLContext | None:
    """The client TLS context: the system's trusted certificates plus the configured ones.

    It always verifies the server's certificate and host name. None when nothing is configured
    beyond the system's certificates: the HTTP client's default context, which verifies both as
    well, then serves (`client.open_session`), and a second copy of the system's certificates
    is not loaded (about 17 CPU ms of every crawl's start-up).

    Raises:
        ConfigError: `SSL_CERT_FILE` or `[api] ca_bundle` cannot be read or holds no certificate;
            the message names the key and the file.
    """
    extra = _extra_certificates(api, environ)
    if not extra:
        return None
    context = ssl.create_default_context()
    for key, path in extra:
        _trust(context, key, path)
    return context


def route_tls(api: ApiConfig, environ: Mapping[str, str], endpoint: str) -> ssl.SSLContext | None:
    """The TLS context a run to `endpoint` needs: `tls_context`'s for https, else None.

    Every proxy is http:// (`check_proxy_url`) and the HTTP client follows no redirect, so an
    http endpoint never starts TLS: building the context there (about 33 CPU ms of start-up with
    `SSL_CERT_FILE` set, two loads of the system's certificates) would be wasted. The configured
    files are still checked to be there and readable, so a missing one fails the run at start
    all the same; one that is readable but holds no certificate is not parsed until an https
    endpoint needs it.

    Raises:
        ConfigError: for https, as `tls_context`; for http, a configured file or directory that
            cannot be read, naming the key and the file.
    """
    if urlsplit(endpoint).scheme == "https":
        return tls_context(api, environ)
    for key, path in _extra_certificates(api, environ):
        _check_readable(key, path)
    return None


def _extra_certificates(api: ApiConfig, environ: Mapping[str, str]) -> list[tuple[str, Path]]:
    return [
        (key, Path(path))
        for key, path in (
            (CERT_FILE_ENV, environ.get(CERT_FILE_ENV)),
            ("api.ca_bundle", api.ca_bundle),
        )
        if path and path.strip()
    ]


def _check_readable(key: str, path: Path) -> None:
    try:
        if path.is_dir():
            os.scandir(path).close()  # a directory of hashed certificates must be listable
        else:
            path.open("rb").close()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc


def _trust(context: ssl.SSLContext, key: str, path: Path) -> None:
    try:
        if path.is_dir():
            context.load_verify_locations(capath=str(path))
        else:
            context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise ConfigError(f"{key}: {path} holds no usable PEM certificate ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc
