"""Loading and validating the TOML config file (CONTRACT.md §3)."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from crawler.config import (
    ApiConfig,
    Config,
    CrawlConfig,
    Credentials,
    DatabaseConfig,
    RetentionConfig,
    RetryConfig,
    TargetsConfig,
    database_url,
    default_config,
    load_config,
    resolve_credentials,
)
from crawler.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
SECTIONS = {
    "api": ApiConfig,
    "crawl": CrawlConfig,
    "retry": RetryConfig,
    "database": DatabaseConfig,
    "targets": TargetsConfig,
    "retention": RetentionConfig,
}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "crawler.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults and the example file -------------------------------------------------------------


def test_defaults_are_the_contract_defaults() -> None:
    config = default_config()
    assert config.api == ApiConfig(
        endpoint="https://vm.jdcloud-api.com",
        timeout_s=10.0,
        access_key_env="JDCLOUD_ACCESS_KEY",
        secret_key_env="JDCLOUD_SECRET_KEY",
        naive_time_zone="Asia/Shanghai",
        signature_version="JDCLOUD3",
        sign_date_nonce=False,
        max_response_bytes=8 * 1024 * 1024,
    )
    assert config.crawl == CrawlConfig(64, 32, 0.0, "single", 0.0, 30.0, 0.2, 50)
    assert config.retry == RetryConfig(6, 0.5, 60.0)
    assert config.retention == RetentionConfig(keep_runs=30)
    assert config.database.url == "sqlite+aiosqlite:///inventory.db"
    assert config.targets.file is None
    assert config.source is None


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    config = load_config(path)
    assert dataclasses.replace(config, source=None) == default_config()
    assert config.source == path.resolve()


def test_the_example_parses_to_the_defaults() -> None:
    config = load_config(EXAMPLE)
    defaults = default_config()
    assert (config.api, config.crawl, config.retry, config.retention) == (
        defaults.api,
        defaults.crawl,
        defaults.retry,
        defaults.retention,
    )
    # The deliberate differences: the example names a targets file, and paths are made absolute.
    assert config.database.url == f"sqlite+aiosqlite:///{EXAMPLE.parent / 'inventory.db'}"
    assert config.targets.file == str(EXAMPLE.parent / "targets.csv")


def test_the_example_documents_every_key() -> None:
    data = tomllib.loads(EXAMPLE.read_text("utf-8"))
    assert set(data) == set(SECTIONS)
    lines = EXAMPLE.read_text("utf-8").splitlines()
    for name, cls in SECTIONS.items():
        keys = {f.name for f in dataclasses.fields(cls)}
        # A key with no default (None) cannot be written in TOML: it is shown commented out.
        optional = {f.name for f in dataclasses.fields(cls) if f.default is None}
        assert keys - optional <= set(data[name]) <= keys, name
        for key in optional - set(data[name]):
            assert any(line.startswith(f"# {key} = ") for line in lines), f"{name}.{key}"
    for number, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[number - 1].startswith("#"), f"no comment above {line!r}"


def test_a_full_file_is_read(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [api]
        endpoint = "http://127.0.0.1:8080/"
        timeout_s = 3
        access_key_env = "MY_AK"
        secret_key_env = "MY_SK"
        naive_time_zone = "UTC"
        signature_version = "JDCLOUD2"
        sign_date_nonce = true
        max_response_bytes = 1024
        [crawl]
        concurrency = 8
        per_region_concurrency = 2
        rate_limit_per_s = 12.5
        strategy = "batch"
        deadline_s = 60
        [retry]
        max_attempts = 1
        initial_backoff_s = 1
        max_backoff_s = 1
        [database]
        url = "postgresql+psycopg://db.example/inventory"
        [targets]
        file = "/srv/targets.csv"
        """,
    )
    config = load_config(path)
    assert config == Config(
        api=ApiConfig(
            "http://127.0.0.1:8080", 3.0, "MY_AK", "MY_SK", "UTC", "JDCLOUD2", True, 1024
        ),
        crawl=CrawlConfig(8, 2, 12.5, "batch", 60.0, 30.0),
        retry=RetryConfig(1, 1.0, 1.0),
        database=DatabaseConfig("postgresql+psycopg://db.example/inventory"),
        targets=TargetsConfig("/srv/targets.csv"),
        source=path.resolve(),
    )
    assert isinstance(config.api.timeout_s, float)
    assert isinstance(config.crawl.deadline_s, float)


# --- validation errors name the file and the key -----------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ("[crawl]\nconcurrency = 0", "crawl.concurrency", "must be >= 1"),
        ("[crawl]\nconcurrency = '8'", "crawl.concurrency", "expected an integer, got a string"),
        ("[crawl]\nconcurrency = 8.0", "crawl.concurrency", "expected an integer, got a float"),
        ("[crawl]\nconcurrency = true", "crawl.concurrency", "expected an integer, got a boolean"),
        ("[crawl]\nper_region_concurrency = 0", "crawl.per_region_concurrency", "must be >= 1"),
        ("[crawl]\nrate_limit_per_s = -1", "crawl.rate_limit_per_s", "must be >= 0"),
        ("[crawl]\nrate_limit_per_s = inf", "crawl.rate_limit_per_s", "finite"),
        ("[crawl]\nrate_limit_per_s = nan", "crawl.rate_limit_per_s", "finite"),
        ("[crawl]\nrate_limit_per_s = false", "crawl.rate_limit_per_s", "expected a float"),
        ("[crawl]\nstrategy = 'all'", "crawl.strategy", "must be one of 'single', 'batch'"),
        ("[crawl]\nstrategy = 1", "crawl.strategy", "must be one of"),
        ("[crawl]\ndeadline_s = -0.5", "crawl.deadline_s", "must be >= 0"),
        ("[retry]\nmax_attempts = 0", "retry.max_attempts", "must be >= 1"),
        ("[retry]\ninitial_backoff_s = 0", "retry.initial_backoff_s", "must be > 0"),
        ("[retry]\nmax_backoff_s = 0", "retry.max_backoff_s", "must be > 0"),
        ("[retry]\ninitial_backoff_s = 61", "retry.initial_backoff_s", "<= retry.max_backoff_s"),
        ("[api]\ntimeout_s = 0", "api.timeout_s", "must be > 0"),
        ("[api]\ntimeout_s = '10'", "api.timeout_s", "expected a float, got a string"),
        ("[api]\nnaive_time_zone = 'Mars/Olympus'", "api.naive_time_zone", "unknown time zone"),
        ("[api]\nnaive_time_zone = '../etc'", "api.naive_time_zone", "unknown time zone"),
        ("[api]\nsignature_version = 'JDCLOUD4'", "api.signature_version", "must be one of"),
        ("[api]\nsign_date_nonce = 1", "api.sign_date_nonce", "expected a boolean"),
        ("[api]\nmax_response_bytes = 0", "api.max_response_bytes", "must be >= 1"),
        ("[api]\naccess_key_env = 'MY KEY'", "api.access_key_env", "NAME of an environment"),
        ("[api]\nsecret_key_env = '1SK'", "api.secret_key_env", "NAME of an environment"),
        ("[api]\nendpoint = 'vm.jdcloud-api.com'", "api.endpoint", "must be an https:// URL"),
        ("[api]\nendpoint = 'ftp://vm.jdcloud-api.com'", "api.endpoint", "https:// URL"),
        ("[api]\nendpoint = 'https://h:99999'", "api.endpoint", "not a valid URL"),
        ("[api]\nendpoint = 'https://u:p@h'", "api.endpoint", "user name or password"),
        ("[api]\nendpoint = 'https://h/v1'", "api.endpoint", "no path, query or fragment"),
        ("[api]\nendpoint = 'https://h?x=1'", "api.endpoint", "no path, query or fragment"),
        ("[database]\nurl = ''", "database.url", "must not be empty"),
        ("[database]\nurl = 5", "database.url", "expected a string, got an integer"),
        ("[targets]\nfile = ''", "targets.file", "must not be empty"),
        ("[targets]\nfile = ['a.csv']", "targets.file", "expected a string, got an array"),
        (
            "[crawl]\nconcurency = 8",
            "crawl.concurency",
            "unknown key (did you mean 'concurrency'?)",
        ),
        ("[crawl]\n[crawl.extra]\nx = 1", "crawl.extra", "unknown key"),
        ("[crawler]\nconcurrency = 8", "crawler", "unknown section (did you mean 'crawl'?)"),
        ("concurrency = 8", "concurrency", "unknown key"),
        ("crawl = 8", "crawl", "expected a table ([crawl]), got an integer"),
    ],
)
def test_invalid_values_name_the_file_and_the_key(
    tmp_path: Path, toml: str, key: str, problem: str
) -> None:
    path = _write(tmp_path, toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ")
    assert problem in message


def test_an_env_key_that_is_not_a_name_is_not_echoed(tmp_path: Path) -> None:
    path = _write(tmp_path, "[api]\nsecret_key_env = 'abc/DEF+ghi='")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "abc/DEF+ghi=" not in str(caught.value)


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "[crawl]\nconcurrency = 8\nstrategy = single\n")
    with pytest.raises(ConfigError, match=r"crawler\.toml: invalid TOML: .*line 3"):
        load_config(path)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read the config file"):
        load_config(tmp_path / "nope.toml")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8"):
        load_config(path)


def test_replace_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"^crawl\.concurrency: must be >= 1, got 0$"):
        dataclasses.replace(CrawlConfig(), concurrency=0)


# --- endpoint: https, or http for loopback and VPC endpoints -----------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:8080",
        "http://127.10.0.1",
        "http://[::1]:8080",
        "http://localhost:8080",
        "http://vm.internal.cn-north-1.jdcloud-api.com",
        "https://vm.jdcloud-api.com",
        "https://vm.jdcloud-api.com:8443/",
    ],
)
def test_endpoints_allowed(tmp_path: Path, endpoint: str) -> None:
    config = load_config(_write(tmp_path, f"[api]\nendpoint = '{endpoint}'"))
    assert config.api.endpoint == endpoint.rstrip("/")


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://vm.jdcloud-api.com",
        "http://example.com",
        "http://10.0.0.1",
        "http://127.0.0.1.nip.io",
        "http://vm.internal.cn-north-1.jdcloud-api.com.evil.example",
        "http://internal.cn-north-1.jdcloud-api.com",
    ],
)
def test_plain_http_is_refused_for_other_hosts(tmp_path: Path, endpoint: str) -> None:
    path = _write(tmp_path, f"[api]\nendpoint = '{endpoint}'")
    with pytest.raises(ConfigError, match=r"api\.endpoint: http:// is allowed only for loopback"):
        load_config(path)


# --- paths are relative to the config file -----------------------------------------------------


def test_relative_paths_are_resolved_against_the_config_directory(tmp_path: Path) -> None:
    path = _write(tmp_path, "[database]\nurl = 'data/inv.db'\n[targets]\nfile = 'in/targets.csv'")
    config = load_config(path)
    assert config.database.url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'inv.db'}"
    assert config.targets.file == str(tmp_path / "in" / "targets.csv")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite+aiosqlite:///inv.db", "sqlite+aiosqlite:///{dir}/inv.db"),
        ("sqlite+aiosqlite:///inv.db?timeout=5", "sqlite+aiosqlite:///{dir}/inv.db?timeout=5"),
        ("sqlite+aiosqlite:////abs/inv.db", "sqlite+aiosqlite:////abs/inv.db"),
        ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
        ("sqlite+aiosqlite://", "sqlite+aiosqlite://"),
        ("/abs/inv.db", "sqlite+aiosqlite:////abs/inv.db"),
        ("postgresql+psycopg://h/db", "postgresql+psycopg://h/db"),
    ],
)
def test_database_urls_in_a_file(tmp_path: Path, url: str, expected: str) -> None:
    config = load_config(_write(tmp_path, f"[database]\nurl = '{url}'"))
    assert config.database.url == expected.format(dir=tmp_path)


def test_stdin_as_targets_file_is_kept(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "[targets]\nfile = '-'")).targets.file == "-"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("inventory.db", "sqlite+aiosqlite:///inventory.db"),
        ("/var/lib/inventory.db", "sqlite+aiosqlite:////var/lib/inventory.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u:pw@h:5433/db", "postgresql+psycopg://u:pw@h:5433/db"),
    ],
)
def test_database_url(value: str, expected: str) -> None:
    assert database_url(value) == expected
    assert DatabaseConfig(value).url == expected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@h/db",
        "postgresql+asyncpg://u:pw@h/db",
        "sqlite:///x.db",
        "mysql://u:pw@h/db",
    ],
)
def test_a_database_url_the_store_cannot_open_is_a_config_error(tmp_path: Path, url: str) -> None:
    scheme = url.split("://")[0]
    with pytest.raises(ConfigError, match=rf"database\.url: the scheme {re.escape(scheme)}://"):
        database_url(url)
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, f"[database]\nurl = '{url}'"))
    assert "pw" not in str(caught.value)


def test_database_url_refuses_an_empty_value() -> None:
    with pytest.raises(ConfigError, match=r"^database\.url: must not be empty$"):
        database_url(" ")


# --- credentials come from the environment -----------------------------------------------------


def test_credentials_are_read_from_the_named_variables() -> None:
    api = ApiConfig(access_key_env="MY_AK", secret_key_env="MY_SK")
    credentials = resolve_credentials(api, {"MY_AK": "AK1", "MY_SK": " SECRET1\n"})
    assert credentials == Credentials("AK1", "SECRET1")
    assert "SECRET1" not in repr(credentials)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"JDCLOUD_SECRET_KEY": "s3cr3t"},
            "JDCLOUD_ACCESS_KEY (named by api.access_key_env) is not set",
        ),
        (
            {"JDCLOUD_ACCESS_KEY": "AK", "JDCLOUD_SECRET_KEY": ""},
            "JDCLOUD_SECRET_KEY (named by api.secret_key_env) is empty",
        ),
        (
            {"JDCLOUD_ACCESS_KEY": "AK", "JDCLOUD_SECRET_KEY": "  "},
            "JDCLOUD_SECRET_KEY (named by api.secret_key_env) is empty",
        ),
    ],
)
def test_a_missing_or_empty_variable_is_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_credentials(ApiConfig(), environ)
    assert message in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_the_environment_defaults_to_os_environ() -> None:
    api = ApiConfig(access_key_env="CRAWLER_TEST_SURELY_UNSET_AK")
    with pytest.raises(ConfigError, match="CRAWLER_TEST_SURELY_UNSET_AK"):
        resolve_credentials(api)


def test_config_sections_are_frozen() -> None:
    config: Any = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.crawl.concurrency = 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[crawl]\nmax_missing_fraction = 1.5", r"crawl\.max_missing_fraction: must be <= 1"),
        ("[crawl]\nmax_missing_fraction = -0.1", r"crawl\.max_missing_fraction: must be >= 0"),
        ("[crawl]\nmissing_guard_min = -1", r"crawl\.missing_guard_min: must be >= 0"),
        ("[retention]\nkeep_runs = -1", r"retention\.keep_runs: must be >= 0"),
        ("[retention]\nkeep = 3", r"retention\.keep: unknown key \(did you mean 'keep_runs'\?\)"),
    ],
)
def test_guard_and_retention_keys_are_checked(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))
