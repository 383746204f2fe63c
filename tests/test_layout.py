"""The package layout: each subpackage imports only from those before it; each concept is defined once."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "stripe"
#: the data flow; a subpackage may import from those listed before it (and the base modules)
ORDER = ["nn", "gates", "data", "train", "record", "analysis", "viz", "experiments"]
BASE = {"fsio", "errors", "device"}  # file helpers, error classes and the device: every layer may use them


def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(PKG)): ast.parse(p.read_text(), str(p)) for p in PKG.rglob("*.py")}


def _imports(path: str, tree: ast.Module) -> set[str]:
    """Top-level stripe subpackages/modules imported by a file (relative imports resolved)."""
    parts = Path(path).with_suffix("").parts  # e.g. ("record", "sweep")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[:-node.level]) if len(parts) >= node.level else []
                target = base + (node.module.split(".") if node.module else [])
                names = [target[0]] if target else [a.name for a in node.names]
            elif node.module and node.module.startswith("stripe."):
                names = [node.module.split(".")[1]]
            elif node.module == "stripe":
                names = [a.name for a in node.names]
            else:
                continue
            found.update(names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("stripe."):
                    found.add(a.name.split(".")[1])
    return found


def test_each_subpackage_imports_only_from_those_before_it():
    bad = []
    for path, tree in _modules().items():
        top = Path(path).parts[0] if len(Path(path).parts) > 1 else None
        if top not in ORDER:
            continue  # cli.py, __init__.py, __main__.py and the base modules
        allowed = set(ORDER[: ORDER.index(top) + 1]) | BASE | {"__version__"}
        for name in _imports(path, tree) - allowed:
            bad.append(f"stripe/{path} imports stripe.{name}")
    assert not bad, "\n".join(bad)


def _definitions() -> dict[str, list[str]]:
    """Module-level functions, classes and assigned names -> the files defining them."""
    defs: dict[str, list[str]] = defaultdict(list)
    for path, tree in _modules().items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defs[node.name].append(path)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        defs[t.id].append(path)
    return defs


@pytest.mark.parametrize("name", [
    "RECORDING_FORMAT", "MANIFEST_NAME", "KINDS", "MOMENT_KEYS", "STATS_SCHEMA", "RUN_FORMAT",
    "variant_label", "config_label", "variant_rank", "slug", "variants", "parse_label",
    "unwrap", "set_submodule", "count_params", "stratified_indices", "probe_and_score_indices", "eval_sets",
    "find_gates", "select_gates", "fold_norm", "reparameterize", "batch_moments", "Recording", "RecordingWriter",
    "resolve_device", "autocast", "evaluate", "deployed", "read_run", "data_root", "notebook_path",
])
def test_one_home_per_concept(name):
    homes = _definitions()[name]
    assert len(homes) == 1, f"{name} is defined in {homes}"


def test_min_psi_size_lives_on_the_gate_classes_only():
    homes = []
    for path, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "min_psi_size" for t in targets):
                    homes.append(path)
    assert sorted(homes) == ["nn/srm.py", "nn/taps.py"]  # the base class default and SRM's override


def test_the_recorder_knows_no_attention_class_by_name():
    """Discovery comes from the registry: record/ names no attention class of nn/."""
    from stripe.nn import gate_classes

    names = {cls.__name__ for cls in gate_classes()}
    for path, tree in _modules().items():
        if not path.startswith("record/"):
            continue
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
               {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not (used & names), f"stripe/{path} names {used & names}"


def test_the_cli_holds_no_business_logic():
    """cli.py only parses and dispatches: its handlers are short and it defines no classes."""
    tree = _modules()["cli.py"]
    assert not [n for n in tree.body if isinstance(n, ast.ClassDef)]
    long = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name != "build_parser"
            and n.end_lineno - n.lineno > 30]
    assert not long, f"handlers longer than 30 lines: {long}"


def test_public_api_resolves():
    import stripe

    for name in stripe.__all__:
        assert getattr(stripe, name) is not None, name
