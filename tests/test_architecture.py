"""The shape of the house, read from the source: no import cycles, no oversized modules,
libraries that never reach up, third-party boundaries kept, and `dvc.yaml` deps that cover
every file a stage runs (statically: the import closure of the stage's script)."""

from __future__ import annotations

import ast
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "dgm"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_names(path: Path) -> set[str]:
    """Every module name an ``import``/``from … import`` anywhere in ``path`` names
    (function-level imports included, ``if TYPE_CHECKING:`` blocks not), with ``from a
    import b`` also as ``a.b``."""
    names: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):  # ``if TYPE_CHECKING:`` blocks never run
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def with_parents(name: str) -> set[str]:
    """``dgm.a.b`` → {dgm, dgm.a, dgm.a.b}: importing a module runs its packages' inits."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


@cache
def dgm_imports(name: str) -> frozenset[str]:
    """The dgm modules that module ``name`` imports directly."""
    known = modules()
    found = {n for n in imported_names(known[name]) if n in known}
    return frozenset(found - {name})


def closure(roots: set[str]) -> set[str]:
    """Every dgm module that importing ``roots`` may run (transitively, package inits too)."""
    known = modules()
    seen: set[str] = set()
    todo = [p for r in roots for p in with_parents(r) if p in known]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(p for dep in dgm_imports(name) for p in with_parents(dep) if p in known)
    return seen


def find_cycle() -> list[str] | None:
    """One cycle among dgm modules (direct imports, any level), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(dgm_imports(name)):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(modules()):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle() is None, " → ".join(find_cycle() or [])


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    """The check above can fail: a planted back edge (models → stages) is reported."""
    real = dgm_imports.__wrapped__

    def planted(name: str) -> frozenset[str]:
        extra = {"dgm.stages.train"} if name == "dgm.models.base" else set()
        return real(name) | extra

    monkeypatch.setattr(__import__(__name__), "dgm_imports", planted)
    cycle = find_cycle()
    assert cycle is not None and cycle[0] == cycle[-1]
    assert "dgm.models.base" in cycle and "dgm.stages.train" in cycle


def test_no_module_over_400_lines_and_no_workflow_module():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
    assert not (PACKAGE / "workflow.py").exists()


@pytest.mark.parametrize("outer", ["dgm.stages", "dgm.cli"])
def test_libraries_never_import_stages_or_the_cli(outer):
    offenders = {name for name in modules()
                 if not name.startswith(("dgm.stages", "dgm.cli"))
                 and any(dep == outer or dep.startswith(outer + ".")
                         for dep in dgm_imports(name))}
    assert offenders == set()


BOUNDARIES = {
    # third-party package: the dgm modules (prefixes) allowed to import it
    "mlflow": ("dgm.tracking",),
    "ray": ("dgm.cluster", "dgm.data.streaming", "dgm.training.ray_train", "dgm.tuning",
            "dgm.generation"),
}


@pytest.mark.parametrize("package", sorted(BOUNDARIES))
def test_third_party_boundaries(package):
    offenders = {name for name, path in modules().items()
                 if any(n == package or n.startswith(package + ".")
                        for n in imported_names(path))
                 and not name.startswith(BOUNDARIES[package])}
    assert offenders == set()


def test_private_ray_apis_only_in_the_cluster_module():
    private = re.compile(r"\bray\.[\w.]*\._|\b_training_actor_item_queue\b")
    offenders = {name for name, path in modules().items()
                 if name != "dgm.cluster" and private.search(path.read_text())}
    assert offenders == set()


# --- dvc.yaml deps cover what each stage runs --------------------------------------------------
def stage_definitions() -> dict[str, dict]:
    """dvc.yaml's stages, a foreach stage by its template (``do``)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def script_closure(script: Path) -> set[str]:
    """The dgm modules a DVC stage script runs: the closure of what it imports."""
    return closure({n for n in imported_names(script) if n in modules()})


def uncovered(stage: dict) -> list[str]:
    """Files that the stage's script imports (transitively) but no dep lies above."""
    script = REPO / stage["cmd"].split()[1]
    deps = [REPO / d for d in stage["deps"]]
    files = {modules()[n] for n in script_closure(script)} | {script}
    return sorted(str(f.relative_to(REPO)) for f in files
                  if not any(f == d or d in f.parents for d in deps))


@pytest.mark.parametrize("name", sorted(stage_definitions()))
def test_dvc_deps_cover_every_imported_file(name):
    stage = stage_definitions()[name]
    assert stage["cmd"].startswith("python pipelines/")
    assert uncovered(stage) == []


def test_every_stage_runs_its_own_stage_module():
    for name, stage in stage_definitions().items():
        script = REPO / stage["cmd"].split()[1]
        assert f"dgm.stages.{name}" in script_closure(script), name
        assert f"src/dgm/stages/{name}.py" in stage["deps"], name


def test_the_deps_check_can_fail():
    """A stage whose deps omit a package it imports is reported."""
    stage = dict(stage_definitions()["register"])
    stage["deps"] = [d for d in stage["deps"] if not d.startswith("src/dgm/tracking")]
    assert any(f.startswith("src/dgm/tracking/") for f in uncovered(stage))


# --- .gitignore lets through exactly what dvc.yaml keeps in git ---------------------------------
def stage_outputs() -> dict[str, bool]:
    """Every output of dvc.yaml (outs, metrics, plots) for digits and the `gan` key, and
    whether DVC caches it (``cache: false``: git keeps it)."""
    outputs = {}
    for stage in stage_definitions().values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path, options = next(iter(entry.items())) if isinstance(entry, dict) else (
                    entry, {})
                path = path.replace("${data.name}", "digits").replace("${key}", "gan")
                outputs[path] = (options or {}).get("cache", True)
    return outputs


def test_git_ignores_the_cached_outputs_and_keeps_the_others():
    """`.gitignore` names the `cache: false` outputs one by one: a new one in dvc.yaml that
    it does not let through would vanish from experiments' commits (`dvc exp show`: `!`)."""
    outputs = stage_outputs()
    assert any(not cached for cached in outputs.values())
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO,
                             input="\n".join(outputs), capture_output=True, text=True).stdout
    assert {path: path in ignored.splitlines() for path in outputs} == outputs
