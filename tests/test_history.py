"""History through the real CLI: diff, history, the mass-deletion guard, accept and prune.

The simulator on loopback is changed between crawls (`set_image`, `delete_image`); what the crawler
says changed is checked against a brute-force comparison of the inventory tables themselves,
snapshotted after each run, with none of the store's history code.

Every test runs on a new SQLite file and on a new PostgreSQL database (the `db_url` fixture), except
the one that upgrades a first-release database: that release knew SQLite only.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import io
import json
import os
import random
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from crawler.cli import Io, main
from crawler.models import JsonObject
from crawler.simulator import Simulator
from crawler.store import content, migrate, run_changes
from crawler.store.content import canonical
from crawler.store.migrate import sync_url
from tests.conftest import (
    ACCESS_KEY_ENV,
    SECRET_KEY_ENV,
    SimulatorFactory,
    crawl_environ,
    write_config,
)
from tests.test_cli import REPO, Recorder, crawl, targets_file
from tests.test_store_dialects import cookbook_pairs

# The crawler's own columns: `raw` and `raw_digest` are what the rows came from, not the rows.
BOOKKEEPING = {
    "first_seen_at", "last_seen_at", "last_run_id", "missing_since", "raw", "raw_digest",
    "answer_digest",
}  # fmt: skip
KEYS = {
    "images": (),
    "disks": ("slot", "position"),
    "attachments": ("slot", "position", "seq"),
    "tags": ("slot", "position"),
}

# --- brute force: the inventory tables as they are after a run ----------------------------------

Snapshot = dict[tuple[str, str], tuple[str, dict[str, Any]]]  # key -> (state, path -> value)


def query(db: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_engine(sync_url(db), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def snapshot(db: str) -> Snapshot:
    """Every image: `present` or `missing`, and every non-NULL field by its diff path."""
    fields: dict[tuple[str, str], dict[str, Any]] = {}
    for table, key in KEYS.items():
        for row in query(db, f"SELECT * FROM {table}"):
            image = fields.setdefault((row.pop("region_id"), row.pop("image_id")), {})
            where = ":".join(str(row.pop(name)) for name in key)
            if table == "tags":
                image[f"tags[{where}].{row['key']}"] = row["value"]
                continue
            for name, value in row.items():
                if value is not None and name not in BOOKKEEPING and name != "seq":
                    image[f"{table}[{where}].{name}" if key else name] = value
    states = {
        (row["region_id"], row["image_id"]): row["missing_since"] is None
        for row in query(db, "SELECT region_id, image_id, missing_since FROM images")
    }
    return {key: ("present" if states[key] else "missing", value) for key, value in fields.items()}


def brute_diff(before: Snapshot, after: Snapshot, from_run: int | None, to_run: int) -> list[Any]:
    found = []
    for key in sorted(before.keys() | after.keys()):
        old_state, old = before.get(key, ("absent", {}))
        new_state, new = after.get(key, ("absent", {}))
        fields = []
        if old_state != "present" and new_state == "present":
            change = "added" if old_state == "absent" else "restored"
        elif old_state == "present" and new_state != "present":
            change = "removed"
        elif old_state == "present" and old != new:
            change = "changed"
            for path in sorted(old.keys() | new.keys()):
                if old.get(path) != new.get(path):
                    fields.append((path, old.get(path), new.get(path)))
        else:
            continue
        found.append((from_run, to_run, *key, change, sorted(fields)))
    return found


# --- the CLI ---------------------------------------------------------------------------------


def run_cli(*args: str, expect: int = 0) -> str:
    recorder = Recorder()
    code = main(list(args), recorder.io())
    assert code == expect, recorder.stderr.getvalue()
    return recorder.stdout.getvalue()


def cli_diff(db: str, *args: str) -> list[Any]:
    out = run_cli("diff", "--db", db, "--format", "jsonl", *args)
    found = []
    for line in out.splitlines():
        item = json.loads(line)
        fields = sorted((f["path"], f["from"], f["to"]) for f in item["fields"])
        found.append(
            (item["from_run"], item["to_run"], item["region_id"], item["image_id"], item["change"],
             fields)
        )  # fmt: skip
    return sorted(found, key=lambda entry: (entry[2], entry[3]))


def cli_history(db: str, region_id: str, image_id: str) -> list[dict[str, Any]]:
    out = run_cli("history", region_id, image_id, "--db", db, "--format", "jsonl")
    return [json.loads(line) for line in out.splitlines()]


# --- random changes to the simulator's inventory -------------------------------------------------


def cloud_disks(image: JsonObject) -> Iterator[JsonObject]:
    disks = [image.get("systemDisk"), *(image.get("dataDisks") or [])]
    for disk in disks:
        if isinstance(disk, dict) and isinstance(disk.get("cloudDisk"), dict):
            yield disk["cloudDisk"]


def mutate(rng: random.Random, image: JsonObject) -> JsonObject:
    """One random change of the kinds the issue names (or none that matters: keys reordered)."""
    image = copy.deepcopy(image)
    kind = rng.choice(["field", "disk_field", "add_disk", "drop_disk", "tag", "reorder"])
    disks = list(cloud_disks(image))
    if kind == "field":
        name = rng.choice(["name", "desc", "status", "osVersion", "sizeMB"])
        image[name] = rng.randrange(1, 10**6) if name == "sizeMB" else f"v{rng.randrange(10**6)}"
    elif kind == "disk_field" and disks:
        disk = rng.choice(disks)
        disk["diskType"] = rng.choice(["ssd", "premium-hdd", "ssd.gp1", "hdd.std1", "ssd.io1"])
        disk["diskSizeGB"] = rng.randrange(20, 2000)
    elif kind == "add_disk":
        data = image.get("dataDisks") or []
        new = {"diskCategory": "cloud", "deviceName": f"vd{len(data) + 2}"}
        size_gb = rng.randrange(20, 500)
        new["cloudDisk"] = {"diskId": f"vol-{rng.randrange(10**9)}", "diskType": "ssd",
                            "diskSizeGB": size_gb, "tags": [], "attachments": []}  # fmt: skip
        image["dataDisks"] = [*data, new]
    elif kind == "drop_disk" and image.get("dataDisks"):
        image["dataDisks"] = image["dataDisks"][:-1]
    elif kind == "tag" and disks:
        disk = rng.choice(disks)
        tags = [tag for tag in disk.get("tags") or [] if rng.random() < 0.5]
        tags.append({"key": rng.choice(["env", "team", "owner"]), "value": f"t{rng.randrange(99)}"})
        disk["tags"] = tags
    else:  # key order only: must not count as a change
        image = dict(reversed(list(image.items())))
    return image


def step(rng: random.Random, sim: Simulator, originals: dict[tuple[str, str], JsonObject]) -> None:
    """Between two crawls: edit, delete and restore a few images of the simulator."""
    for (region, image_id), image in originals.items():
        draw = rng.random()
        present = image_id in sim._by_id[region]
        if present and draw < 0.25:
            originals[(region, image_id)] = mutate(rng, sim._by_id[region][image_id])
            sim.set_image(region, originals[(region, image_id)])
        elif present and draw < 0.35:
            sim.delete_image(region, image_id)
        elif not present and draw < 0.5:
            sim.set_image(region, image)  # restored, as it was when it went


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_diff_and_history_agree_with_snapshots_of_every_run(
    simulator: SimulatorFactory, tmp_path: Path, db_url: str, seed: int
) -> None:
    server = simulator(regions=("cn-north-1", "cn-east-2"), images_per_region=12, seed=seed)
    config = write_config(tmp_path, server.url, db=tmp_path / "unused.db", database_url=db_url)
    targets = targets_file(tmp_path, server.sim)
    originals = {
        (region, str(image["imageId"])): image
        for region, images in server.sim.inventory.images.items()
        for image in images
    }
    rng = random.Random(seed)
    for region, image_id in rng.sample(sorted(originals), 4):  # to be added by a later run
        server.sim.delete_image(region, image_id)
    snapshots: dict[int, Snapshot] = {}
    for run_id in range(1, 6):
        if run_id > 1:
            step(rng, server.sim, originals)
        assert crawl(config, "--targets", str(targets)) == 0
        snapshots[run_id] = snapshot(db_url)

    assert cli_diff(db_url, "--to", "1") == brute_diff({}, snapshots[1], None, 1)  # the baseline
    for a in snapshots:
        for b in snapshots:
            if a != b:
                expected = brute_diff(snapshots[a], snapshots[b], a, b)
                assert cli_diff(db_url, "--from", str(a), "--to", str(b)) == expected, (a, b)
    assert cli_diff(db_url) == brute_diff(snapshots[4], snapshots[5], 4, 5)  # the default pair

    for region, image_id in originals:
        versions = cli_history(db_url, region, image_id)
        for run_id in snapshots:
            valid = [
                v for v in versions
                if v["valid_from_run"] <= run_id and (v["valid_to_run"] or 99) > run_id
            ]  # fmt: skip
            state = snapshots[run_id].get((region, image_id), ("absent", {}))[0]
            assert [v["status"] for v in valid] == ([] if state == "absent" else [state])
            before = snapshots.get(run_id - 1, {})
            change = brute_diff(before, snapshots[run_id], None, run_id)
            mine = [c for c in change if (c[2], c[3]) == (region, image_id)]
            began = [v for v in versions if v["valid_from_run"] == run_id]
            assert [v["change"] for v in began] == [c[4] for c in mine]
            if mine and mine[0][4] == "changed":
                fields = sorted((f["path"], f["from"], f["to"]) for f in began[0]["fields"])
                assert fields == mine[0][5]


# --- the guard --------------------------------------------------------------------------------

OTHER_KEY, OTHER_SECRET = "OTHERAK", "other-account-secret"


def other_account() -> tuple[Recorder, Io]:
    recorder = Recorder()
    environ = {ACCESS_KEY_ENV: OTHER_KEY, SECRET_KEY_ENV: OTHER_SECRET}
    return recorder, Io(environ=environ, stdin=io.StringIO(), stdout=recorder.stdout,
                        stderr=recorder.stderr)  # fmt: skip


def test_the_wrong_accounts_credentials_end_held_with_exit_4_and_accept_applies_them(
    simulator: SimulatorFactory, tmp_path: Path, db_url: str
) -> None:
    server = simulator(images_per_region=60, other_account_keys=((OTHER_KEY, OTHER_SECRET),))
    private = {
        str(image["imageId"])
        for images in server.sim.inventory.images.values()
        for image in images
        if image["imageSource"] == "private"
    }
    assert len(private) >= 50  # over missing_guard_min, and far over 20 % of 240
    config = write_config(tmp_path, server.url, db=tmp_path / "unused.db", database_url=db_url)
    targets = targets_file(tmp_path, server.sim)
    assert crawl(config, "--targets", str(targets)) == 0

    recorder, other = other_account()
    args = ["crawl", "--config", str(config), "--no-progress", "--targets", str(targets)]
    assert main(args, other) == 4, recorder.stderr.getvalue()
    summary = recorder.stdout.getvalue()
    assert f"run 2 held: {240 - len(private)} fetched, {len(private)} missing" in summary
    assert "crawler accept 2" in summary and "--accept-missing" in summary
    assert "crawler accept 2" in recorder.stderr.getvalue()  # the log says it too
    assert query(db_url, "SELECT COUNT(*) AS n FROM images WHERE missing_since IS NOT NULL") == [
        {"n": 0}
    ]
    outcomes = query(db_url, "SELECT outcome, COUNT(*) AS n FROM crawl_results WHERE run_id = 2"
                         " GROUP BY outcome ORDER BY outcome")  # fmt: skip
    assert outcomes == [
        {"outcome": "fetched", "n": 240 - len(private)},
        {"outcome": "missing", "n": len(private)},
    ]
    assert cli_diff(db_url, "--from", "1", "--to", "2") == []  # held: nothing removed

    out = run_cli("accept", "2", "--db", db_url)
    assert f"run 2 succeeded: {len(private)} images marked missing" in out
    missing = query(db_url, "SELECT image_id FROM images WHERE missing_since IS NOT NULL")
    assert {row["image_id"] for row in missing} == private
    removed = cli_diff(db_url, "--from", "1", "--to", "2")
    assert {entry[3] for entry in removed} == private
    assert {entry[4] for entry in removed} == {"removed"}
    run_cli("accept", "2", "--db", db_url, expect=2)  # not held any more


@pytest.mark.parametrize(
    ("extra", "flags"), [("max_missing_fraction = 1", []), ("", ["--accept-missing"])]
)
def test_accept_missing_and_a_fraction_of_1_let_the_marks_through(
    simulator: SimulatorFactory, tmp_path: Path, db_url: str, extra: str, flags: list[str]
) -> None:
    server = simulator(images_per_region=60, other_account_keys=((OTHER_KEY, OTHER_SECRET),))
    config = write_config(
        tmp_path, server.url, db=tmp_path / "unused.db", database_url=db_url, extra_crawl=extra
    )
    targets = targets_file(tmp_path, server.sim)
    assert crawl(config, "--targets", str(targets)) == 0
    recorder, other = other_account()
    args = ["crawl", "--config", str(config), "--no-progress", "--targets", str(targets)]
    assert main([*args, *flags], other) == 0, recorder.stderr.getvalue()
    marked = query(db_url, "SELECT COUNT(*) AS n FROM images WHERE missing_since IS NOT NULL")
    assert marked[0]["n"] > 50


# --- retention --------------------------------------------------------------------------------


def test_retention_keeps_the_newest_runs_rows_and_all_of_the_history(
    simulator: SimulatorFactory, tmp_path: Path, db_url: str
) -> None:
    server = simulator(regions=("cn-north-1",), images_per_region=10)
    config = write_config(tmp_path, server.url, db=tmp_path / "unused.db", database_url=db_url)
    config.write_text(config.read_text("utf-8") + "\n[retention]\nkeep_runs = 2\n", "utf-8")
    targets = targets_file(tmp_path, server.sim)
    image = server.sim.inventory.images["cn-north-1"][0]
    for run_id in range(1, 5):
        server.sim.set_image("cn-north-1", {**image, "name": f"name-{run_id}"})
        assert crawl(config, "--targets", str(targets)) == 0
    runs = query(db_url, "SELECT DISTINCT run_id FROM crawl_results ORDER BY run_id")
    assert [row["run_id"] for row in runs] == [3, 4]
    # A finished run's targets are its results: on SQLite crawl_targets keeps those of unfinished
    # runs only; on PostgreSQL a finished run's rows stay (who claimed and completed each target)
    # until retention drops them with its results.
    kept_targets = query(db_url, "SELECT DISTINCT run_id FROM crawl_targets ORDER BY run_id")
    expected_targets = [3, 4] if db_url.startswith("postgresql") else []
    assert [row["run_id"] for row in kept_targets] == expected_targets
    assert len(query(db_url, "SELECT run_id FROM crawl_runs")) == 4
    history = cli_history(db_url, "cn-north-1", str(image["imageId"]))
    assert [entry["valid_from_run"] for entry in history] == [1, 2, 3, 4]
    assert cli_diff(db_url, "--from", "1", "--to", "2")[0][5] == [("name", "name-1", "name-2")]

    out = run_cli("prune", "--keep-runs", "1", "--vacuum", "--db", db_url)
    assert "pruned runs: 3" in out
    assert query(db_url, "SELECT DISTINCT run_id FROM crawl_results") == [{"run_id": 4}]
    run_cli("prune", "--db", db_url)  # [retention] default 30: nothing more to do


def test_held_and_unfinished_runs_are_never_pruned(
    simulator: SimulatorFactory, tmp_path: Path, db_url: str
) -> None:
    server = simulator(images_per_region=60, other_account_keys=((OTHER_KEY, OTHER_SECRET),))
    config = write_config(tmp_path, server.url, db=tmp_path / "unused.db", database_url=db_url)
    targets = targets_file(tmp_path, server.sim)
    assert crawl(config, "--targets", str(targets)) == 0
    recorder, other = other_account()
    args = ["crawl", "--config", str(config), "--no-progress", "--targets", str(targets)]
    assert main(args, other) == 4, recorder.stderr.getvalue()
    assert crawl(config, "--targets", str(targets)) == 0
    engine = create_engine(sync_url(db_url), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("UPDATE crawl_runs SET status = 'interrupted' WHERE run_id = 1"))
    engine.dispose()
    run_cli("prune", "--keep-runs", "1", "--db", db_url)
    kept = query(db_url, "SELECT DISTINCT run_id FROM crawl_results ORDER BY run_id")
    assert [row["run_id"] for row in kept] == [1, 2, 3]


# --- the image_changes view and the change counts ---------------------------------------------


def test_image_changes_and_the_change_counts_of_a_run(
    simulator: SimulatorFactory, tmp_path: Path, db_url: str
) -> None:
    server = simulator(regions=("cn-north-1",), images_per_region=6)
    config = write_config(tmp_path, server.url, db=tmp_path / "unused.db", database_url=db_url)
    targets = targets_file(tmp_path, server.sim)
    assert crawl(config, "--targets", str(targets)) == 0
    first, second, third, *_ = server.sim.inventory.images["cn-north-1"]
    server.sim.set_image("cn-north-1", {**first, "name": "renamed"})
    server.sim.delete_image("cn-north-1", str(second["imageId"]))
    assert crawl(config, "--targets", str(targets)) == 0
    server.sim.set_image("cn-north-1", second)
    assert crawl(config, "--targets", str(targets)) == 0

    changes = query(db_url, "SELECT run_id, change, COUNT(*) AS n FROM image_changes"
                        " GROUP BY run_id, change ORDER BY run_id, change")  # fmt: skip
    assert [(row["run_id"], row["change"], row["n"]) for row in changes] == [
        (1, "added", 6), (2, "changed", 1), (2, "removed", 1), (3, "restored", 1),
    ]  # fmt: skip
    # Unchanged all along: its first version only.
    versions = query(db_url, "SELECT COUNT(*) AS n FROM image_versions WHERE image_id = :i",
                     i=str(third["imageId"]))  # fmt: skip
    assert versions == [{"n": 1}]

    # The reader behind the metrics file's crawler_last_run_changes.
    counts = asyncio.run(run_changes(db_url, 2))
    assert {str(change): n for change, n in counts.items()} == {
        "added": 0, "removed": 1, "restored": 0, "changed": 1,
    }  # fmt: skip


# --- a database made by the first release (migration 0001 only) --------------------------------

# The last commit before history: its crawler writes databases at revision 0001.
FIRST_RELEASE = "0f361e6"


def first_release(folder: Path, commit: str = FIRST_RELEASE) -> Path:
    """A release's package (the first, unless `commit` names another), from git, with its own
    migrations inside it."""
    archive = subprocess.run(
        ["git", "archive", commit, "crawler", "migrations"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "migrations").rename(folder / "crawler" / "migrations")
    return folder


def old_crawl(release: Path, config: Path, targets: Path) -> None:
    environ = {**os.environ, **crawl_environ(), "PYTHONPATH": str(release)}
    completed = subprocess.run(
        [sys.executable, "-m", "crawler", "crawl", "--config", str(config), "--no-progress",
         "--targets", str(targets)],
        cwd=release, env=environ, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr


def test_a_first_release_database_upgrades_backfills_and_diffs_the_next_run(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """SQLite only: the first release had no PostgreSQL dialect, and its backup is a file copy."""
    release = first_release(tmp_path / "release")
    server = simulator(regions=("cn-north-1", "cn-east-2"), images_per_region=10, seed=5)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    targets = targets_file(tmp_path, server.sim)
    url = f"sqlite+aiosqlite:///{db}"
    images = [(r, image) for r, found in server.sim.inventory.images.items() for image in found]
    (gone_region, gone), (edited_region, edited), (lost_region, lost) = images[:3]
    gone_id, edited_id, lost_id = (str(image["imageId"]) for image in (gone, edited, lost))

    old_crawl(release, config, targets)  # run 1: everything
    server.sim.delete_image(gone_region, gone_id)
    old_crawl(release, config, targets)  # run 2: one image missing
    assert query(url, "SELECT version_num FROM alembic_version") == [{"version_num": "0001"}]
    assert query(url, "SELECT image_id FROM images WHERE missing_since IS NOT NULL") == [
        {"image_id": gone_id}
    ]

    server.sim.set_image(gone_region, gone)  # back
    server.sim.set_image(edited_region, {**edited, "name": "edited-name"})
    server.sim.delete_image(lost_region, lost_id)
    assert crawl(config, "--targets", str(targets)) == 0  # run 3, by this release
    assert list(tmp_path.glob("inventory.db.bak-*"))  # backed up before migrating

    expected = [
        (2, 3, gone_region, gone_id, "restored", []),
        (2, 3, edited_region, edited_id, "changed", [("name", edited["name"], "edited-name")]),
        (2, 3, lost_region, lost_id, "removed", []),
    ]
    assert cli_diff(url, "--from", "2", "--to", "3") == sorted(expected, key=lambda e: e[2:4])
    assert cli_diff(url, "--from", "1", "--to", "2") == [
        (1, 2, gone_region, gone_id, "removed", [])
    ]
    # Every other image was unchanged: its backfilled version is still its only one.
    counts = query(url, "SELECT image_id, COUNT(*) AS n FROM image_versions GROUP BY image_id")
    changed = {gone_id: 3, edited_id: 2, lost_id: 2}
    assert {row["image_id"]: row["n"] for row in counts} == {
        str(image["imageId"]): changed.get(str(image["imageId"]), 1) for _, image in images
    }


# --- a database whose versions are in content form 1 (revision 0004) -----------------------------

# The last commit whose crawler wrote content form 1 (each row an object by column name).
FORM_1_RELEASE = "a3f672a"


def stored_contents(db_url: str) -> dict[tuple[str, int], Any]:
    rows = query(db_url, "SELECT image_id, version, content, content_hash FROM image_versions")
    found = {}
    for row in rows:
        content = json.loads(row["content"]) if isinstance(row["content"], str) else row["content"]
        found[(row["image_id"], row["version"])] = (content, row["content_hash"])
    return found


def test_form_1_versions_are_rewritten_and_an_unchanged_recrawl_writes_none(
    simulator: SimulatorFactory, tmp_path: Path, db_url: str
) -> None:
    release = first_release(tmp_path / "release", FORM_1_RELEASE)
    server = simulator(regions=("cn-north-1", "cn-east-2"), images_per_region=10, seed=8)
    config = write_config(tmp_path, server.url, db=tmp_path / "unused.db", database_url=db_url)
    targets = targets_file(tmp_path, server.sim)
    images = [(r, image) for r, found in server.sim.inventory.images.items() for image in found]
    (gone_region, gone), (edited_region, edited) = images[:2]
    gone_id, edited_id = str(gone["imageId"]), str(edited["imageId"])

    old_crawl(release, config, targets)  # run 1
    server.sim.delete_image(gone_region, gone_id)
    server.sim.set_image(edited_region, {**edited, "name": "edited-name"})
    old_crawl(release, config, targets)  # run 2: one image gone, one renamed
    assert query(db_url, "SELECT version_num FROM alembic_version") == [{"version_num": "0004"}]
    before = stored_contents(db_url)
    assert all(isinstance(content["image"], dict) for content, _ in before.values())  # form 1
    assert len(before) == len(images) + 2

    # Run 3 by this release: the upgrade rewrites every version; nothing changed, so no version
    # (NORMALISER_VERSION moved, so every image is built and compared by its rewritten hash).
    assert crawl(config, "--targets", str(targets)) == 0
    after = stored_contents(db_url)
    assert after.keys() == before.keys()  # no new version
    for key, (stored, digest) in after.items():
        assert isinstance(stored["image"], list), key  # form 2
        assert digest == canonical(stored).hash != before[key][1], key
    assert query(db_url, "SELECT COUNT(*) AS n FROM image_versions WHERE valid_from_run = 3") == [
        {"n": 0}
    ]
    assert cli_diff(db_url, "--from", "2", "--to", "3") == []
    assert cli_diff(db_url, "--from", "1", "--to", "2") == sorted(
        [
            (1, 2, gone_region, gone_id, "removed", []),
            (1, 2, edited_region, edited_id, "changed", [("name", edited["name"], "edited-name")]),
        ],
        key=lambda entry: entry[2:4],
    )
    history = cli_history(db_url, edited_region, edited_id)
    assert [(v["change"], v["fields"]) for v in history] == [
        ("added", []),
        ("changed", [{"path": "name", "from": edited["name"], "to": "edited-name"}]),
    ]

    migrate.downgrade(db_url, "0004")  # and back: form 1, byte for byte the same hashes
    assert stored_contents(db_url) == before


def recipe(db_url: str, title: str) -> str:
    """The cookbook's query `title` in the spelling for `db_url`'s database."""
    for found, sqlite_sql, postgres_sql in cookbook_pairs():
        if found == title:
            return postgres_sql if db_url.startswith("postgresql") else sqlite_sql
    raise AssertionError(f"no cookbook recipe {title!r}")


def test_the_history_recipes_read_the_content_by_position(
    simulator: SimulatorFactory, tmp_path: Path, db_url: str
) -> None:
    server = simulator(regions=("cn-north-1",), images_per_region=12, seed=4)
    config = write_config(tmp_path, server.url, db=tmp_path / "unused.db", database_url=db_url)
    targets = targets_file(tmp_path, server.sim)
    assert crawl(config, "--targets", str(targets)) == 0  # run 1
    as_run_1 = query(db_url, "SELECT image_id, name, status, os_type FROM images")
    image = next(i for i in server.sim.inventory.images["cn-north-1"] if any(cloud_disks(i)))
    edited = copy.deepcopy(image)
    disk = next(cloud_disks(edited))
    old_type = disk["diskType"]
    new_type = disk["diskType"] = "ssd" if old_type == "hdd.std1" else "hdd.std1"
    edited["name"] = "renamed"
    server.sim.set_image("cn-north-1", edited)
    assert crawl(config, "--targets", str(targets)) == 0  # run 2

    at_run_1 = query(db_url, recipe(db_url, "Images as they were at run N"))
    assert sorted(
        (r["image_id"], r["name"], r["image_status"], r["os_type"]) for r in at_run_1
    ) == (sorted((r["image_id"], r["name"], r["status"], r["os_type"]) for r in as_run_1))
    assert {r["image_id"]: r["name"] for r in query(db_url, "SELECT * FROM images")}[
        str(image["imageId"])
    ] == "renamed"
    changes = query(db_url, recipe(db_url, "When a disk's type changed"))
    slots = [("system:0", edited.get("systemDisk"))]
    slots += [(f"data:{n}", data) for n, data in enumerate(edited.get("dataDisks") or [])]
    first_disk = next(key for key, d in slots if isinstance(d, dict) and d.get("cloudDisk") is disk)
    assert [
        (r["image_id"], r["disk"], r["from_type"], r["to_type"], r["run_id"]) for r in changes
    ] == [(str(image["imageId"]), first_disk, old_type, new_type, 2)]


def test_the_versioned_views_read_the_positions_back_by_name(
    simulator: SimulatorFactory, tmp_path: Path, db_url: str
) -> None:
    server = simulator(regions=("cn-north-1", "cn-east-2"), images_per_region=15, seed=6)
    config = write_config(tmp_path, server.url, db=tmp_path / "unused.db", database_url=db_url)
    targets = targets_file(tmp_path, server.sim)
    assert crawl(config, "--targets", str(targets)) == 0
    rng = random.Random(6)
    for region, images in server.sim.inventory.images.items():
        for image in images[:5]:
            server.sim.set_image(region, mutate(rng, image))
    assert crawl(config, "--targets", str(targets)) == 0

    current = "v.valid_to_run IS NULL AND v.version_status = 'present'"
    for view, table, key, columns in (
        ("versioned_images", "images", (), content.IMAGE_COLUMNS),
        ("versioned_disks", "disks", ("slot", "position"), content.DISK_COLUMNS),
        ("versioned_attachments", "attachments", ("slot", "position", "seq"),
         content.ATTACHMENT_COLUMNS),
    ):  # fmt: skip
        from_view = query(db_url, f"SELECT * FROM {view} AS v WHERE {current}")
        from_table = query(
            db_url,
            f"SELECT t.* FROM {table} AS t JOIN images AS i"
            " ON i.region_id = t.region_id AND i.image_id = t.image_id"
            " WHERE i.missing_since IS NULL",
        )
        assert from_view and from_table, view
        child = {"disks": "disk", "attachments": "attachment"}.get(table, "")
        got = sorted(
            (r["region_id"], r["image_id"], r[child] if child else "", *(r[c] for c in columns))
            for r in from_view
        )
        expected = sorted(
            (r["region_id"], r["image_id"], ":".join(str(r[k]) for k in key),
             *(r[c] for c in columns))
            for r in from_table
        )  # fmt: skip
        assert got == expected, view
    total = query(db_url, "SELECT COUNT(*) AS n FROM image_versions")[0]["n"]
    assert query(db_url, "SELECT COUNT(*) AS n FROM versioned_images")[0]["n"] == total


def test_diff_formats_region_and_exit_code(
    simulator: SimulatorFactory, tmp_path: Path, db_url: str
) -> None:
    server = simulator(regions=("cn-north-1", "cn-east-2"), images_per_region=4)
    config = write_config(tmp_path, server.url, db=tmp_path / "unused.db", database_url=db_url)
    targets = targets_file(tmp_path, server.sim)
    assert crawl(config, "--targets", str(targets)) == 0
    baseline = run_cli("diff", "--db", db_url)
    assert baseline.startswith("baseline: run 1 against an empty inventory")
    assert "8 added, 0 removed, 0 restored, 0 changed" in baseline
    run_cli("diff", "--db", db_url, "--exit-code", expect=1)  # a baseline lists changes too

    north = server.sim.inventory.images["cn-north-1"][0]
    east = server.sim.inventory.images["cn-east-2"][0]
    server.sim.set_image("cn-north-1", {**north, "name": 'new, "quoted" name'})
    server.sim.delete_image("cn-east-2", str(east["imageId"]))
    assert crawl(config, "--targets", str(targets)) == 0

    table = run_cli("diff", "--db", db_url, "--exit-code", expect=1)
    assert table.splitlines()[0] == "changes from run 1 to run 2"
    assert "0 added, 1 removed, 0 restored, 1 changed" in table
    rows = list(csv.reader(io.StringIO(run_cli("diff", "--db", db_url, "--format", "csv"))))
    header = ["from_run", "to_run", "region_id", "image_id", "change", "path", "from", "to"]
    assert rows[0] == header
    assert sorted(rows[1:]) == sorted([
        ["1", "2", "cn-east-2", str(east["imageId"]), "removed", "", "", ""],
        ["1", "2", "cn-north-1", str(north["imageId"]), "changed", "name", north["name"],
         'new, "quoted" name'],
    ])  # fmt: skip
    east_only = cli_diff(db_url, "--region", "cn-east-2")
    assert [(entry[2], entry[4]) for entry in east_only] == [("cn-east-2", "removed")]
    same = run_cli("diff", "--db", db_url, "--from", "2", "--to", "2", "--exit-code")
    assert "0 added, 0 removed, 0 restored, 0 changed" in same  # and exit 0
    run_cli("diff", "--db", db_url, "--from", "7", expect=2)  # no such run
    run_cli("history", "cn-north-1", "img-nosuchimage", "--db", db_url, expect=2)
