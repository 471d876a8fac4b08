"""Issue 2's acceptance: the OFFICIAL JD Cloud SDK talks to `crawler simulate` unmodified.

Starts the simulator on 127.0.0.1 (with the project's interpreter), then, with the official
SDK's `VmClient` and `DescribeImageRequest` (credential = the simulator's access and secret key,
endpoint 127.0.0.1:PORT, scheme http, a quiet logger):

1. fetches `--count` of the simulator's targets: each must come back with `result.image` set to
   the image asked for, and no error;
2. sends one request signed with a wrong secret: it must come back as the gateway's 401
   `ACCESS_ERROR`.

The SDK does not expose HTTP statuses, so the simulator's own counters (`/_simulator/stats`) are
shown as well. `jdcloud_sdk` is not a project dependency; run this from a scratch venv:

    python3 -m venv /tmp/sdkvenv && /tmp/sdkvenv/bin/pip install jdcloud-sdk==1.6.354
    /tmp/sdkvenv/bin/python benchmarks/official_sdk_check.py

Without `jdcloud_sdk` it prints why and exits 0 (skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    ACCESS_KEY,
    SimulatorProcess,
    credentials_env,
    new_secret,
    project_python,
    read_targets,
)

SDK_VERSION = "1.6.354"


def sdk_client(endpoint: str, access_key: str, secret_key: str) -> Any:
    """A `VmClient` for the simulator: http, the given credential, a logger that prints nothing."""
    from jdcloud_sdk.core.config import Config
    from jdcloud_sdk.core.credential import Credential
    from jdcloud_sdk.core.logger import Logger
    from jdcloud_sdk.services.vm.client.VmClient import VmClient

    class QuietLogger(Logger):  # type: ignore[misc]  # the SDK is untyped
        """The default logger prints ~19 lines per request, secrets' derivatives included."""

        def log(self, level: int, message: object) -> None:
            pass

    config = Config(endpoint, scheme="http", timeout=10)
    return VmClient(Credential(access_key, secret_key), config, QuietLogger(0))


def describe_image(client: Any, region_id: str, image_id: str) -> Any:
    """One `DescribeImageRequest` through the SDK; returns its `JDCloudResponse`."""
    from jdcloud_sdk.services.vm.apis.DescribeImageRequest import (
        DescribeImageParameters,
        DescribeImageRequest,
    )

    return client.send(DescribeImageRequest(DescribeImageParameters(region_id, image_id)))


def check_fetches(client: Any, targets: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Fetch each target; a check passes when result.image is that image and error is None."""
    checks = []
    for region_id, image_id in targets:
        resp = describe_image(client, region_id, image_id)
        image = (resp.result or {}).get("image") if resp.error is None else None
        got = image.get("imageId") if isinstance(image, dict) else None
        checks.append(
            {
                "bench": "official_sdk_check",
                "kind": "fetch",
                "region_id": region_id,
                "image_id": image_id,
                "ok": got == image_id and resp.error is None,
                "result_image_id": got,
                "name": image.get("name") if image else None,
                "request_id": resp.request_id,
                "error": _error(resp),
            }
        )
    return checks


def check_wrong_secret(endpoint: str, target: tuple[str, str]) -> dict[str, Any]:
    """A request signed with a wrong secret must get the gateway's 401 ACCESS_ERROR."""
    client = sdk_client(endpoint, ACCESS_KEY, new_secret())
    resp = describe_image(client, *target)
    error = _error(resp)
    ok = error is not None and error["code"] == 401 and error["status"] == "ACCESS_ERROR"
    return {
        "bench": "official_sdk_check", "kind": "wrong_secret", "region_id": target[0],
        "image_id": target[1], "ok": ok and resp.result is None, "error": error,
        "request_id": resp.request_id,
    }  # fmt: skip


def _error(resp: Any) -> dict[str, Any] | None:
    if resp.error is None:
        return None
    return {"code": resp.error.code, "status": resp.error.status, "message": resp.error.message}


def simulator_stats(url: str) -> dict[str, Any]:
    """The simulator's counters (requests by HTTP status, auth failures)."""
    with urllib.request.urlopen(f"{url}/_simulator/stats", timeout=10) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
    return {key: stats[key] for key in ("requests", "by_status", "auth_failures")}


def print_report(fetches: Sequence[dict[str, Any]], wrong: dict[str, Any], stats: Any) -> None:
    """The human table and verdicts."""
    print()
    print(f"{'region':<12} {'image id':<16} {'result.image':<16} {'name':<34} ok")
    print("-" * 84)
    for check in fetches:
        name = (check["name"] or "")[:34]
        result = check["result_image_id"] or f"error {check['error']}"
        print(
            f"{check['region_id']:<12} {check['image_id']:<16} {result:<16} {name:<34} "
            f"{'yes' if check['ok'] else 'NO'}"
        )
    passed = sum(check["ok"] for check in fetches)
    print(f"\n{passed} of {len(fetches)} fetched through the official SDK with result.image set")
    print(f"wrong secret -> {wrong['error']}: {'as expected' if wrong['ok'] else 'UNEXPECTED'}")
    print(f"simulator counters: {json.dumps(stats)}")


def sdk_version() -> str | None:
    """The installed jdcloud_sdk version, or None when it cannot be imported."""
    try:
        from jdcloud_sdk.core.version import VERSION  # noqa: F401 - import check
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jdcloud-sdk")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        description="The official jdcloud-sdk against `crawler simulate` on 127.0.0.1 "
        "(run with an interpreter that has jdcloud-sdk installed; skipped otherwise)."
    )
    parser.add_argument("--count", type=int, default=20, help="targets to fetch (20)")
    parser.add_argument("--python", default=project_python(), help="interpreter for the crawler")
    args = parser.parse_args(argv)
    installed = sdk_version()
    if installed is None:
        print(
            "SKIPPED: jdcloud_sdk is not importable by this interpreter. It is not a project "
            "dependency; run:\n  python3 -m venv /tmp/sdkvenv && /tmp/sdkvenv/bin/pip install "
            f"jdcloud-sdk=={SDK_VERSION}\n"
            "  /tmp/sdkvenv/bin/python benchmarks/official_sdk_check.py"
        )
        return 0
    print(f"# jdcloud-sdk {installed} under Python {sys.version.split()[0]}")
    secret = new_secret()
    with tempfile.TemporaryDirectory(prefix="sdk-check-") as tmp:
        targets_path = Path(tmp) / "targets.csv"
        sim_args = ["--images-per-region", "50", "--write-targets", str(targets_path)]
        env = credentials_env(secret)
        with SimulatorProcess(sim_args, env, start_timeout_s=120, python=args.python) as sim:
            endpoint = sim.url.removeprefix("http://")
            print(f"# simulator {sim.url}; SDK endpoint {endpoint}, scheme http")
            targets = read_targets(targets_path)[: args.count]
            fetches = check_fetches(sdk_client(endpoint, ACCESS_KEY, secret), targets)
            wrong = check_wrong_secret(endpoint, targets[0])
            stats = simulator_stats(sim.url)
    for line in [*fetches, wrong]:
        print(json.dumps(line, ensure_ascii=False))
    print_report(fetches, wrong, stats)
    all_ok = all(check["ok"] for check in fetches) and wrong["ok"] and len(fetches) == args.count
    print(f"\nissue 2 acceptance: {'PASSED' if all_ok else 'FAILED'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
