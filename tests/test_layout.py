"""The package layout as rules: who may import whom, one home per name, attention classes kept in their layers."""
from __future__ import annotations

import ast
import functools
import inspect
import sys
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "stripe"
#: the data flow; a subpackage may import from those listed before it (and the base modules)
ORDER = ["nn", "gates", "data", "train", "record", "analysis", "viz", "experiments"]
#: top-level modules that are not base modules: the command line, the package and ``python -m stripe``
FRONT = {"cli", "__init__", "__main__"}
#: names the package defines in more than one file on purpose: each package's export list, and the entry
#: point of a module that also runs as ``python -m`` (cli and experiments/zoo)
SHARED_NAMES = {"__all__", "main"}
#: names found defined twice and reported for renaming (each pair means different things or duplicates code);
#: delete an entry once its name has one home
RENAME_PENDING: dict[str, set[str]] = {}


@functools.lru_cache(maxsize=None)
def _modules() -> dict[str, ast.Module]:
    """Every module of the package, parsed once: path relative to stripe/ -> syntax tree."""
    return {str(p.relative_to(PKG)): ast.parse(p.read_text(), str(p)) for p in sorted(PKG.rglob("*.py"))}


def _base_modules() -> set[str]:
    """Top-level modules every layer may use (fsio, errors, …): every top-level module but those in FRONT."""
    return {Path(p).stem for p in _modules() if len(Path(p).parts) == 1} - FRONT


def _imports(path: str, tree: ast.Module) -> set[str]:
    """Top-level stripe subpackages/modules imported by a file (relative imports resolved), anywhere in it."""
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


def test_every_subpackage_has_a_place_in_the_order():
    subpackages = {Path(p).parts[0] for p in _modules() if len(Path(p).parts) > 1}
    assert subpackages == set(ORDER), f"place {sorted(subpackages ^ set(ORDER))} in ORDER (or drop it from there)"


def test_each_subpackage_imports_only_from_those_before_it():
    base = _base_modules()
    bad = []
    for path, tree in _modules().items():
        parts = Path(path).parts
        if len(parts) == 1:
            continue
        allowed = set(ORDER[: ORDER.index(parts[0]) + 1]) | base | {"__version__"}
        bad += [f"stripe/{path} imports stripe.{name}" for name in sorted(_imports(path, tree) - allowed)]
    assert not bad, "\n".join(bad)


def test_top_level_modules():
    """Base modules (fsio, errors, …) import no subpackage and not the CLI; errors imports nothing of the package;
    the package's __init__ imports nothing when imported (its API loads on first use); __main__ runs the CLI;
    cli may import anything."""
    base = _base_modules()
    assert {"fsio", "errors"} <= base
    bad = []
    for path, tree in _modules().items():
        if len(Path(path).parts) > 1:
            continue
        name, imported = Path(path).stem, _imports(path, tree)
        rules = {"cli": None, "__main__": {"cli"}, "__init__": set(), "errors": set()}
        allowed = rules.get(name, base | {"__version__"})
        if allowed is not None:
            bad += [f"stripe/{path} imports stripe.{m}" for m in sorted(imported - allowed - {name})]
    assert not bad, "\n".join(bad)


def test_imports_are_resolved_like_python_does():
    def found(path: str, source: str) -> set[str]:
        return _imports(path, ast.parse(source))

    assert found("record/sweep.py", "from ..nn import x\nfrom .config import y\nfrom .. import fsio") == \
        {"nn", "record", "fsio"}
    assert found("record/sweep.py", "def f():\n    import stripe.data.sets\n    from stripe.train import z") == \
        {"data", "train"}
    assert found("fsio.py", "from .errors import E\nfrom . import __version__\nimport os") == {"errors", "__version__"}
    assert found("cli.py", "from stripe import analysis") == {"analysis"}


def _defined_names(body: list[ast.stmt]) -> list[str]:
    """Functions, classes and assigned names of a module's top level (including inside top-level if/try)."""
    names = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                elts = t.elts if isinstance(t, ast.Tuple) else [t]
                names += [e.id for e in elts if isinstance(e, ast.Name)]
        elif isinstance(node, ast.If):
            names += _defined_names(node.body) + _defined_names(node.orelse)
        elif isinstance(node, ast.Try):
            names += _defined_names(node.body) + [n for h in node.handlers for n in _defined_names(h.body)]
            names += _defined_names(node.orelse) + _defined_names(node.finalbody)
    return names


def _definitions() -> dict[str, set[str]]:
    """Module-level name -> the files defining it."""
    defs: dict[str, set[str]] = defaultdict(set)
    for path, tree in _modules().items():
        for name in _defined_names(tree.body):
            defs[name].add(path)
    return defs


def test_one_home_per_name():
    """No function, class or constant is defined at the top level of two modules (the scan sees every name)."""
    twice = {name: files for name, files in _definitions().items() if len(files) > 1 and name not in SHARED_NAMES}
    new = {n: sorted(f) for n, f in twice.items() if RENAME_PENDING.get(n) != f}
    assert not new, f"defined in more than one module (one home, or a distinct name each): {new}"
    done = sorted(set(RENAME_PENDING) - set(twice))
    assert not done, f"{done} now have one home: delete them from RENAME_PENDING"


def test_one_home_scan_sees_definitions_in_every_form():
    tree = ast.parse("A = 1\nB: int = 2\nC, D = 3, 4\ndef f(): pass\nclass K: pass\n"
                     "if True:\n    E = 5\ntry:\n    F = 6\nexcept ImportError:\n    G = 7\n"
                     "def g():\n    H = 8\n")
    assert sorted(_defined_names(tree.body)) == ["A", "B", "C", "D", "E", "F", "G", "K", "f", "g"]


def test_min_psi_size_lives_on_the_gate_classes_only():
    homes = []
    for path, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "min_psi_size" for t in targets):
                    homes.append(path)
    assert sorted(homes) == ["nn/srm.py", "nn/taps.py"]  # the base class default and SRM's override


def _attention_class_names() -> set[str]:
    """Every class defined in the module of a registered attention (SE, IEBatchNorm, IEGate, DIACell, DIAStep …)."""
    from stripe.nn.registry import get_spec, list_attn

    modules = {sys.modules[c.__module__] for n in list_attn() for c in (get_spec(n).gate, get_spec(n).build) if c}
    return {name for m in modules for name, c in vars(m).items() if inspect.isclass(c) and c.__module__ == m.__name__}


def test_attention_classes_are_named_only_in_the_layers_and_gates_packages():
    """Everything above nn/ and gates/ reaches attention modules through the registry and the gates, never by
    class name (so a newly registered module is recorded, ablated and drawn like the others)."""
    names = _attention_class_names()
    assert {"SE", "ECA", "CBAM", "SRM", "IEBatchNorm", "IEGate", "SPA", "DIACell", "DIAStep"} <= names
    bad = []
    for path, tree in _modules().items():
        if Path(path).parts[0] in ("nn", "gates"):
            continue
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        used |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        bad += [f"stripe/{path} names {sorted(used & names)}"] if used & names else []
    assert not bad, "\n".join(bad)


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
