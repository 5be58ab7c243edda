"""dvc.yaml's deps follow the code: every project module a stage's command can import is covered
by one of the stage's deps, and an edit to a library package reruns exactly the stages that
import it, and an edit to compare.target_accuracy the report alone (the second runs dvc status
in a scratch copy of the repository).

The import graph is static: every ``import`` statement in src/, those inside functions and
under ``if TYPE_CHECKING`` included. The one import made by name at run time, a backend chosen
by ``framework=``, comes from the backends' own registry (``backends.CLASSES``).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from repo_copy import copy_repo

from backprop_bench.backends import CLASSES
from backprop_bench.results.grid import KERAS_ON

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "backprop_bench"
# Files a stage reads as data, not as code: compare counts the backends' lines of code.
READS = {"compare": ("src/backprop_bench/backends",)}
# The backend a stage outside the study's matrix builds by name: the stability map's NumPy.
NAMED_BACKEND = {"stability": "numpy"}


def module_path(name: str) -> Path | None:
    """The file of a project module (a package's __init__.py), or None outside the project."""
    base = SRC / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def with_parents(name: str) -> set[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


@cache
def direct_imports(name: str) -> frozenset[str]:
    """The project modules one module's import statements name, wherever they stand."""
    path = module_path(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    modules = set()
    for n in found:
        if n.split(".")[0] == PACKAGE and module_path(n) is not None:
            modules |= {m for m in with_parents(n) if module_path(m) is not None}
    return frozenset(modules - {name})


def closure(entry: str, framework: str | None = None) -> set[str]:
    """Every project module that running ``python -m entry`` can import.

    framework: the backend a study stage builds by name; its module joins the graph."""
    todo, seen = [*with_parents(entry)], set()
    if framework is not None:
        todo += [f"{PACKAGE}.backends.{module}" for (fw, _), (module, _) in CLASSES.items() if fw == framework]
    while todo:
        name = todo.pop()
        if name in seen or module_path(name) is None:
            continue
        seen.add(name)
        todo += direct_imports(name)
    return seen


def stages(every_backend: bool = False) -> dict[str, dict]:
    """dvc.yaml's stages, the matrices expanded as DVC does: name -> {entry, framework, deps}.
    every_backend: the keras-on matrix over every Keras backend it can run (KERAS_ON), not only
    params.yaml's study.keras_on (none by default), so that its deps are checked too."""
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if every_backend:
        params["study"]["keras_on"] = list(KERAS_ON)
    out = {}
    for name, stage in pipeline["stages"].items():
        items = [{}]
        if "matrix" in stage:
            keys = list(stage["matrix"])
            items = [{}]
            for key in keys:  # ${study.frameworks} -> params.yaml's list
                ref = stage["matrix"][key].strip("${}").split(".")
                values = params
                for part in ref:
                    values = values[part]
                items = [dict(i, **{key: v}) for i in items for v in values]
        for item in items:

            def fill(text: str, item=item) -> str:
                for key, value in item.items():
                    text = text.replace("${item." + key + "}", str(value))
                return text

            full = name if not item else f"{name}@{'-'.join(str(v) for v in item.values())}"
            cmd = fill(stage["cmd"]).split()
            entry = cmd[cmd.index("-m") + 1]
            if module_path(entry) is None or module_path(entry).name == "__init__.py":
                entry = f"{entry}.__main__" if module_path(f"{entry}.__main__") else entry
            deps = [fill(d if isinstance(d, str) else next(iter(d))) for d in stage.get("deps", [])]
            framework = item.get("framework", NAMED_BACKEND.get(name))
            if "backend" in item:  # keras-on@<backend>-<device> runs the framework keras-<backend>
                framework = f"keras-{item['backend']}"
            out[full] = {"entry": entry, "framework": framework, "deps": deps, "base": name}
    return out


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


STAGES = stages()
ALL_STAGES = stages(every_backend=True)


def test_the_expanded_stages_are_the_ones_dvc_knows():
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == sorted(STAGES)


def test_the_keras_on_matrix_is_checked_for_every_backend():
    assert {"keras-on@jax-cpu", "keras-on@torch-cpu"} <= set(ALL_STAGES)
    assert ALL_STAGES["keras-on@jax-cpu"]["framework"] == "keras-jax"


@pytest.mark.parametrize("stage", sorted(ALL_STAGES))
def test_every_module_a_stage_imports_is_one_of_its_deps(stage):
    s = ALL_STAGES[stage]
    missing = sorted(m for m in closure(s["entry"], s["framework"]) if not covered(module_path(m), s["deps"]))
    assert not missing, f"dvc.yaml stage {stage}: imports {', '.join(missing)}, which none of its deps covers"


@pytest.mark.parametrize("stage", sorted(ALL_STAGES))
def test_a_stage_depends_on_no_code_it_never_imports(stage):
    """Over-listing reruns a stage for nothing: every src/ dep holds a module the stage imports
    (or a file it reads, READS), so an unrelated edit does not rerun it. The stages of one
    matrix share their deps list: a dep counts when any of them imports it."""
    s = ALL_STAGES[stage]
    files = {
        module_path(m).relative_to(ROOT).as_posix()
        for other in ALL_STAGES.values()
        if other["base"] == s["base"]
        for m in closure(other["entry"], other["framework"])
    }
    for dep in s["deps"]:
        if not dep.startswith("src/") or dep in READS.get(s["base"], ()) or dep == "src/backprop_bench/conf":
            continue
        assert any(f == dep or f.startswith(dep + "/") for f in files), (
            f"dvc.yaml stage {stage}: {dep} is never imported"
        )


def test_the_closure_follows_function_level_and_type_checking_imports():
    """The graph is the whole text's: train imports the run only inside functions, and the
    stage still depends on it."""
    found = closure(f"{PACKAGE}.study", "torch")
    assert {f"{PACKAGE}.training.run", f"{PACKAGE}.tracking.run", f"{PACKAGE}.backends.torch_backend"} <= found
    assert f"{PACKAGE}.backends.keras_backend" not in found  # another framework's stage


# ---------------------------------------------------------------- dvc status after an edit

# One module of each library package, and each backend on its own (the per-framework rule).
EDITS = (
    "core/specs.py",
    "core/files.py",
    "training/schedules.py",
    "training/callbacks.py",
    "results/metrics.py",
    "tracking/uri.py",
    "report/stats.py",
    "report/plots.py",
    "data/formats.py",
    "bench/cells.py",
    "backends/base.py",
    "backends/numpy_backend.py",
    "backends/torch_backend.py",
    "backends/_tf_common.py",
    "backends/keras_backend.py",
)


def expected_stages(rel: str) -> set[str]:
    """The stages that import the edited module; those that depend on its whole package while
    importing some module of it (a folder dep reruns on any edit inside); and the stages of a
    matrix that list it because a sibling imports it (a matrix shares one deps list)."""
    path = SRC / PACKAGE / rel
    folder, file = path.parent.relative_to(ROOT).as_posix(), path.relative_to(ROOT).as_posix()
    out = set()
    for name, s in STAGES.items():
        files = {module_path(m) for m in closure(s["entry"], s["framework"])}
        siblings = {
            module_path(m)
            for o in STAGES.values()
            if o["base"] == s["base"]
            for m in closure(o["entry"], o["framework"])
        }
        if path in files or (folder in s["deps"] and any(f.parent == path.parent for f in files)):
            out.add(name)
        if file in s["deps"] and path in siblings:
            out.add(name)
        if any(file.startswith(r + "/") for r in READS.get(s["base"], ())):
            out.add(name)
    return out


def changed_stages(repo: Path) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout or "{}")
    return {
        stage for stage, changes in status.items() if any("changed deps" in c for c in changes if isinstance(c, dict))
    }


def placeholder_outputs(repo: Path) -> None:
    """A file at every output of every stage, so `dvc commit` can record the deps as they are
    now without running anything (what the status test compares an edit against)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import dvc.repo, json; r = dvc.repo.Repo('.'); "
            "print(json.dumps([(str(o), o.is_dir_checksum) for s in r.index.stages for o in s.outs]))",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for name, _ in json.loads(out.stdout):
        target = repo / name
        if target.suffix:  # a file output
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("placeholder\n")
        else:  # a folder output: runs/<framework>-<device>
            target.mkdir(parents=True, exist_ok=True)
            (target / "placeholder").write_text("placeholder\n")


@pytest.mark.slow
def test_an_edit_reruns_exactly_the_stages_that_import_it(tmp_path):
    repo = copy_repo(tmp_path)
    placeholder_outputs(repo)
    commit = subprocess.run(
        [sys.executable, "-m", "dvc", "commit", "-f", "-q"], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert commit.returncode == 0, commit.stderr
    assert changed_stages(repo) == set()
    for rel in EDITS:
        path = repo / "src" / PACKAGE / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit\n")
        try:
            assert changed_stages(repo) == expected_stages(rel), f"after an edit to {rel}"
        finally:
            path.write_bytes(original)
    # a params.yaml key only the report reads reruns the report alone, not the study
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["compare"]["target_accuracy"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert changed_stages(repo) == {"compare"}
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
