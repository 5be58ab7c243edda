"""The docs stay true to the code: the DVC stages docs/architecture.md lists are dvc.yaml's, every
`python -m backprop_bench...` command README.md and docs/*.md show still parses its arguments, and
no doc or source file points outside the repository.

Each distinct command runs once, in a subprocess of this Python, two at a time: an argparse
command with --help, the Hydra app with its overrides and --cfg job (compose and print, no run).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The package's commands: top-level modules, plus the packages run with `python -m` (a __main__.py).
# A library module shown as a command breaks the layout's rule, so the docs must show exactly these.
COMMANDS = {
    "backprop_bench.train",
    "backprop_bench.study",
    "backprop_bench.compare",
    "backprop_bench.stability",
    "backprop_bench.repro",
    "backprop_bench.predict",
    "backprop_bench.bench",
    "backprop_bench.data.download",
    "backprop_bench.data.preprocess",
    "backprop_bench.tracking",
}
HYDRA_APP = "backprop_bench.train"
TIMEOUT_S = 120  # per command; each takes about a second
FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.S | re.M)  # indented too: a block inside a list item
COMMAND = re.compile(r"python -m (backprop_bench(?:\.\w+)*)([^\n]*)")


@dataclass(frozen=True)
class Shown:
    """One command line as a doc shows it."""

    doc: str
    module: str
    args: tuple[str, ...]


def snippets(text: str) -> list[str]:
    """The code in a markdown text: each line of a fenced block (a trailing backslash joins the
    next line), then each inline code span (which may wrap onto the next line)."""
    found = []
    for block in FENCE.findall(text):
        found += block.replace("\\\n", " ").splitlines()
    prose = FENCE.sub("", text)
    found += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return found


def shown_commands(path: Path) -> list[Shown]:
    """Every `python -m backprop_bench...` in a doc's code, comments included (`make bench  # = python
    -m backprop_bench.bench`). Its arguments end where the shell line would: at a comment or `;`."""
    found = []
    for code in snippets(path.read_text()):
        for module, rest in COMMAND.findall(code):
            rest = re.split(r"\s#|;|&&|\|", rest)[0]
            found.append(Shown(path.name, module, tuple(shlex.split(rest))))
    return found


@cache
def all_shown() -> tuple[Shown, ...]:
    return tuple(c for doc in DOCS for c in shown_commands(doc))


def is_placeholder(arg: str) -> bool:
    """`...`, `<run id>`, `[--experiment NAME]`: what the reader fills in or may leave out."""
    return "..." in arg or "<" in arg or ">" in arg or arg.startswith("[") or (arg.endswith("]") and "=" not in arg)


def sweep_values(value: str) -> list[str]:
    """A Hydra override's value split at its top-level commas: `a,b` is a sweep of two values,
    `[0.3,0.1]` one list."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(value):
        depth += (ch in "[{(") - (ch in "]})")
        if ch == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    return [*parts, value[start:]]


def pick(override: str, i: int) -> str:
    """The i-th run's value of an override (a sweep's values taken in turn; a plain override as is)."""
    key, eq, value = override.partition("=")
    values = sweep_values(value) if eq else [value]
    return override if len(values) == 1 else f"{key}={values[i % len(values)]}"


def hydra_override_sets(args: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The override sets to compose for one shown train command.

    --cfg job composes without running, but Hydra refuses it together with -m, and outside a
    multirun a sweep value is an error. So a multirun is composed once per position of its sweeps
    (set i takes each sweep's value i), which checks every value shown without the whole grid.
    A SLURM or submitit launcher needs a cluster and the `cluster` extra's plugin: it is dropped,
    with the hydra.launcher.* overrides that configure it; the overrides of the cells still compose.
    """
    multirun = "-m" in args or "--multirun" in args
    cluster_launcher = any(a.startswith("hydra/launcher=") and (a.endswith("=slurm") or "submitit" in a) for a in args)
    kept, skip_next = [], False
    for a in args:
        if skip_next:  # the value of --cfg
            skip_next = False
        elif a in ("-m", "--multirun", "--info"):
            pass
        elif a in ("--cfg", "-c"):
            skip_next = True
        elif cluster_launcher and (a.startswith("hydra/launcher=") or a.startswith("hydra.launcher.")):
            pass
        elif not is_placeholder(a):
            kept.append(a)
    if not multirun:
        return [tuple(kept)]
    width = max(len(sweep_values(a.partition("=")[2])) for a in kept) if kept else 1
    return [tuple(pick(a, i) for a in kept) for i in range(width)]


def invocation(module: str, args: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The argument lists to run for one shown command (after `python -m <module>`)."""
    if module == HYDRA_APP:
        return [(*overrides, "--cfg", "job") for overrides in hydra_override_sets(args)]
    # An argparse command: its shown arguments are dropped (they may name files that do not exist
    # here), but a subcommand (`tracking reap`) is kept, so its own parser answers --help.
    sub = []
    for a in args:
        if not re.fullmatch(r"[a-z][a-z_-]*", a):
            break
        sub.append(a)
    return [(*sub, "--help")]


@cache
def invocations() -> dict[tuple[str, ...], list[str]]:
    """Each distinct command line to run -> the docs that show it."""
    runs: dict[tuple[str, ...], list[str]] = {}
    for shown in all_shown():
        if shown.module not in COMMANDS:
            continue  # test_docs_show_only_commands reports it
        for args in invocation(shown.module, shown.args):
            docs = runs.setdefault((shown.module, *args), [])
            if shown.doc not in docs:
                docs.append(shown.doc)
    return runs


def run_one(cmd: tuple[str, ...]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    try:
        return subprocess.run(
            [sys.executable, "-m", *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(err.cmd, -1, "", f"timed out after {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """Every distinct command, run once, two at a time (the machine has two cores)."""
    cmds = list(invocations())
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(cmds, pool.map(run_one, cmds)))


def stages_listed() -> list[str]:
    """The first column of docs/architecture.md's "DVC stages" table: `name` in backticks."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = re.search(r"^## DVC stages\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, 'docs/architecture.md has no "## DVC stages" section'
    return re.findall(r"^\| `([^`]+)` \|", section.group(1), re.M)


def test_architecture_lists_dvc_stages():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    listed = stages_listed()
    named = []
    for name in listed:
        # A matrix stage is one entry in dvc.yaml and one row in the doc: study <-> study@<framework>-<device>.
        base, _, item = name.partition("@")
        if item:
            assert "matrix" in stages.get(base, {}) or "foreach" in stages.get(base, {}), (
                f"docs/architecture.md lists {name}, but dvc.yaml's {base} is not a matrix stage"
            )
        named.append(base)
    assert len(named) == len(set(named)), f"docs/architecture.md lists a stage twice: {listed}"
    assert set(named) == set(stages), f"docs/architecture.md lists {sorted(named)}, dvc.yaml has {sorted(stages)}"


def test_docs_show_only_commands():
    shown = {c.module for c in all_shown()}
    strays = sorted(f"{c.doc}: python -m {c.module}" for c in all_shown() if c.module not in COMMANDS)
    assert not strays, f"not a command of the package (a stale path?): {strays}"
    assert shown == COMMANDS, f"commands no doc shows: {sorted(COMMANDS - shown)}"


@pytest.mark.parametrize("cmd", list(invocations()), ids=" ".join)
def test_doc_command_parses(cmd, results):
    done = results[cmd]
    docs = ", ".join(invocations()[cmd])
    assert done.returncode == 0, (
        f"{docs}: python -m {' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}{done.stdout[-1000:]}"
    )
    assert done.stdout.strip(), f"{docs}: python -m {' '.join(cmd)} printed nothing"


# Pointers outside the repository: a sibling checkout, or an issue tracker's numbers.
OUTSIDE = re.compile(
    r"\.\./shared|\bissues?\s*#|\bissues?\s+\d+|\bissues?/\d+|\bGH-\d+|(?<![\w&/])#\d{1,5}\b", re.IGNORECASE
)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".json", ".sh"}


def text_files() -> list[Path]:
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*"), *(ROOT / "src").rglob("*")]
    return [p for p in files if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]


def test_no_pointers_outside_the_repository():
    hits = []
    for path in text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if m := OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)!r} in {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
