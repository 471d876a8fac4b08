"""Start-up CPU of the `crawler` command: what a process costs before it sends anything.

Each command runs as a fresh child and is reaped with `os.wait4` (user + system CPU of that
child alone, `harness.run_child`), `--repeat` times, every command in turn within one round so
that a busy phase of the machine hits them all alike:

  crawl:   `crawler crawl` of a targets file with a header and no rows, on a database that is
           already at the newest migration (the run is created and finished; nothing is sent);
  new-db:  the same crawl into a database file that does not exist yet (a new one each round:
           the schema is created, since issue 14 from the generated head schema, not Alembic);
  help:    `crawler --help`;
  runs:    `crawler runs` on that database;
  sql:     `crawler sql "SELECT count(*) FROM images"` on it;
  python:  `python -c pass`, the interpreter alone;
  floor:   `python -c "import sqlalchemy.ext.asyncio, aiosqlite, orjson"`, what the libraries a
           crawl needs cost to import, whatever the crawler does (aiohttp and tenacity were in
           it before issue 14: the crawl imports neither now).

With `--compare PYTHON` (the interpreter of another checkout's venv, e.g. the main checkout's
`.venv/bin/python`), every crawler command also runs with that interpreter, on a database of its
own that its own migrations made, in the same rounds; the table gives both medians and their
ratio. Each crawler package's bytecode is written first (`harness.compile_package`), as an
installed package has it, so that no run compiles the modules again.

    .venv/bin/python benchmarks/startup_cpu.py --repeat 9
    .venv/bin/python benchmarks/startup_cpu.py --repeat 9 --compare /work/main/.venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from harness import (
    compile_package,
    credentials_env,
    machine_note,
    median,
    new_secret,
    project_python,
    run_child,
)

FLOOR_IMPORTS = "import sqlalchemy.ext.asyncio, aiosqlite, orjson"


COMMANDS = ("crawl", "new-db", "help", "runs", "sql", "python", "floor")


def commands(
    python: str, workdir: Path, db_name: str = "startup.db", new_db_name: str = "new.db"
) -> dict[str, list[str]]:
    """Each measured command line; the crawler ones run as `python -m crawler`."""
    crawler = [python, "-m", "crawler"]
    db = str(workdir / db_name)
    crawl = [
        *crawler, "crawl", "--config", str(workdir / "startup.toml"), "--targets",
        str(workdir / "empty.csv"), "--no-progress", "--db",
    ]  # fmt: skip
    return {
        "crawl": [*crawl, db],
        "new-db": [*crawl, str(workdir / new_db_name)],
        "help": [*crawler, "--help"],
        "runs": [*crawler, "runs", "--db", db],
        "sql": [*crawler, "sql", "SELECT count(*) FROM images", "--db", db],
        "python": [python, "-c", "pass"],
        "floor": [python, "-c", FLOOR_IMPORTS],
    }  # fmt: skip


def prepare(workdir: Path, python: str, env: dict[str, str], db_name: str) -> None:
    """The config (an endpoint nothing listens on: nothing is sent), targets and a migrated db;
    the package's bytecode written, as `pip install` leaves it."""
    compile_package(python, env)
    (workdir / "startup.toml").write_text(
        '[api]\nendpoint = "http://127.0.0.1:9"\n', encoding="utf-8"
    )
    (workdir / "empty.csv").write_text("region_id,image_id\n", encoding="utf-8")
    first = run_child(commands(python, workdir, db_name)["crawl"], env, timeout_s=120, cwd=workdir)
    if first.returncode != 0:
        raise SystemExit(f"the first crawl failed ({first.returncode}): {first.stderr[-2000:]}")


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, list[float]]:
    """CPU seconds per (variant, command), `--repeat` rounds, every command once per round."""
    env = credentials_env(new_secret())
    variants = {"this": (args.python, "startup.db")}
    if args.compare is not None:
        variants["compare"] = (args.compare, "compare.db")
    for python, db_name in variants.values():
        prepare(workdir, python, env, db_name)
    found: dict[str, list[float]] = {}
    for repeat in range(args.repeat):
        for name in COMMANDS:
            for variant, (python, db_name) in variants.items():
                if variant != "this" and name in ("python", "floor"):
                    continue  # the same program either way
                new_db = f"new-{variant}-{repeat}.db"  # never there before this round
                argv = commands(python, workdir, db_name, new_db)[name]
                run = run_child(argv, env, timeout_s=120, cwd=workdir)
                if run.returncode != 0:
                    raise SystemExit(f"{variant} {name} exited {run.returncode}: {run.stderr}")
                found.setdefault(f"{variant} {name}", []).append(run.cpu_s)
                line = {"bench": "startup_cpu", "variant": variant, "command": name}
                print(json.dumps({**line, "repeat": repeat, "cpu_s": round(run.cpu_s, 3)}))
    return found


def print_table(found: dict[str, list[float]], compared: bool) -> None:
    """Median, min and max CPU seconds per command; with --compare, the other's and the ratio."""
    print()
    print(f"{'command':<8} | {'median CPU s':>12} {'min':>6} {'max':>6}", end="")
    print(f" | {'compare median':>14} {'this / compare':>14}" if compared else "")
    for name in COMMANDS:
        values = found[f"this {name}"]
        spread = f"{min(values):>6.3f} {max(values):>6.3f}"
        print(f"{name:<8} | {median(values):>12.3f} {spread}", end="")
        other = found.get(f"compare {name}")
        if other:
            print(f" | {median(other):>14.3f} {median(values) / median(other):>14.2f}")
        else:
            print()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=9, help="rounds (9)")
    parser.add_argument("--python", default=project_python(), help="the crawler's interpreter")
    parser.add_argument(
        "--compare", metavar="PYTHON", help="another checkout's interpreter, measured too"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    print(machine_note())
    with tempfile.TemporaryDirectory(prefix="startup-cpu-") as tmp:
        found = measure(args, Path(tmp))
    print_table(found, args.compare is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
