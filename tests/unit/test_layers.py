"""The README's layer order, checked on the source: each module imports only modules of its
own layer or of the layers before it, and every module of the package has a layer."""
import ast
from pathlib import Path

import pytest

import phantom

PACKAGE = Path(phantom.__file__).parent

# The README's architecture, left to right: a module may import from its own layer and from those before.
LAYERS = (
    ("maths", ("protocol", "files", "trajectory", "heap", "geometry", "transitions", "laws")),
    ("models", ("zoo", "contexts", "dynamics")),
    ("run layer", ("store", "runs", "search", "critical", "plans", "progress", "campaign", "dryrun", "cluster",
                   "executor")),
    ("claims", ("claims",)),
    ("output", ("plots", "report")),
    ("practitioners", ("monitor", "callback", "predict")),
    ("entry points", ("pytest_plugin", "cli", "__main__", "__init__")),
)
RANK = {m: i for i, (_, modules) in enumerate(LAYERS) for m in modules}


def imports(module: str) -> set[str]:
    """The phantom modules ``module`` imports (``from . import x``, ``from .x import y``), at any depth."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return {m for m in found if (PACKAGE / f"{m}.py").is_file()}


def test_every_module_has_a_layer():
    assert {p.stem for p in PACKAGE.glob("*.py")} == set(RANK)


@pytest.mark.parametrize("module", sorted(RANK))
def test_imports_follow_the_layer_order(module):
    later = {m: LAYERS[RANK[m]][0] for m in imports(module) if RANK[m] > RANK[module]}
    assert not later, f"{module} ({LAYERS[RANK[module]][0]}) imports from a later layer: {later}"


def test_the_maths_imports_no_model_code():
    maths = dict(LAYERS)["maths"]
    assert all(imports(m) <= set(maths) for m in maths)
