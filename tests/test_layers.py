"""The layer rules of DESIGN.md, checked on every import statement of the package (top-level or inside a
function): a new file that breaks one fails here with the module and the import."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "textdiff"

RULES = {
    # layer: packages it must never import
    "modeling": ("textdiff.objectives", "textdiff.samplers", "textdiff.train", "textdiff.families", "textdiff.rl",
                 "textdiff.pipelines", "textdiff.evaluation"),
    "data": ("textdiff.modeling", "textdiff.objectives", "textdiff.samplers", "textdiff.train", "textdiff.families"),
    "schedules.py": ("textdiff.modeling", "textdiff.objectives", "textdiff.samplers", "textdiff.train"),
    "samplers": ("textdiff.train", "textdiff.data", "textdiff.rl", "textdiff.pipelines", "textdiff.families"),
    "objectives": ("textdiff.rl", "textdiff.adapters", "textdiff.train", "textdiff.samplers", "textdiff.families"),
    "families": ("textdiff.train", "textdiff.rl", "textdiff.cli"),
    "pipelines": ("textdiff.train", "textdiff.rl", "textdiff.families"),
    "evaluation": ("textdiff.train", "textdiff.rl", "textdiff.families"),
}


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_never_imports_what_sits_above_it(layer):
    target = PACKAGE / layer
    files = [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
    assert files, f"no files under {target}"
    leaks = [(str(f.relative_to(PACKAGE)), m) for f in files for m in sorted(_imports(f)) if m.startswith(RULES[layer])]
    assert not leaks, f"{layer} imports what it must not: {leaks}"
