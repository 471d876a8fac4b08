"""The README's cron recipe, run as cron would: `env -i`, cron's minimal PATH, /bin/sh.

Its script and crontab line are taken from the README verbatim (only `/srv/crawler` becomes a
temporary folder), then run three nights against the simulator: a healthy night, a night cut short
by the deadline, and the next night, which finishes the cut-short run.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import SimulatorFactory

README = Path(__file__).resolve().parents[1] / "README.md"
CRON_ENV = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", "LOGNAME": "crawler"}


def cron_recipe() -> tuple[str, str, str]:
    """The README's nightly.sh, its credentials.env example and its crontab command."""
    section = README.read_text(encoding="utf-8").split("### Running it from cron", 1)[1]
    script = re.search(r"```sh\n(#!/bin/sh\n# nightly\.sh.*?)```", section, re.DOTALL)
    credentials = re.search(r"\n((?:    JDCLOUD_[A-Z_]+=\S+\n)+)", section)
    crontab = re.search(r"\n    (\d+ \d+ \* \* \*)  (\S.*)\n", section)
    assert script and credentials and crontab, "the README's cron recipe has changed shape"
    lines = credentials.group(1).splitlines()
    return script.group(1), "\n".join(line.strip() for line in lines) + "\n", crontab.group(2)


def night(home: Path, command: str) -> int:
    """Run the crontab command as cron does: a shell with nothing but cron's environment."""
    crontab_command = command.replace("/srv/crawler", str(home))
    result = subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in CRON_ENV.items()), f"HOME={home}",
         "/bin/sh", "-c", crontab_command],
        cwd="/", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # Cron mails whatever the job prints; the recipe prints nothing.
    assert result.stdout == "" and result.stderr == "", result
    return result.returncode


def write_config(home: Path, url: str, *, concurrency: int, deadline_s: float) -> None:
    (home / "crawler.toml").write_text(
        f'[api]\nendpoint = "{url}"\n'
        f"[crawl]\nconcurrency = {concurrency}\nper_region_concurrency = {concurrency}\n"
        f"deadline_s = {deadline_s}\n"
        "[retry]\ninitial_backoff_s = 0.01\nmax_backoff_s = 0.05\n"
        '[database]\nurl = "inventory.db"\n',
        encoding="utf-8",
    )


def test_the_readmes_cron_recipe_runs_under_cron_and_finishes_a_cut_short_night(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    script, credentials, command = cron_recipe()
    server = simulator(
        images_per_region=80, latency_ms=20, regions=("cn-north-1", "cn-east-2", "cn-south-1"),
        access_key="your-access-key-id", secret_key="your-secret-key",
    )  # fmt: skip
    home = tmp_path / "srv-crawler"
    (home / ".venv" / "bin").mkdir(parents=True)
    (home / ".venv" / "bin" / "crawler").symlink_to(Path(sys.prefix) / "bin" / "crawler")
    (home / "nightly.sh").write_text(script, encoding="utf-8")
    (home / "nightly.sh").chmod(0o755)
    (home / "credentials.env").write_text(credentials, encoding="utf-8")
    (home / "credentials.env").chmod(0o600)
    db = home / "inventory.db"

    write_config(home, server.url, concurrency=16, deadline_s=3000)
    assert night(home, command) == 0
    write_config(home, server.url, concurrency=1, deadline_s=0.5)  # a night that runs late
    assert night(home, command) == 1
    with sqlite3.connect(db) as connection:
        cut_short = connection.execute("SELECT run_id, status FROM crawl_runs").fetchall()
    assert cut_short == [(1, "succeeded"), (2, "interrupted")]
    write_config(home, server.url, concurrency=16, deadline_s=3000)
    assert night(home, command) == 0

    with sqlite3.connect(db) as connection:
        runs = connection.execute("SELECT run_id, status, targets_total FROM crawl_runs").fetchall()
        images = connection.execute("SELECT count(*) FROM images").fetchone()[0]
    listed = runs[0][2]  # the private and shared images of three regions
    assert listed > 50
    assert runs == [(1, "succeeded", listed), (2, "succeeded", listed)]  # night 3 finished run 2
    assert images == listed
    records = [json.loads(line) for line in (home / "crawl.log").read_text().splitlines()]
    finished = [record for record in records if record.get("event") == "run_finished"]
    assert [(r["run_id"], r["status"], r["exit_code"], r["resumed"]) for r in finished] == [
        (1, "succeeded", 0, False), (2, "interrupted", 1, False), (2, "succeeded", 0, True),
    ]  # fmt: skip
    assert sum(f"discovered {listed} images" in str(r["message"]) for r in records) == 3
    summary = (home / "last-summary.txt").read_text().splitlines()
    assert len(summary) == 1 and summary[0].startswith(f"run 2 succeeded: {listed} fetched")
    metrics = (home / "metrics" / "crawler.prom").read_text()
    assert "crawler_last_run_exit_code 0\n" in metrics and "crawler_last_run_id 2\n" in metrics
    assert os.listdir(home / "metrics") == ["crawler.prom"]
