"""The package's layers follow the data path: a module imports only from its own layer or below, and
module-level imports form no loop. The layers, bottom up (README, "Where things are")."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ohem"
LAYERS = [
    # foundation: settings and the shipped recipes, files and output folders, the event storage, shared structures,
    # process groups, weight files
    (
        "ohem.util",
        "ohem.output_folder",
        "ohem.recipes",
        "ohem.config",
        "ohem.config_files",
        "ohem.config_values",
        "ohem.config_sections",
        "ohem.config_values",
        "ohem.events",
        "ohem.structures",
        "ohem.distributed",
        "ohem.checkpoint",
    ),
    ("ohem.data",),
    ("ohem.models",),
    ("ohem.mining",),
    ("ohem.evaluation", "ohem.inference", "ohem.visualize"),  # the trainer evaluates, so they sit below it
    ("ohem.engine",),
    (
        "ohem.bench",
        "ohem.report",
        "ohem.recipe_card",
        "ohem.export_model",
        "ohem.commands",
        "ohem.cli",
        "ohem.cli_doc",
        "ohem.config_doc",
        "ohem.__main__",
        "ohem.slurm_train",
    ),
]


# The one import up the layers: the config's sampler section is the sampler itself, so reading a config
# looks its class up among the registered samplers (inside the functions that do, never at import).
UPWARD = {("ohem.config", "ohem.mining.sampler"), ("ohem.config_sections", "ohem.mining.sampler")}


def layer_of(module: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, top_level_only: bool) -> set[str]:
    """The ``ohem`` modules ``path`` imports (``from ohem.x import y`` counts ``ohem.x.y`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    known, out = modules(), set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ohem"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("ohem"))
    return out


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for name, path in modules().items():
        if name == "ohem":  # the package itself re-exports the public API
            continue
        for target in imports(path, top_level_only=False):
            if target != "ohem" and layer_of(target) > layer_of(name) and (name, target) not in UPWARD:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_module_level_imports_form_no_loop():
    graph = {
        name: {t for t in imports(path, top_level_only=True) if t in modules()} for name, path in modules().items()
    }
    for name in graph:  # a package imports its modules through __init__: only module-to-module edges count
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".") and t != "ohem"}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, " -> ".join([*stack, node, nxt])
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
