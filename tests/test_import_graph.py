"""The import graph has no circles between the harness adapters and their registration, or between the gate
maths and the methods: each pair imports one way only (function-level imports included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (relative imports by their last part)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names.update(f"{node.module}.{a.name}" if node.module else a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("module, must_not_import", [
    ("truthprobe_eval/gating.py", "interventions"),
    ("model_adapters/vlmeval_gated.py", "vlmeval_registration"),
    ("tasks/pope/vlmeval_dataset.py", "vlmeval_registration"),
    ("tasks/chair/vlmeval_dataset.py", "vlmeval_registration"),
    ("tasks/gqa/vlmeval_dataset.py", "vlmeval_registration"),
    ("tasks/omnimedvqa/vlmeval_dataset.py", "vlmeval_registration"),
])
def test_one_way_imports(module, must_not_import):
    found = [name for name in _imports(ROOT / module) if must_not_import in name.split(".")]
    assert not found, f"{module} imports {found}"


def test_the_other_way_exists():
    """The edges kept: the method imports the gate maths, the registration imports the gated model."""
    assert any("gating" in n.split(".") for n in _imports(ROOT / "truthprobe_eval/interventions/truthprobe.py"))
    assert any("vlmeval_gated" in n.split(".") for n in _imports(ROOT / "model_adapters/vlmeval_registration.py"))
