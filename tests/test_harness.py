"""The test harness itself (tests/conftest.py and `make test`'s `-n 2 --dist loadgroup`): tests
marked with one xdist_group run on one worker, and modules with slow tests are handed out first.

Both fail silently when they break: pytest 9.2 ignores the node-id suffix pytest-xdist 3.8 uses
to group, so grouped tests spread over the workers and every test still passes (the team stack
started twice, keras-on's cases computed once per worker). Hence a run of pytest on a made-up
suite here, reading which worker ran what.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from conftest import ROOT

GROUPED = """
import os, pytest
pytestmark = pytest.mark.xdist_group("together")

@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    print("RAN", "grouped", os.environ["PYTEST_XDIST_WORKER"])
"""

LOOSE = """
import os, time, pytest

@pytest.mark.parametrize("i", range(6))
def test_loose(i):
    time.sleep(0.2)  # long enough that both workers take some
    print("RAN", "loose", os.environ["PYTEST_XDIST_WORKER"])
"""


def ran(tmp_path: Path) -> dict[str, set[str]]:
    """{kind: the workers that ran its tests}, from `pytest -n 2 --dist loadgroup` on tmp_path."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-q", "-rA"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    workers: dict[str, set[str]] = {}
    for line in done.stdout.splitlines():
        if "RAN " in line:
            _, kind, worker = line[line.index("RAN ") :].split()[:3]
            workers.setdefault(kind, set()).add(worker)
    return workers


def test_an_xdist_group_runs_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_loose.py").write_text(LOOSE)
    workers = ran(tmp_path)
    assert len(workers["grouped"]) == 1, f"an xdist_group ran on {sorted(workers['grouped'])}: grouping is broken"
    assert len(workers["loose"]) == 2  # the others are shared out


def test_the_team_stack_modules_exist_and_are_marked_as_one_group():
    from conftest import ONE_WORKER_MODULES

    assert all((ROOT / "tests" / f"{m}.py").is_file() for m in ONE_WORKER_MODULES)  # a rename would drop one


class FakeItem:
    def __init__(self, module: str, slow: bool) -> None:
        self.module = SimpleNamespace(__name__=module)
        self.slow = slow

    def get_closest_marker(self, name: str):
        return name == "slow" and self.slow or None


def test_modules_with_slow_tests_come_first_each_kept_whole():
    from conftest import heavy_first

    items = [FakeItem("a", False), FakeItem("a", False), FakeItem("b", False), FakeItem("b", True)]
    items += [FakeItem("c", False), FakeItem("d", True), FakeItem("d", False)]
    heavy_first(items)
    assert [(i.module.__name__, i.slow) for i in items] == [
        ("b", False),
        ("b", True),
        ("d", True),
        ("d", False),
        ("a", False),
        ("a", False),
        ("c", False),
    ]
