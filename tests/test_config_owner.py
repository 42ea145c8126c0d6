"""Only the recipe and the commands read the whole run config (issue 25, item 2): every other module takes the
sections it reads (`RunConfig.optim`, `.router`, `.decoding`, `.arm`, ..., and a method its own options), so
that its signatures say what it depends on.

What is checked, in every module of the package outside ALLOWED and LEFT (docstrings and comments aside):
- an import of RunConfig from sapt.config, wherever it is (at the top, inside a function, under
  `if TYPE_CHECKING:`), or RunConfig read as an attribute of the sapt.config module (`config.RunConfig`);
- an annotation that names RunConfig (a string annotation too), of a parameter, a return or a variable;
- a parameter named `cfg` with no annotation or annotated `Any`: the package's name for the whole config,
  taken untyped. A `cfg` of another type (`cfg: PseudoConfig`, the generator's own) is that type's.
bench/ is outside the package and reads whole configs as the commands do.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sapt"

# module (relative to sapt/) -> why it reads the whole config
ALLOWED = {
    "config.py": "the config itself",
    "train.py": "the recipe: it holds the run's config and hands each component its sections",
    "api.py": "the Python API: resolves a config and hands it to the recipe",
    "cli.py": "the command line: resolves a config and hands it to the recipe (and `sapt eval`, its own recipe)",
    "export.py": "`sapt export`'s recipe: reads a saved run's config and hands the card and the adapters their "
                 "sections (`card_sections`), and `read_export` the block type its section",
    "dry_run.py": "`sapt run --dry-run`: the recipe's plan without a model, and the resolved config printed",
    "run_tasks.py": "the recipe's first step, the run's tasks (for the recipe, --unseen and --dry-run)",
    "rundir/plan.py": "the resume check compares the whole saved config with the run's",
    "rundir/read.py": "reads config.yaml back into a RunConfig",
}
# Modules still to convert, each taking the whole config while it is: none now (of issue 25's last three,
# evaluation/report.py and model_card.py take what they read, and export.py is `sapt export`'s recipe). A module
# put here is held to its conversion by the last test: once it takes its sections it must be struck from here.
LEFT: dict[str, str] = {}
CONFIG_MODULE = "sapt.config"
UNTYPED = {"Any", "typing.Any"}


def _all_args(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[ast.arg]:
    a = node.args
    return [*a.posonlyargs, *a.args, *a.kwonlyargs, *([a.vararg] if a.vararg else []),
            *([a.kwarg] if a.kwarg else [])]


def violations(source: str) -> list[str]:
    """What in `source` (a module of the package) takes or imports the whole run config."""
    tree = ast.parse(source)
    found: list[str] = []
    config_names: set[str] = set()  # names the sapt.config module is bound to here
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.module == CONFIG_MODULE and any(a.name == "RunConfig" for a in node.names):
                found.append(f"line {node.lineno}: imports RunConfig")
            if node.module == "sapt":
                config_names |= {a.asname or a.name for a in node.names if a.name == "config"}
        elif isinstance(node, ast.Import):
            config_names |= {a.asname for a in node.names if a.name == CONFIG_MODULE and a.asname}
            if any(a.name == CONFIG_MODULE and not a.asname for a in node.names):
                config_names.add("sapt.config")
    annotations: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "RunConfig" and ast.unparse(node.value) in config_names:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for arg in _all_args(node):
                if arg.annotation is not None:
                    annotations.append(arg.annotation)
                if arg.arg == "cfg" and (arg.annotation is None or ast.unparse(arg.annotation) in UNTYPED):
                    where = node.name if not isinstance(node, ast.Lambda) else "lambda"
                    found.append(f"line {node.lineno}: {where} takes an untyped cfg")
            if not isinstance(node, ast.Lambda) and node.returns is not None:
                annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    for annotation in annotations:
        if "RunConfig" in ast.unparse(annotation):
            found.append(f"line {annotation.lineno}: the annotation {ast.unparse(annotation)}")
    return found


def test_the_checker_finds_each_way_of_taking_the_whole_config():
    assert violations("from sapt.config import RunConfig\n")
    assert violations("from sapt.config import ConfigError, RunConfig as RC\n")
    assert violations("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sapt.config import RunConfig\n")
    assert violations("def f():\n    from sapt.config import RunConfig\n")
    assert violations("from sapt import config\nx = config.RunConfig\n")
    assert violations("import sapt.config as c\ndef f(x: c.RunConfig): pass\n")
    assert violations("import sapt.config\nx = sapt.config.RunConfig()\n")
    assert violations('def f(x: "RunConfig") -> None: pass\n')  # a string annotation, no import
    assert violations("def f(x) -> RunConfig | None: pass\n")
    assert violations("x: RunConfig | None = None\n")
    assert violations("class M:\n    def hook(self, model, cfg): pass\n")  # a method's untyped hook
    assert violations("from typing import Any\ndef f(cfg: Any): pass\n")
    assert violations("def f(*, cfg=None): pass\n")
    assert violations("g = lambda cfg: cfg.lr\n")
    # a section, another type's cfg, ConfigError, a docstring or comment that mentions it: no use of it
    assert violations("from sapt.config import ConfigError, DecodingSection\n"
                      "def f(decoding: DecodingSection, cfg: PseudoConfig) -> None:\n"
                      '    """Reads sapt.config.RunConfig.decoding."""  # RunConfig\n') == []


def test_the_lists_name_modules_that_exist():
    for rel in [*ALLOWED, *LEFT]:
        assert (PACKAGE / rel).is_file(), rel


def test_only_the_recipe_and_the_commands_take_the_whole_config():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ALLOWED or rel in LEFT:
            continue
        found = violations(path.read_text(encoding="utf-8"))
        if found:
            offenders[rel] = found
    assert offenders == {}, "modules below the recipe that take the whole run config (give them its sections: " + \
        "RunConfig.optim, .router, .decoding, ...): " + "; ".join(f"{r}: {', '.join(f)}" for r, f in offenders.items())


def test_a_left_module_still_takes_the_whole_config():
    """LEFT lists what is still to convert: a module converted since is struck from it, so that it is held."""
    converted = [rel for rel in LEFT if not violations((PACKAGE / rel).read_text(encoding="utf-8"))]
    assert converted == [], f"these take sections now: remove them from LEFT: {', '.join(converted)}"
