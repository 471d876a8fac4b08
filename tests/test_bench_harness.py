"""The benchmarks' harness refuses to report figures of a crawler source edited while it ran.

The one first crawl that took 150 CPU seconds instead of 3.6 (README, "150 CPU seconds") was
measured from a working tree whose `crawler/store/versions.py` held, for about a minute, the
quadratic statement the query-plan test must catch: a child imports the files as they are when
it starts. Real files and real child processes here; nothing is timed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "harness.py"


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def checkout(root: Path) -> Path:
    """A checkout with a crawler package and its migrations, as a benchmark runs from."""
    package = root / "crawler" / "store"
    package.mkdir(parents=True)
    (root / "crawler" / "__init__.py").write_text("")
    (package / "versions.py").write_text("KEYS = 512\n")
    (root / "migrations").mkdir()
    (root / "migrations" / "env.py").write_text("")
    return root / "crawler"


def test_a_child_started_in_a_checkout_imports_its_package(
    harness: ModuleType, tmp_path: Path
) -> None:
    package = checkout(tmp_path)
    assert harness.child_package(tmp_path) == package.resolve()
    assert harness.child_package(tmp_path / "crawler") != package.resolve()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda root: (root / "crawler/store/versions.py").write_text("KEYS = 1\n"), "versions.py"),
        (lambda root: (root / "crawler/store/extra.py").write_text(""), "extra.py"),
        (lambda root: (root / "crawler/store/versions.py").unlink(), "versions.py"),
        (lambda root: (root / "migrations/env.py").write_text("x = 1\n"), "migrations/env.py"),
    ],
    ids=["edited", "added", "removed", "migration edited"],
)
def test_the_guard_names_what_changed(
    harness: ModuleType, tmp_path: Path, change: Callable[[Path], object], named: str
) -> None:
    guard = harness.SourceGuard(checkout(tmp_path))
    guard.check()  # nothing changed yet
    change(tmp_path)
    with pytest.raises(harness.SourceChangedError, match=re.escape(named)):
        guard.check()


def test_a_child_that_ran_while_the_source_changed_is_not_reported(
    harness: ModuleType, tmp_path: Path
) -> None:
    guard = harness.SourceGuard(checkout(tmp_path))
    env = dict(os.environ)
    quiet = [sys.executable, "-c", "pass"]
    assert harness.run_child(quiet, env, timeout_s=60, guard=guard).returncode == 0
    # As on that morning: the file is edited while a measured child runs.
    edit = f"open({str(tmp_path / 'crawler/store/versions.py')!r}, 'w').write('KEYS = 1\\n')"
    with pytest.raises(harness.SourceChangedError, match=re.escape("store/versions.py")):
        harness.run_child([sys.executable, "-c", edit], env, timeout_s=60, guard=guard)


def test_by_default_each_package_is_stamped_at_its_first_child(
    harness: ModuleType, tmp_path: Path
) -> None:
    checkout(tmp_path)
    env = dict(os.environ)
    quiet = [sys.executable, "-c", "pass"]
    harness.run_child(quiet, env, timeout_s=60, cwd=tmp_path)
    (tmp_path / "crawler" / "store" / "versions.py").write_text("KEYS = 1\n")
    with pytest.raises(harness.SourceChangedError, match=re.escape("store/versions.py")):
        harness.run_child(quiet, env, timeout_s=60, cwd=tmp_path)
