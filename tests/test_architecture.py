"""The import rules of docs/architecture.md, read statically from every module (lazy imports included)."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sslprobe"
COMMANDS = ("images", "pretraining", "extraction", "probing", "finetuning", "study")
# folder → command folders it must never import
FORBIDDEN = {
    "": COMMANDS,  # shared leaves (cli, demo and __init__ are the top and are exempt below)
    "images": ("pretraining", "extraction", "probing", "finetuning", "study"),
    "pretraining": ("extraction", "probing", "finetuning", "study"),
    "extraction": ("pretraining", "probing", "finetuning", "study"),
    "probing": ("pretraining", "extraction", "finetuning", "study"),
    "finetuning": ("pretraining", "extraction", "study"),
    "study": (),  # the orchestrator runs every command through its public functions
}
TOP = {"cli.py", "demo.py", "__init__.py", "__main__.py"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("sslprobe.")}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        folder = rel.parts[0] if len(rel.parts) > 1 else ""
        if folder == "" and rel.name in TOP:
            continue
        yield pytest.param(path, folder, id=str(rel))


@pytest.mark.parametrize("path, folder", list(_modules()))
def test_no_upward_or_sideways_imports(path, folder):
    bad = sorted(n for n in _imports(path) if n.split(".")[1] in FORBIDDEN.get(folder, ()))
    assert not bad, f"{path.relative_to(PKG)} imports {bad} (docs/architecture.md, Import rules)"


def test_the_rules_would_catch_a_violation(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from sslprobe.probing.solver import fit\n")
    assert "sslprobe.probing.solver" in _imports(f)
