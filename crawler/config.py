"""The config file (CONTRACT.md §3): TOML into frozen, validated dataclasses.

Each section is a frozen dataclass that checks itself on construction (types, then ranges), so a
value changed later with `dataclasses.replace` (a command-line override) is checked the same way.
`load_config` adds what only a file knows: unknown sections and keys are errors (a typo must not
be silently ignored), every message names the file, and relative paths are resolved against the
file's directory so that a cron job's working directory does not matter.

Secrets never live in the file: `[api]` names the environment variables that hold them, and
`resolve_credentials` reads those.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, Final, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crawler.errors import ConfigError

SignatureVersion = Literal["JDCLOUD3", "JDCLOUD2"]
Strategy = Literal["single", "batch"]

DEFAULT_DATABASE_URL: Final = "sqlite+aiosqlite:///inventory.db"
MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024

_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# VPC endpoints such as vm.internal.cn-north-1.jdcloud-api.com serve plain HTTP only.
_INTERNAL_HOST: Final = re.compile(r"[a-z0-9-]+\.internal\.[a-z0-9-]+\.jdcloud-api\.com")
# sqlite URLs whose path is relative to the working directory: `sqlite[+driver]:///path`.
_SQLITE_URL: Final = re.compile(r"(sqlite(?:\+\w+)?:///)([^/?][^?]*)(\?.*)?", re.DOTALL)
_TOML_TYPES: Final = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    dict: "a table",
    list: "an array",
}


def database_url(value: str) -> str:
    """An SQLAlchemy URL: a plain path becomes `sqlite+aiosqlite:///path`; a URL is kept.

    Raises:
        ConfigError: the value is empty, or its scheme is neither `sqlite+aiosqlite` nor
            `postgresql+psycopg` (CONTRACT.md §9); the message never repeats the URL, which may
            hold a password.
    """
    if not value.strip():
        raise ConfigError("database.url: must not be empty")
    url = value if "://" in value else f"sqlite+aiosqlite:///{value}"
    check_database_scheme(url)
    return url


# The database drivers the store can open (CONTRACT.md §9); any other scheme fails here, as a
# config error, not mid-crawl.
SUPPORTED_DATABASE_SCHEMES: Final = ("sqlite+aiosqlite", "postgresql+psycopg")


def check_database_scheme(url: str) -> None:
    """Refuse a database URL whose scheme (dialect+driver) the store cannot open.

    Raises:
        ConfigError: naming the scheme (never the rest of the URL, which may hold a password).
    """
    scheme = url.split("://", 1)[0]
    if scheme not in SUPPORTED_DATABASE_SCHEMES:
        supported = ", ".join(f"{name}://" for name in SUPPORTED_DATABASE_SCHEMES)
        raise ConfigError(
            f"database.url: the scheme {scheme}:// is not supported; use {supported} "
            "(e.g. sqlite+aiosqlite:///inventory.db or postgresql+psycopg://USER@HOST/DB) or a"
            " plain file path"
        )


class _Section:
    """Checks a section dataclass's fields against their annotations, then its own rules."""

    __slots__ = ()
    SECTION: ClassVar[str]

    def __post_init__(self) -> None:
        for name, hint in _field_types(type(self)).items():
            value = getattr(self, name)
            checked = _check_type(f"{self.SECTION}.{name}", value, hint)
            if checked is not value:
                object.__setattr__(self, name, checked)
        self._validate()

    def _validate(self) -> None:
        """Range and format checks of one section, run after the type checks."""

    def _error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.SECTION}.{name}: {problem}")

    def _at_least(self, name: str, minimum: float) -> None:
        value = getattr(self, name)
        if not value >= minimum:
            raise self._error(name, f"must be >= {minimum}, got {value}")

    def _positive(self, name: str) -> None:
        value = getattr(self, name)
        if not value > 0:
            raise self._error(name, f"must be > 0, got {value}")


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each field (annotations are strings under `__future__`)."""
    types = _FIELD_TYPES.get(cls)
    if types is None:
        hints = get_type_hints(cls)
        types = _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in fields(cls)}
    return types


def _type_name(value: object) -> str:
    for kind, name in _TOML_TYPES.items():
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def _check_type(key: str, value: object, hint: Any) -> object:
    """`value` if it fits `hint` (an int is widened to a float), else a ConfigError."""
    if isinstance(hint, UnionType):
        if value is None and type(None) in get_args(hint):
            return value
        (hint,) = (arg for arg in get_args(hint) if arg is not type(None))
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if value in choices:
            return value
        names = ", ".join(repr(choice) for choice in choices)
        shown = repr(value) if isinstance(value, str) else _type_name(value)
        raise ConfigError(f"{key}: must be one of {names}, got {shown}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not hint:
        expected = _TOML_TYPES.get(hint, str(hint))
        raise ConfigError(f"{key}: expected {expected}, got {_type_name(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value}")
    return value


def _allows_plain_http(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return _INTERNAL_HOST.fullmatch(host) is not None


def _check_endpoint(value: str) -> str:
    """The endpoint without a trailing `/`, or a ConfigError (never echoing the whole URL)."""
    key = "api.endpoint"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as exc:
        raise ConfigError(f"{key}: not a valid URL ({exc})") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{key}: must be an https:// URL such as https://vm.jdcloud-api.com")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{key}: must not contain a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{key}: must be an origin only, with no path, query or fragment")
    if parts.scheme == "http" and not _allows_plain_http(parts.hostname):
        raise ConfigError(
            f"{key}: http:// is allowed only for loopback hosts and VPC endpoints "
            f"*.internal.<region>.jdcloud-api.com; use https:// for {parts.hostname}"
        )
    return value.rstrip("/")


def check_proxy_url(key: str, value: str) -> None:
    """A ConfigError unless `value` is an `http://host:port` proxy URL.

    The URL is never echoed: it may carry the proxy's user name and password.
    """
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as exc:
        raise ConfigError(f"{key}: not a valid proxy URL") from exc
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"{key}: must be an http:// proxy URL such as http://proxy.example:3128")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{key}: must be a proxy origin only, with no path or query")


def _is_time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class ApiConfig(_Section):
    """`[api]`: where the API is and how to talk to it."""

    SECTION: ClassVar[str] = "api"

    endpoint: str = "https://vm.jdcloud-api.com"
    timeout_s: float = 10.0
    access_key_env: str = "JDCLOUD_ACCESS_KEY"
    secret_key_env: str = "JDCLOUD_SECRET_KEY"
    naive_time_zone: str = "Asia/Shanghai"
    signature_version: SignatureVersion = "JDCLOUD3"
    sign_date_nonce: bool = False
    max_response_bytes: int = MAX_RESPONSE_BYTES
    profile: str | None = None
    session_token_env: str | None = None
    proxy: str | None = field(default=None, repr=False)  # may hold a password
    ca_bundle: str | None = None

    def _validate(self) -> None:
        object.__setattr__(self, "endpoint", _check_endpoint(self.endpoint))
        self._positive("timeout_s")
        for name in ("access_key_env", "secret_key_env", "session_token_env"):
            value = getattr(self, name)
            # The value is not echoed: a secret pasted here by mistake must not reach a log.
            if value is not None and _ENV_NAME.fullmatch(value) is None:
                raise self._error(
                    name, "must be the NAME of an environment variable (letters, digits, _)"
                )
        if self.profile is not None and not self.profile.strip():
            raise self._error("profile", "must not be empty (or leave the key out)")
        if self.proxy is not None:
            check_proxy_url("api.proxy", self.proxy)
        if self.ca_bundle is not None and not self.ca_bundle.strip():
            raise self._error("ca_bundle", "must not be empty (or leave the key out)")
        if not _is_time_zone(self.naive_time_zone):
            raise self._error(
                "naive_time_zone", f"unknown time zone {self.naive_time_zone!r} (want e.g. UTC)"
            )
        self._at_least("max_response_bytes", 1)


@dataclass(frozen=True, slots=True)
class CrawlConfig(_Section):
    """`[crawl]`: how hard and in what shape to crawl."""

    SECTION: ClassVar[str] = "crawl"

    concurrency: int = 64
    per_region_concurrency: int = 32
    rate_limit_per_s: float = 0.0
    strategy: Strategy = "single"
    deadline_s: float = 0.0
    lease_s: float = 30.0
    # The mass-deletion guard (CONTRACT.md §7): hold a run's missing marks when it would newly
    # mark more than this share of its present images, and at least `missing_guard_min` of them.
    max_missing_fraction: float = 0.2
    missing_guard_min: int = 50

    def _validate(self) -> None:
        self._at_least("lease_s", 1)
        self._at_least("concurrency", 1)
        self._at_least("per_region_concurrency", 1)
        self._at_least("rate_limit_per_s", 0)
        self._at_least("deadline_s", 0)
        self._at_least("max_missing_fraction", 0)
        if self.max_missing_fraction > 1:
            raise self._error(
                "max_missing_fraction",
                f"must be <= 1 (1 turns the guard off), got {self.max_missing_fraction}",
            )
        self._at_least("missing_guard_min", 0)


@dataclass(frozen=True, slots=True)
class RetryConfig(_Section):
    """`[retry]`: attempts per target and the exponential backoff between them."""

    SECTION: ClassVar[str] = "retry"

    max_attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 60.0

    def _validate(self) -> None:
        self._at_least("max_attempts", 1)
        self._positive("initial_backoff_s")
        self._positive("max_backoff_s")
        if self.initial_backoff_s > self.max_backoff_s:
            raise self._error(
                "initial_backoff_s",
                f"must be <= retry.max_backoff_s ({self.initial_backoff_s} > {self.max_backoff_s})",
            )


@dataclass(frozen=True, slots=True)
class DatabaseConfig(_Section):
    """`[database]`: an SQLAlchemy URL, or a plain SQLite file path."""

    SECTION: ClassVar[str] = "database"

    url: str = DEFAULT_DATABASE_URL

    def _validate(self) -> None:
        object.__setattr__(self, "url", database_url(self.url))


@dataclass(frozen=True, slots=True)
class TargetsConfig(_Section):
    """`[targets]`: the targets file used when `--targets` is not given."""

    SECTION: ClassVar[str] = "targets"

    file: str | None = None

    def _validate(self) -> None:
        if self.file is not None and not self.file.strip():
            raise self._error("file", "must not be empty")


@dataclass(frozen=True, slots=True)
class RetentionConfig(_Section):
    """`[retention]`: how many runs keep their `crawl_targets` and `crawl_results` rows."""

    SECTION: ClassVar[str] = "retention"

    keep_runs: int = 30  # 0 = keep every run's rows

    def _validate(self) -> None:
        self._at_least("keep_runs", 0)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; `source` is the file it came from, if any."""

    api: ApiConfig = field(default_factory=ApiConfig)
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    source: Path | None = None
    # The dotted keys the file set (`api.endpoint`, ...): some defaults give way to other sources.
    keys_set: frozenset[str] = field(default=frozenset(), compare=False, repr=False)


_SECTIONS: Final[dict[str, type[_Section]]] = {
    "api": ApiConfig,
    "crawl": CrawlConfig,
    "retry": RetryConfig,
    "database": DatabaseConfig,
    "targets": TargetsConfig,
    "retention": RetentionConfig,
}


def default_config() -> Config:
    """The built-in defaults, as if from an empty config file."""
    return Config()


def _unknown(key: str, known: Mapping[str, object] | list[str], what: str) -> ConfigError:
    import difflib  # only a mistyped key needs it (start-up)

    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{key}: unknown {what}{hint}")


def _resolve_path(value: str, base_dir: Path) -> str:
    if value == "-":
        return value  # standard input
    return str(base_dir / value)


def _resolve_database_url(value: str, base_dir: Path) -> str:
    if "://" not in value:
        return database_url(_resolve_path(value, base_dir)) if value.strip() else value
    match = _SQLITE_URL.fullmatch(value)
    if match is None or match.group(2) == ":memory:" or match.group(2).startswith("file:"):
        return value  # in-memory, or an SQLite URI filename that names its own location
    prefix, path, query = match.groups()
    return f"{prefix}{_resolve_path(path, base_dir)}{query or ''}"


def _resolve_paths(name: str, table: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Relative paths made absolute against the config file's directory."""
    table = dict(table)
    if name == "targets" and isinstance(table.get("file"), str) and table["file"].strip():
        table["file"] = _resolve_path(table["file"], base_dir)
    if name == "api" and isinstance(table.get("ca_bundle"), str) and table["ca_bundle"].strip():
        table["ca_bundle"] = str(base_dir / Path(table["ca_bundle"]).expanduser())
    if name == "database" and isinstance(table.get("url"), str):
        table["url"] = _resolve_database_url(table["url"], base_dir)
    return table


def _build_section(name: str, table: object, base_dir: Path) -> _Section:
    cls = _SECTIONS[name]
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table ([{name}]), got {_type_name(table)}")
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    for key in sorted(table):
        if key not in known:
            raise _unknown(f"{name}.{key}", known, "key")
    return cls(**_resolve_paths(name, table, base_dir))


def _build_config(data: dict[str, Any], source: Path) -> Config:
    for key in sorted(data):
        if key not in _SECTIONS:
            what = "section" if isinstance(data[key], dict) else "key"
            raise _unknown(key, _SECTIONS, what)
    base_dir = source.parent
    sections = {name: _build_section(name, data.get(name, {}), base_dir) for name in _SECTIONS}
    keys_set = frozenset(
        f"{name}.{key}" for name, table in data.items() if isinstance(table, dict) for key in table
    )
    return Config(source=source, keys_set=keys_set, **sections)  # type: ignore[arg-type]


def load_config(path: Path | str) -> Config:
    """Reads and validates a TOML config file.

    A relative `[targets] file`, and a plain or `sqlite:///` relative path in `[database] url`,
    are resolved against the directory of `path`.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or holds an unknown or invalid key;
            the message names the file and the dotted key.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    try:
        return _build_config(data, path.resolve())
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key, its secret and, for a temporary credential, its session token.

    The secret and the token are kept out of `repr`.
    """

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def _read_variable(environ: Mapping[str, str], name: str, key: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        state = "empty" if name in environ else "not set"
        raise ConfigError(f"environment variable {name} (named by {key}) is {state}")
    return value


def resolve_credentials(api: ApiConfig, environ: Mapping[str, str] | None = None) -> Credentials:
    """Reads the access key and secret from the environment variables `api` names.

    Args:
        api: the `[api]` section.
        environ: the environment; `os.environ` when None.

    Raises:
        ConfigError: a variable is missing or empty; the message names it, never its value.
    """
    env = os.environ if environ is None else environ
    return Credentials(
        access_key=_read_variable(env, api.access_key_env, "api.access_key_env"),
        secret_key=_read_variable(env, api.secret_key_env, "api.secret_key_env"),
    )
