"""The import rules of docs/architecture.md, read statically from every module (lazy imports included).

Four rules: no upward or sideways imports between folders; no subpackage or shared leaf imports the package
root (``import sslprobe``, ``from sslprobe import X``: the lazy API sits on top of them); no private name
(``_x``) is imported from another folder; and no import cycle, not even one closed only by imports under
``if TYPE_CHECKING:``. Each rule's helper takes a path, so the last tests run it on a synthetic tree and show
it fails on a violation.
"""
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
    "runtime": COMMANDS,  # a shared leaf, split by concern
    "config": COMMANDS,  # torch-free options (and see test_configs_are_torch_free_leaves)
    "cli": (),  # the top: it calls every command
}
TOP = {"demo.py", "__init__.py", "__main__.py"}
# what the configs may import: each other and the one error type (the command line checks them before torch loads)
CONFIG_IMPORTS = ("sslprobe.config", "sslprobe.errors")
# the probing modules fine-tuning may use: the metrics, the report writers, the hold-out draws, the label-curve
# points and the predictions CSV, so a fine-tuned row is scored, drawn and written as a probe row
FINETUNING_USES_OF_PROBING = {"metrics", "report", "holdout", "labeleff", "predict"}
ROOT_IMPORTERS = {"__init__.py", "__main__.py"}  # the only modules that may import the package root


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("sslprobe.")}


def _root_imports(path: Path) -> list[str]:
    """``import sslprobe`` and ``from sslprobe import X`` statements, as written (X a name or a submodule)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [f"import {a.name}" for a in node.names if a.name == "sslprobe"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "sslprobe":
            out.append(f"from sslprobe import {', '.join(a.name for a in node.names)}")
    return out


def _folder_of(module: str) -> str:
    """'sslprobe.probing.report' → 'probing'; a shared leaf ('sslprobe.fileio') → ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))  # __version__ is public


def _private_imports(path: Path, folder: str) -> list[str]:
    """``from sslprobe.<other folder>.m import _x``: a private name taken from outside its own folder."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sslprobe.")
                and _folder_of(node.module) != folder):
            out += [f"{node.module}.{a.name}" for a in node.names if _private(a.name)]
    return out


def _module_name(pkg: Path, path: Path) -> str:
    rel = path.relative_to(pkg.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _graph(pkg: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports, at module level, lazily or under TYPE_CHECKING alike."""
    files = {_module_name(pkg, p): p for p in sorted(pkg.rglob("*.py"))}
    return {name: {n for n in _imports(p) if n in files and n != name} for name, p in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        folder = rel.parts[0] if len(rel.parts) > 1 else ""
        if folder == "" and rel.name in TOP:
            continue
        yield pytest.param(path, folder, id=str(rel))


def _all_modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        yield pytest.param(path, rel.parts[0] if len(rel.parts) > 1 else "", id=str(rel))


@pytest.mark.parametrize("path, folder", list(_modules()))
def test_no_upward_or_sideways_imports(path, folder):
    bad = sorted(n for n in _imports(path) if n.split(".")[1] in FORBIDDEN.get(folder, ()))
    assert not bad, f"{path.relative_to(PKG)} imports {bad} (docs/architecture.md, Import rules)"


@pytest.mark.parametrize("path", sorted((PKG / "config").glob("*.py")), ids=lambda p: p.name)
def test_configs_are_torch_free_leaves(path):
    bad = sorted(n for n in _imports(path) if not n.startswith(CONFIG_IMPORTS))
    assert not bad, f"config/{path.name} imports {bad}: configs import only each other and sslprobe.errors"
    heavy = {"torch", "timm", "numpy", "datasets", "PIL"}
    tops = {a.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Import)
            for a in node.names} | {node.module.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                                    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert not tops & heavy, f"config/{path.name} imports {sorted(tops & heavy)}"


def test_only_the_top_imports_the_command_line():
    users = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                   if any(n.startswith("sslprobe.cli") for n in _imports(p)) and p.parent.name != "cli"
                   and p.name != "__main__.py")
    assert not users, f"{users} import sslprobe.cli: the command line sits on top, nothing imports it"


@pytest.mark.parametrize("path", sorted((PKG / "finetuning").glob("*.py")), ids=lambda p: p.name)
def test_finetuning_uses_only_probings_public_modules(path):
    used = {n.split(".")[2] for n in _imports(path) if n.startswith("sslprobe.probing.")}
    extra = used - FINETUNING_USES_OF_PROBING
    assert not extra, f"finetuning/{path.name} imports probing.{sorted(extra)}"


@pytest.mark.parametrize("path, folder", list(_all_modules()))
def test_only_the_top_imports_the_package_root(path, folder):
    if folder == "" and path.name in ROOT_IMPORTERS:
        return
    bad = _root_imports(path)
    assert not bad, (f"{path.relative_to(PKG)}: {bad}; import the module itself (sslprobe.version for __version__, "
                     "`import sslprobe.checkpoint as ckpts`), never the package root")


@pytest.mark.parametrize("path, folder", list(_all_modules()))
def test_no_private_name_crosses_a_folder(path, folder):
    bad = _private_imports(path, folder)
    assert not bad, f"{path.relative_to(PKG)} imports private {bad} from another folder; make it public where it lives"


def test_no_import_cycles_not_even_under_type_checking():
    cycles = _cycles(_graph(PKG))
    assert not cycles, f"import cycles (TYPE_CHECKING and lazy imports count): {cycles}"


def test_the_rules_would_catch_a_violation(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from sslprobe.probing.solver import fit\n")
    assert "sslprobe.probing.solver" in _imports(f)


def test_the_root_and_private_rules_would_catch_a_violation(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import sslprobe\nfrom sslprobe import __version__\nimport sslprobe.fileio as io\n"
                 "from sslprobe.probing.search import _walk, walk\nfrom sslprobe.study.plan import _hub_reachable\n"
                 "from sslprobe.version import __version__\n")
    assert _root_imports(f) == ["import sslprobe", "from sslprobe import __version__"]
    assert _private_imports(f, "study") == ["sslprobe.probing.search._walk"]
    assert _private_imports(f, "") == ["sslprobe.probing.search._walk", "sslprobe.study.plan._hub_reachable"]


def test_the_cycle_rule_would_catch_a_type_checking_cycle(tmp_path):
    pkg = tmp_path / "sslprobe"
    (pkg / "study").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "study" / "__init__.py").write_text("")
    (pkg / "study" / "run.py").write_text("def f():\n    from sslprobe.study import report\n")
    (pkg / "study" / "report.py").write_text("from sslprobe.study.document import build\n")
    (pkg / "study" / "document.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sslprobe.study.run import Record\n")
    (pkg / "study" / "leaf.py").write_text("from sslprobe.study.report import build\n")
    assert _cycles(_graph(pkg)) == [["sslprobe.study.document", "sslprobe.study.report", "sslprobe.study.run"]]
    (pkg / "study" / "document.py").write_text("from sslprobe.study.leaf import x\n")
    assert _cycles(_graph(pkg)) == [["sslprobe.study.document", "sslprobe.study.leaf", "sslprobe.study.report"]]
    (pkg / "study" / "leaf.py").write_text("")
    assert _cycles(_graph(pkg)) == []
