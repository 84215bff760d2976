"""The package's shape: layers that import only downwards, no import cycle, a core free of the search and
tracking libraries, few flat modules, and one owner of a trial's state."""

import ast
from collections import defaultdict
from pathlib import Path

import unet_opt

PACKAGE = Path(unet_opt.__file__).parent


# bottom to top: a module may import its own layer and the layers before it
LAYERS = ["__init__", "errors", "config", "progress", "runtime", "core", "parallel", "tracking", "runs", "study",
          "cli", "__main__"]


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__'s)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (imports for annotations only, never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            continue
        yield node
        yield from runtime_nodes(node)


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports when it runs, at its top or inside a function (lazy imports
    count; annotations-only imports do not)."""
    found = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from unet_opt.tracking import plots` imports the module `unet_opt.tracking.plots`
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
    return {name for name in found if name in known}


def libraries(path: Path) -> set[str]:
    """The top-level names of what `path` imports from outside the package."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names - {"unet_opt"}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 else "__init__")


def test_every_module_imports_only_its_own_layer_and_the_layers_below():
    known = modules()
    upward = [f"{name} imports {other}" for name, path in known.items() for other in imports(path, known)
              if layer(other) > layer(name)]
    assert upward == []


def test_core_imports_no_optuna_mlflow_or_click():
    found = {name: libraries(path) & {"optuna", "mlflow", "click", "tqdm", "matplotlib", "sqlalchemy"}
             for name, path in modules().items() if name.startswith("unet_opt.core")}
    assert {name: libs for name, libs in found.items() if libs} == {}


def test_no_import_cycle_between_modules():
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    # a package's __init__ imports nothing in this package, so it never closes a cycle through its modules
    cycles, state = [], defaultdict(int)  # 0 unseen, 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            if state[other] == 1:
                cycles.append(path[path.index(other):] + [other])
            elif state[other] == 0:
                visit(other, path + [other])
        state[name] = 2

    for name in sorted(graph):
        if state[name] == 0:
            visit(name, [name])
    assert cycles == []


def test_at_most_ten_flat_modules():
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(flat) <= 10, flat


def test_only_the_ledger_writes_a_trial_s_state():
    # the tag that says a trial's state in MLflow is spelt in one module: the one that owns a trial's life
    writers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if '"optuna.state' in p.read_text())
    assert writers == ["study/ledger.py"]
    # and Optuna hears how a trial ended from that module only
    tellers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if ".tell(" in p.read_text() or "set_trial_state_values" in p.read_text())
    assert tellers == ["study/ledger.py"]
