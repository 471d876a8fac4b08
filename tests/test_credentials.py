"""Keys from JD Cloud CLI profiles and temporary credentials, alone and through real crawls.

The profile files are written the way `jdc configure add` writes them: `configparser` with one
section per profile, `~/.jdc/current` holding the name without a newline, mode 0644.
"""

from __future__ import annotations

import configparser
import io
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from crawler.cli import Io, main
from crawler.config import ApiConfig, Config, load_config
from crawler.credentials import config_dir, read_profile, resolve_access
from crawler.errors import ConfigError
from tests.conftest import (
    SECRET_KEY,
    SimulatorFactory,
    TlsFiles,
    crawl_environ,
    write_config,
)

TOKEN_ENV = "TEST_JDCLOUD_SESSION_TOKEN"
TOKEN = "Q+kYZSoNfG4XARi6f3h/R+UP8CuB1eRthezNvWx5LFIa5NyqN=="
WRONG_TOKEN = "expired-7f3a9c0e5b2d+/wrong=="
REPO = Path(__file__).parents[1]


def jdc_configure_add(
    home: Path,
    name: str,
    *,
    access_key: str = "TESTAK",
    secret_key: str = SECRET_KEY,
    endpoint: str = "www.jdcloud-api.com",
    scheme: str = "https",
    make_current: bool = True,
) -> Path:
    """What `jdc configure add --profile NAME ...` leaves in `home/.jdc` (jdcloud-cli 1.2.12)."""
    folder = home / ".jdc"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config"
    parser = configparser.ConfigParser()
    parser.read(path)
    parser[name] = {
        "access_key": access_key,
        "secret_key": secret_key,
        "region_id": "cn-north-1",
        "endpoint": endpoint,
        "scheme": scheme,
        "timeout": "20",
    }
    with path.open("w") as out:
        parser.write(out)
    path.chmod(0o644)
    if make_current:
        (folder / "current").write_text(name)
    return path


def _config(**api: str) -> Config:
    return Config(api=ApiConfig(**api))  # type: ignore[arg-type]


# --- reading a profile -------------------------------------------------------------------------


def test_a_profile_written_by_jdc_is_read(tmp_path: Path) -> None:
    jdc_configure_add(tmp_path, "work", access_key="AKWORK", secret_key="SKWORK")
    jdc_configure_add(tmp_path, "home", access_key="AKHOME", secret_key="SKHOME")
    environ = {"HOME": str(tmp_path)}
    work = read_profile("work", environ)
    assert (work.name, work.access_key, work.secret_key) == ("work", "AKWORK", "SKWORK")
    assert work.endpoint == "https://www.jdcloud-api.com"
    current = read_profile("current", environ)  # jdc made "home" current last
    assert (current.name, current.access_key) == ("home", "AKHOME")
    assert "SKHOME" not in repr(current)


def test_jdc_config_dir_overrides_the_home_folder(tmp_path: Path) -> None:
    jdc_configure_add(tmp_path / "elsewhere", "ci", access_key="AKCI")
    environ = {"HOME": str(tmp_path / "nobody"), "JDC_CONFIG_DIR": str(tmp_path / "elsewhere/.jdc")}
    assert config_dir(environ) == tmp_path / "elsewhere/.jdc"
    assert read_profile("ci", environ).access_key == "AKCI"


def test_a_profile_readable_by_others_gets_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = jdc_configure_add(tmp_path, "work")
    with caplog.at_level(logging.WARNING):
        read_profile("work", {"HOME": str(tmp_path)})
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert f"chmod 600 {path}" in record.getMessage() and "644" in record.getMessage()
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        read_profile("work", {"HOME": str(tmp_path)})
    assert caplog.records == []


@pytest.mark.parametrize(
    ("setup", "profile", "message"),
    [
        (
            "nothing",
            "work",
            r"\.jdc/config: cannot read the JD Cloud CLI profile file \(profile 'work'\)",
        ),
        ("config", "play", r"\.jdc/config: no profile 'play' \(profiles there: 'work'\)"),
        ("no current", "current", r"\.jdc/current: cannot read the name of the 'current' profile"),
        ("no secret", "work", r"\.jdc/config: profile 'work' has no secret_key"),
        ("not ini", "work", r"\.jdc/config: not a JD Cloud CLI profile file \(profile 'work'\)"),
    ],
)
def test_a_missing_file_profile_or_key_names_the_file_and_the_profile(
    tmp_path: Path, setup: str, profile: str, message: str
) -> None:
    folder = tmp_path / ".jdc"
    if setup in ("config", "no current"):
        jdc_configure_add(tmp_path, "work", make_current=False)
    elif setup == "no secret":
        jdc_configure_add(tmp_path, "work", secret_key="")
    elif setup == "not ini":
        folder.mkdir()
        (folder / "config").write_text("access_key = AKLEAK\nsecret_key = SKLEAK\n")
    with pytest.raises(ConfigError, match=message) as caught:
        read_profile(profile, {"HOME": str(tmp_path)})
    assert str(tmp_path) in str(caught.value)
    assert "SKLEAK" not in str(caught.value) and SECRET_KEY not in str(caught.value)


# --- precedence --------------------------------------------------------------------------------


ENV_KEYS = {"JDCLOUD_ACCESS_KEY": "AKENV", "JDCLOUD_SECRET_KEY": "SKENV"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    jdc_configure_add(tmp_path, "work", access_key="AKWORK", secret_key="SKWORK")
    jdc_configure_add(tmp_path, "play", access_key="AKPLAY", secret_key="SKPLAY")
    return tmp_path


@pytest.mark.parametrize(
    ("env_keys", "config_profile", "flag", "expected"),
    [
        (True, None, None, "AKENV"),  # the default: the environment variables
        (False, "work", None, "AKWORK"),  # [api] profile when they are not set
        (True, "work", None, "AKENV"),  # the environment beats [api] profile
        (True, "work", "play", "AKPLAY"),  # --profile beats both
        (False, None, "current", "AKPLAY"),  # "current" is ~/.jdc/current
    ],
)
def test_precedence_of_flag_environment_and_profile_key(
    home: Path, env_keys: bool, config_profile: str | None, flag: str | None, expected: str
) -> None:
    environ = {"HOME": str(home)} | (ENV_KEYS if env_keys else {})
    config = _config(profile=config_profile) if config_profile else _config()
    access = resolve_access(config, environ, profile=flag)
    assert access.credentials.access_key == expected
    assert access.credentials.session_token is None


def test_without_a_profile_the_missing_variable_is_named(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"JDCLOUD_SECRET_KEY .* is not set"):
        resolve_access(_config(), {"HOME": str(home), "JDCLOUD_ACCESS_KEY": "AKENV"})


def test_the_profile_endpoint_is_used_only_when_the_file_has_none(
    home: Path, tmp_path: Path
) -> None:
    jdc_configure_add(home, "lab", endpoint="127.0.0.1:8080", scheme="http")
    environ = {"HOME": str(home)}
    without = tmp_path / "without.toml"
    without.write_text('[api]\nprofile = "lab"\n')
    assert resolve_access(load_config(without), environ).endpoint == "http://127.0.0.1:8080"
    with_endpoint = tmp_path / "with.toml"
    with_endpoint.write_text('[api]\nprofile = "lab"\nendpoint = "https://vm.jdcloud-api.com"\n')
    assert resolve_access(load_config(with_endpoint), environ).endpoint == (
        "https://vm.jdcloud-api.com"
    )


def test_a_profile_endpoint_in_plain_http_to_a_public_host_is_refused(home: Path) -> None:
    jdc_configure_add(home, "bad", endpoint="www.jdcloud-api.com", scheme="http")
    with pytest.raises(ConfigError, match=r"\.jdc/config: profile 'bad': api\.endpoint: http://"):
        resolve_access(_config(profile="bad"), {"HOME": str(home)})


def test_the_session_token_goes_with_whichever_keys_were_chosen(home: Path) -> None:
    api = {"profile": "work", "session_token_env": "JDCLOUD_SESSION_TOKEN"}
    environ = {"HOME": str(home), "JDCLOUD_SESSION_TOKEN": f" {TOKEN} "}
    access = resolve_access(_config(**api), environ)
    assert (access.credentials.access_key, access.credentials.session_token) == ("AKWORK", TOKEN)
    assert TOKEN not in repr(access)


@pytest.mark.parametrize("bad", ["line\nbreak", "t\u00f6ken", "two words"])
def test_a_token_that_cannot_be_a_header_is_refused_unechoed(home: Path, bad: str) -> None:
    environ = ENV_KEYS | {"TOKEN": bad}
    with pytest.raises(ConfigError, match=r"TOKEN \(named by api\.session_token_env\)") as caught:
        resolve_access(_config(session_token_env="TOKEN"), environ)
    assert bad not in str(caught.value)


def test_an_unset_token_variable_is_a_warning(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        access = resolve_access(_config(session_token_env="TOKEN"), ENV_KEYS)
    assert access.credentials.session_token is None
    assert "TOKEN (named by api.session_token_env) is not set" in caplog.text


# --- real crawls -------------------------------------------------------------------------------


def _crawl(config: Path, targets: Path, environ: Mapping[str, str], *args: str) -> tuple[int, str]:
    stderr = io.StringIO()
    code = main(
        ["crawl", "--config", str(config), "--targets", str(targets), "--no-progress", *args],
        Io(environ=dict(environ), stdout=io.StringIO(), stderr=stderr),
    )
    return code, stderr.getvalue()


def _db_dump(db: Path) -> str:
    with sqlite3.connect(db) as connection:
        return "\n".join(connection.iterdump())


@pytest.fixture
def crawl_home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


def test_a_crawl_takes_its_keys_from_the_current_jdc_profile(
    simulator: SimulatorFactory, tmp_path: Path, crawl_home: Path
) -> None:
    server = simulator(images_per_region=5)
    path = jdc_configure_add(crawl_home, "work", access_key="TESTAK", secret_key=SECRET_KEY)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db, extra_api='profile = "current"')
    targets = tmp_path / "targets.csv"
    server.sim.write_targets(targets)
    code, stderr = _crawl(config, targets, {"HOME": str(crawl_home)})
    assert code == 0, stderr
    assert f"signing with the keys from profile 'work' in {path}" in stderr
    assert stderr.count("WARNING") == 1 and f"chmod 600 {path}" in stderr
    assert SECRET_KEY not in stderr and SECRET_KEY not in _db_dump(db)
    assert server.sim.stats.auth_failures == 0


def test_a_crawl_with_profile_flag_and_the_profile_endpoint(
    simulator: SimulatorFactory, tmp_path: Path, crawl_home: Path
) -> None:
    server = simulator(images_per_region=5)
    host = server.url.removeprefix("http://")
    jdc_configure_add(crawl_home, "lab", endpoint=host, scheme="http", make_current=False)
    (crawl_home / ".jdc/config").chmod(0o600)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, None, db=db)  # no [api] endpoint: the profile's is used
    targets = tmp_path / "targets.csv"
    server.sim.write_targets(targets)
    # Wrong keys in the environment: --profile wins over them.
    environ = crawl_environ("wrong-secret") | {"JDC_CONFIG_DIR": str(crawl_home / ".jdc")}
    code, stderr = _crawl(config, targets, environ, "--profile", "lab")
    assert code == 0, stderr
    assert "WARNING" not in stderr
    assert server.sim.stats.requests == 20 and server.sim.stats.auth_failures == 0


def test_a_crawl_with_a_missing_profile_exits_2_naming_file_and_profile(
    simulator: SimulatorFactory, tmp_path: Path, crawl_home: Path
) -> None:
    server = simulator(images_per_region=5)
    jdc_configure_add(crawl_home, "work")
    config = write_config(tmp_path, server.url, db=tmp_path / "inventory.db")
    targets = tmp_path / "targets.csv"
    server.sim.write_targets(targets)
    code, stderr = _crawl(config, targets, {"HOME": str(crawl_home)}, "--profile", "prod")
    assert code == 2
    assert f"{crawl_home / '.jdc/config'}: no profile 'prod'" in stderr
    assert server.sim.stats.requests == 0


def test_discover_takes_profile_too(
    simulator: SimulatorFactory, tmp_path: Path, crawl_home: Path
) -> None:
    server = simulator(images_per_region=5)
    jdc_configure_add(crawl_home, "work")
    config = write_config(tmp_path, server.url, db=tmp_path / "inventory.db")
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(
        ["discover", "--config", str(config), "--regions", "cn-north-1", "--profile", "work"],
        Io(environ={"HOME": str(crawl_home)}, stdout=stdout, stderr=stderr),
    )
    assert code == 0, stderr.getvalue()
    assert len(stdout.getvalue().splitlines()) == 1 + 5


def _token_setup(simulator: SimulatorFactory, tmp_path: Path) -> tuple[object, Path, Path, Path]:
    server = simulator(images_per_region=5, session_token=TOKEN)
    db = tmp_path / "inventory.db"
    config = write_config(
        tmp_path, server.url, db=db, extra_api=f'session_token_env = "{TOKEN_ENV}"'
    )
    targets = tmp_path / "targets.csv"
    server.sim.write_targets(targets)
    return server, config, targets, db


def test_a_crawl_with_a_session_token_the_simulator_checks(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server, config, targets, db = _token_setup(simulator, tmp_path)
    code, stderr = _crawl(
        config, targets, crawl_environ() | {TOKEN_ENV: TOKEN}, "--log-level", "debug"
    )
    assert code == 0, stderr
    assert server.sim.stats.requests == 20 and server.sim.stats.auth_failures == 0  # type: ignore[attr-defined]
    assert TOKEN not in stderr and TOKEN not in _db_dump(db)


@pytest.mark.parametrize("token", [WRONG_TOKEN, None], ids=["wrong", "unset"])
def test_a_crawl_with_a_wrong_or_no_token_exits_3(
    simulator: SimulatorFactory, tmp_path: Path, token: str | None
) -> None:
    server, config, targets, db = _token_setup(simulator, tmp_path)
    environ = crawl_environ() | ({TOKEN_ENV: token} if token else {})
    code, stderr = _crawl(config, targets, environ, "--log-level", "debug")
    assert code == 3
    assert server.sim.stats.requests == 1  # type: ignore[attr-defined]
    assert "the credentials were rejected" in stderr
    if token is not None:
        assert "the session token may have expired" in stderr
        assert token not in stderr and token not in _db_dump(db)
    else:
        assert f"{TOKEN_ENV} (named by api.session_token_env) is not set" in stderr
    with sqlite3.connect(db) as connection:
        ((status, message),) = connection.execute("SELECT status, message FROM crawl_runs")
    assert status == "failed"
    assert ("may have expired" in message) is (token is not None)


# --- the simulator's own command: HTTPS and a session token ------------------------------------


@pytest.fixture
def simulate_process(tls_files: TlsFiles, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`crawler simulate --tls-cert --tls-key` with a token from its environment variable."""
    targets = tmp_path / "targets.csv"
    environ = dict(os.environ) | {
        "JDCLOUD_ACCESS_KEY": "TESTAK",
        "JDCLOUD_SECRET_KEY": SECRET_KEY,
        "JDCLOUD_SESSION_TOKEN": TOKEN,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "crawler", "simulate", "--images-per-region", "5",
         "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key),
         "--write-targets", str(targets)],
        stdout=subprocess.PIPE, text=True, env=environ, cwd=REPO,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on https://127.0.0.1:"), line
        yield line.removeprefix("listening on ").strip(), targets
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize(("token", "code"), [(TOKEN, 0), (WRONG_TOKEN, 3)], ids=["right", "wrong"])
def test_crawler_simulate_serves_https_and_checks_the_token(
    simulate_process: tuple[str, Path], tls_files: TlsFiles, tmp_path: Path, token: str, code: int
) -> None:
    url, targets = simulate_process
    extra = f'ca_bundle = "{tls_files.cert}"\nsession_token_env = "{TOKEN_ENV}"'
    config = write_config(tmp_path, url, db=tmp_path / "inventory.db", extra_api=extra)
    got, stderr = _crawl(config, targets, crawl_environ() | {TOKEN_ENV: token})
    assert got == code, stderr
