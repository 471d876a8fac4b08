"""Where a run's keys come from: environment variables or a JD Cloud CLI profile.

Precedence, highest first:

1. `--profile NAME` on the command line: the keys of that profile.
2. The environment variables `[api] access_key_env` and `[api] secret_key_env` name, when both
   are set (so a cron wrapper or a CI secret overrides a config file without editing it).
3. `[api] profile = "NAME"`: the keys of that profile.
4. Otherwise those environment variables are required, as without any profile.

A profile is a section of `~/.jdc/config`, the INI file `jdc configure add` writes (the folder is
`JDC_CONFIG_DIR` when set); the name `current` stands for the one in `~/.jdc/current`. Only the
keys are taken from it, and its `scheme://endpoint` only when the config file has no
`[api] endpoint`. A session token (`[api] session_token_env`) goes with whichever keys were chosen.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from crawler.config import ApiConfig, Config, Credentials, resolve_credentials
from crawler.errors import ConfigError

if TYPE_CHECKING:  # configparser itself is imported when a profile is read
    import configparser

log = logging.getLogger(__name__)

CONFIG_DIR_ENV: Final = "JDC_CONFIG_DIR"
CURRENT_PROFILE: Final = "current"
# A token is sent as a header value: printable ASCII only, so it cannot break the request.
_HEADER_SAFE: Final = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class Profile:
    """One profile of `~/.jdc/config`; the secret is kept out of `repr`.

    Attributes:
        name: the section's name (`current` already resolved).
        path: the file it was read from.
        access_key: its `access_key`.
        secret_key: its `secret_key`.
        endpoint: `scheme://endpoint` from its `scheme` (default https) and `endpoint`, if set.
    """

    name: str
    path: Path
    access_key: str
    secret_key: str = field(repr=False)
    endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class Access:
    """The run's credentials, the endpoint to use them on, and where the keys came from."""

    credentials: Credentials
    endpoint: str
    source: str


def resolve_access(
    config: Config, environ: Mapping[str, str], *, profile: str | None = None
) -> Access:
    """The credentials and endpoint for a run, by the precedence in this module's docstring.

    Args:
        config: the whole config (`keys_set` tells whether the file set `[api] endpoint`).
        environ: the environment.
        profile: `--profile NAME` from the command line, if given.

    Raises:
        ConfigError: a variable, the profile file, the profile or one of its keys is missing or
            unusable; the message names the variable, or the file and the profile.
    """
    api = config.api
    token = _session_token(api, environ)
    name = profile
    if name is None and api.profile is not None:
        if _both_set(api, environ):
            log.info(
                "taking the keys from %s and %s, which take precedence over [api] profile %r",
                api.access_key_env, api.secret_key_env, api.profile,
            )  # fmt: skip
        else:
            name = api.profile
    if name is None:
        keys = resolve_credentials(api, environ)
        source = f"environment variables {api.access_key_env} and {api.secret_key_env}"
        return Access(_with_token(keys, token), api.endpoint, source)
    found = read_profile(name, environ)
    endpoint = api.endpoint
    if found.endpoint is not None and "api.endpoint" not in config.keys_set:
        endpoint = _checked_endpoint(api, found)
    keys = Credentials(found.access_key, found.secret_key, token)
    return Access(keys, endpoint, f"profile {found.name!r} in {found.path}")


def config_dir(environ: Mapping[str, str]) -> Path:
    """The JD Cloud CLI's folder: `JDC_CONFIG_DIR`, else `~/.jdc`."""
    override = environ.get(CONFIG_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    home = environ.get("HOME", "").strip()
    return (Path(home) if home else Path.home()) / ".jdc"


def read_profile(name: str, environ: Mapping[str, str]) -> Profile:
    """Reads one profile from `config_dir(environ) / "config"`.

    A file that group or others may read gets one WARNING: it holds secret keys.

    Raises:
        ConfigError: the file, the profile or its `access_key`/`secret_key` is missing, or the
            file is not INI; the message names the file and the profile, never a key's value.
    """
    folder = config_dir(environ)
    path = folder / "config"
    if name == CURRENT_PROFILE:
        name = _current_name(folder / CURRENT_PROFILE)
    section = _read_section(path, name)
    keys = {}
    for key in ("access_key", "secret_key"):
        value = section.get(key, "").strip()
        if not value:
            raise ConfigError(f"{path}: profile {name!r} has no {key}")
        keys[key] = value
    _warn_if_readable(path)
    host = section.get("endpoint", "").strip()
    scheme = section.get("scheme", "").strip() or "https"
    endpoint = f"{scheme}://{host}" if host else None
    return Profile(name, path, keys["access_key"], keys["secret_key"], endpoint)


def _current_name(path: Path) -> str:
    try:
        name = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"{path}: cannot read the name of the {CURRENT_PROFILE!r} profile: {reason}"
        ) from exc
    if not name:
        raise ConfigError(f"{path}: empty, so there is no {CURRENT_PROFILE!r} profile")
    return name


def _read_section(path: Path, name: str) -> configparser.SectionProxy:
    import configparser  # only a crawl that uses a profile reads one (start-up)

    parser = configparser.ConfigParser(interpolation=None, default_section="\x00")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"{path}: cannot read the JD Cloud CLI profile file (profile {name!r}): {reason}"
        ) from exc
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        # configparser's messages quote the offending line, which may hold a secret key.
        raise ConfigError(
            f"{path}: not a JD Cloud CLI profile file (profile {name!r}): "
            f"{type(exc).__name__} at line {getattr(exc, 'lineno', '?')}"
        ) from exc
    if not parser.has_section(name):
        known = ", ".join(repr(n) for n in parser.sections()) or "none"
        raise ConfigError(f"{path}: no profile {name!r} (profiles there: {known})")
    return parser[name]


def _warn_if_readable(path: Path) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warning(
            "%s holds secret keys but group or others may read it (mode %03o); "
            "fix it with: chmod 600 %s",
            path, mode, path,
        )  # fmt: skip


def _checked_endpoint(api: ApiConfig, profile: Profile) -> str:
    assert profile.endpoint is not None
    try:
        return dataclasses.replace(api, endpoint=profile.endpoint).endpoint
    except ConfigError as exc:
        raise ConfigError(f"{profile.path}: profile {profile.name!r}: {exc}") from exc


def _both_set(api: ApiConfig, environ: Mapping[str, str]) -> bool:
    names = (api.access_key_env, api.secret_key_env)
    return all(environ.get(name, "").strip() for name in names)


def _session_token(api: ApiConfig, environ: Mapping[str, str]) -> str | None:
    name = api.session_token_env
    if name is None:
        return None
    value = environ.get(name, "").strip()
    if not value:
        state = "empty" if name in environ else "not set"
        log.warning(
            "%s (named by api.session_token_env) is %s: signing without a session token",
            name, state,
        )  # fmt: skip
        return None
    if _HEADER_SAFE.fullmatch(value) is None:
        raise ConfigError(
            f"environment variable {name} (named by api.session_token_env) holds a character "
            "that an HTTP header cannot carry (want printable ASCII without spaces)"
        )
    return value


def _with_token(keys: Credentials, token: str | None) -> Credentials:
    return keys if token is None else dataclasses.replace(keys, session_token=token)
