"""Every file of a run directory is read and written in `sapt/rundir/` only (issue 25, item 3).

What is checked, in every module of the package outside sapt/rundir/ (docstrings aside):
- a string that *is* the name of a run file ("metrics.json", "stage.json", ".lock", ...), as a path is built
  from it (`run_dir / "metrics.json"`); a message that mentions one inside a sentence is not a use of it;
- an import from sapt.rundir (or a submodule) of a constant that names a run file (METRICS, CONFIG,
  CHECKPOINT, ...), or such a constant read as an attribute of a sapt.rundir module (`layout.METRICS`).
The names come from sapt.rundir itself, so a new run file named there is covered at once. A module that has
a reason to name one without reading it says so in ALLOWED, with the reason.
"""
from __future__ import annotations

import ast
from pathlib import Path

from sapt.rundir import layout, lock, manifest, recovery, results, stage_files

PACKAGE = Path(__file__).resolve().parents[1] / "sapt"
OWNER = PACKAGE / "rundir"

# The constants of sapt.rundir that name a file or folder of a run directory.
CONSTANTS = {
    "CONFIG", "METRICS", "TIMING", "TRAIN_LOG", "TASKS", "ORACLE_ROUTING", "METRICS_NO_DEFINITIONS", "STAGES",
    "UNSEEN_SCORES", "UNSEEN_PREDICTIONS", "UNSEEN_BASE", "PHASE_FILES", "MANIFEST", "RUN_LOG", "NAME", "LOCK_NAME",
    "CHECKPOINT", "SCORES", "PREDICTIONS", "EVAL", "ADAPTER", "ROUTER", "SUMMARY", "REPLAY", "REPLAY_STATS",
    "EXPORT_COPIES",
}
# The names of a run's files. router.safetensors is left out: an export has a file of that name of its own
# (sapt.export writes it). The method's own stage files (replay's memory.jsonl) are the method's to name.
FILE_NAMES = {
    layout.CONFIG, layout.METRICS, layout.TIMING, layout.TRAIN_LOG, layout.TASKS, layout.ORACLE_ROUTING,
    layout.METRICS_NO_DEFINITIONS, layout.UNSEEN_SCORES, layout.RUN_LOG, manifest.NAME, lock.LOCK_NAME,
    recovery.CHECKPOINT, results.SCORES, stage_files.ADAPTER, stage_files.SUMMARY, stage_files.REPLAY,
    stage_files.REPLAY_STATS,
}
# module (relative to sapt/) -> the constants it may import, and why
ALLOWED = {
    # the names an export carries, only to refuse a task folder that would clash with one (`EXPORT_FILES`)
    "export.py": {"EXPORT_COPIES"},
}


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of the module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def _is_rundir(module: str | None) -> bool:
    return module is not None and (module == "sapt.rundir" or module.startswith("sapt.rundir."))


def violations(source: str, allowed: set[str] = frozenset()) -> list[str]:
    """What in `source` (a module outside sapt/rundir/) reads or writes a run file by its name."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found, rundir_modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                and node.value in FILE_NAMES:
            found.append(f"line {node.lineno}: the run file name {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and (_is_rundir(node.module) or (node.module == "sapt" and any(
                a.name == "rundir" for a in node.names))):
            for alias in node.names:
                if alias.name in CONSTANTS and alias.name not in allowed:
                    found.append(f"line {node.lineno}: imports {alias.name} from {node.module}")
                elif _is_rundir(f"{node.module}.{alias.name}"):
                    rundir_modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            rundir_modules |= {a.asname for a in node.names if a.asname and _is_rundir(a.name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in CONSTANTS and node.attr not in allowed:
            base = node.value
            named = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
            if named in rundir_modules or (isinstance(base, ast.Attribute) and ast.unparse(base).startswith("sapt.rundir")):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_checker_finds_a_run_file_read_outside_the_owner():
    assert violations('from pathlib import Path\np = Path("r") / "metrics.json"\n')
    assert violations("from sapt.rundir import METRICS, stage_dir\n")
    assert violations("from sapt.rundir.layout import TIMING\n")
    assert violations("from sapt.rundir import layout\nx = layout.METRICS\n")
    assert violations("from sapt import rundir\nx = rundir.CONFIG\n")
    assert violations("import sapt.rundir.recovery as r\nx = r.CHECKPOINT\n")
    assert violations('def f(sdir):\n    return sdir / "stage.json"\n')
    assert violations('LOCK = ".lock"\n')
    # a sentence that mentions a file, a docstring, a function of the owner, an allowed name: no use of a file
    assert violations('"""Reads metrics.json."""\nraise ValueError(f"{d}: no metrics.json there")\n') == []
    assert violations('def f():\n    """metrics.json"""\n') == []
    assert violations("from sapt.rundir.results import read_metrics\n") == []
    assert violations("from sapt.rundir.source import EXPORT_COPIES\n", {"EXPORT_COPIES"}) == []


def test_only_sapt_rundir_reads_or_writes_a_run_file():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if OWNER in path.parents:
            continue
        rel = path.relative_to(PACKAGE).as_posix()
        found = violations(path.read_text(encoding="utf-8"), ALLOWED.get(rel, set()))
        if found:
            offenders[rel] = found
    assert offenders == {}, "run files named outside sapt/rundir/ (give sapt.rundir a function for it): " + \
        "; ".join(f"{rel}: {', '.join(found)}" for rel, found in offenders.items())
