"""The package layout as rules: who may import whom, one home per name, attention classes kept in their layers."""
from __future__ import annotations

import ast
import functools
import inspect
import sys
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "stripe"
#: the data flow; a subpackage may import from those listed before it (and the base modules); the command line
#: (``cli``) is the top floor: it may import every layer and none imports it
ORDER = ["nn", "gates", "data", "train", "record", "analysis", "viz", "experiments", "cli"]
#: top-level modules that are not base modules: the package and ``python -m stripe``
FRONT = {"__init__", "__main__"}
#: names the package defines in more than one file on purpose: each package's export list, and the entry
#: point of a module that also runs as ``python -m`` (the cli package and experiments/zoo)
SHARED_NAMES = {"__all__", "main"}
#: names found defined twice and reported for renaming (each pair means different things or duplicates code);
#: delete an entry once its name has one home
RENAME_PENDING: dict[str, set[str]] = {}
#: import circles that pass through an import inside a function, left to the work that removes them; delete an
#: entry once its circle is gone
CIRCLES_PENDING: list[set[str]] = []
#: the layers a new attention joins by its registration alone (ARCHITECTURE.md, "Extending": the model, recording,
#: the ablation, the folds, the figures): none of them may tell attentions apart by name
ANY_ATTENTION = ("nn", "gates", "record", "analysis", "viz")


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
    the package's __init__ imports nothing when imported (its API loads on first use); __main__ runs the CLI."""
    base = _base_modules()
    assert {"fsio", "errors"} <= base
    bad = []
    for path, tree in _modules().items():
        if len(Path(path).parts) > 1:
            continue
        name, imported = Path(path).stem, _imports(path, tree)
        rules = {"__main__": {"cli"}, "__init__": set(), "errors": set()}
        allowed = rules.get(name, base | {"__version__"})
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
    assert found("cli/train.py", "from stripe import analysis\nfrom ..train import x\nfrom .common import y") == \
        {"analysis", "train", "cli"}


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


def _assigns(node: ast.AST, name: str) -> bool:
    """Whether ``node`` assigns ``name`` (as a plain name or as an attribute, ``x.name = …``)."""
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if (isinstance(e, ast.Name) and e.id == name) or (isinstance(e, ast.Attribute) and e.attr == name):
                    return True
    return False


def _module_name(path: str) -> str:
    """The import name of a file of the package: ``nn/taps.py`` -> ``stripe.nn.taps``."""
    parts = Path(path).with_suffix("").parts
    return ".".join(["stripe", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def test_min_psi_size_lives_on_the_gate_classes_only():
    """The registry reads ``min_psi_size`` from a gate class: every assignment of it is a statement of the body of a
    ChannelAttention class (the base class's default, or a gate's own), none anywhere else."""
    import importlib

    from stripe.nn import ChannelAttention

    homes, stray = [], []
    for path, tree in _modules().items():
        in_class = set()
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for stmt in cls.body:
                if _assigns(stmt, "min_psi_size"):
                    homes.append((path, cls.name))
                    in_class.add(id(stmt))
        stray += [f"stripe/{path}:{n.lineno}" for n in ast.walk(tree)
                  if _assigns(n, "min_psi_size") and id(n) not in in_class]
    assert not stray, f"min_psi_size assigned outside a gate class's body: {stray}"
    classes = {(path, name): getattr(importlib.import_module(_module_name(path)), name) for path, name in homes}
    assert not [h for h, c in classes.items() if not issubclass(c, ChannelAttention)], classes
    # the scan sees the default where the registry's readers find it: the base class declares it itself
    base = (str(Path(inspect.getsourcefile(ChannelAttention)).relative_to(PKG)), ChannelAttention.__name__)
    assert "min_psi_size" in vars(ChannelAttention) and base in classes


def test_the_assignment_scan_sees_every_form():
    tree = ast.parse("a = 1\nb: int = 2\nc += 3\nx.a = 4\n(a, d) = 5, 6\nf(a=7)\n")
    assert [_assigns(n, "a") for n in tree.body] == [True, False, False, True, True, False]


def _attention_class_names() -> set[str]:
    """Every class defined in the module of a registered attention (SE, IEBatchNorm, IEGate, DIACell, DIAStep …)."""
    from stripe.nn.registry import get_spec, list_attn

    modules = {sys.modules[c.__module__] for n in list_attn() for c in (get_spec(n).gate, get_spec(n).build) if c}
    return {name for m in modules for name, c in vars(m).items() if inspect.isclass(c) and c.__module__ == m.__name__}


def _subclasses(cls: type) -> set[type]:
    """Every subclass of ``cls``, at any depth."""
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_attention_classes_are_named_only_in_the_layers_and_gates_packages():
    """Everything above nn/ and gates/ reaches attention modules through the registry and the gates, never by
    class name (so a newly registered module is recorded, ablated and drawn like the others)."""
    from stripe.nn import ChannelAttention, GatedNorm
    from stripe.nn.registry import get_spec, list_attn

    names = _attention_class_names()
    # the scan sees every class the registry builds, and every attention class the package defines
    built = {c.__name__ for n in list_attn() for c in (get_spec(n).gate, get_spec(n).build) if c}
    contracts = ChannelAttention.__module__  # the base classes of the placements live beside ChannelAttention
    defined = {c.__name__ for c in _subclasses(ChannelAttention) | _subclasses(GatedNorm)
               if c.__module__.startswith("stripe.") and c.__module__ != contracts}
    assert built and built <= names and defined <= names, (built | defined) - names
    bad = []
    for path, tree in _modules().items():
        if Path(path).parts[0] in ("nn", "gates"):
            continue
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        used |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        bad += [f"stripe/{path} names {sorted(used & names)}"] if used & names else []
    assert not bad, "\n".join(bad)


def _cli_modules() -> dict[str, ast.Module]:
    """The command line's modules: every module of the ``cli`` package."""
    return {p: t for p, t in _modules().items() if Path(p).parts[0] == "cli"}


#: libraries that compute (tensors, arrays, tables): the command line hands its options to the library, which
#: computes; it imports none of them
COMPUTING = ("torch", "numpy", "pandas", "scipy", "matplotlib")


def _third_party_imports(tree: ast.Module) -> set[str]:
    """The top-level names of the modules outside the package that a file imports, anywhere in it."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names - {"stripe"}


def _handlers(tree: ast.Module) -> list[ast.FunctionDef]:
    """The functions that receive parsed options (a parameter annotated ``argparse.Namespace``): the handlers. The
    functions that declare the options receive a parser instead, so the rule below leaves them out by what they
    are, not by name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            if any(a.annotation is not None and ast.unparse(a.annotation).split(".")[-1] == "Namespace"
                   for a in args):
                found.append(node)
    return found


def test_the_cli_holds_no_business_logic():
    """The command line only parses and dispatches: every handler is short (a call of the library and its printing)
    and it defines no classes."""
    import stripe.cli as cli

    trees = _cli_modules()
    assert trees
    assert not [f"{p}: {n.name}" for p, t in trees.items() for n in ast.walk(t) if isinstance(n, ast.ClassDef)]
    handlers = {n.name: n for t in trees.values() for n in _handlers(t)}
    dispatched = {f.__name__ for f in getattr(cli, "COMMANDS", {}).values()}
    assert dispatched and dispatched <= set(handlers), f"handlers not seen by the scan: {dispatched - set(handlers)}"
    long = [name for name, n in handlers.items() if n.end_lineno - n.lineno > 30]
    assert not long, f"handlers longer than 30 lines: {long}"
    computing = {p: sorted(_third_party_imports(t) & set(COMPUTING)) for p, t in trees.items()}
    computing = {p: m for p, m in computing.items() if m}
    assert not computing, f"the CLI computes (imports {computing})"


def test_each_commands_parser_lives_beside_its_handler():
    """Every command is declared (its subparser and options) by a function of the module that holds its handler,
    and the parser offers exactly the commands that are dispatched."""
    import argparse

    import stripe.cli as cli
    from stripe.cli.common import PARSERS

    assert set(PARSERS) == set(cli.COMMANDS)
    apart = {name: (PARSERS[name].__module__, cli.COMMANDS[name].__module__) for name in cli.COMMANDS
             if PARSERS[name].__module__ != cli.COMMANDS[name].__module__}
    assert not apart, f"parser and handler in different modules: {apart}"
    homes = {f.__module__ for f in cli.COMMANDS.values()}  # a module per command or small group, not one for all
    assert len(homes) > 1 and not homes & {"stripe.cli", "stripe.cli.common"}, homes
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(cli.COMMANDS), "the parser's commands are the dispatched ones, in their order"


def test_the_computing_import_scan_sees_every_form():
    tree = ast.parse("import torch.nn as nn\nfrom numpy import x\nfrom . import y\nfrom stripe.nn import z\n"
                     "def f():\n    import pandas\n")
    assert _third_party_imports(tree) == {"torch", "numpy", "pandas"}


def test_the_handler_scan_tells_handlers_from_option_declarations():
    tree = ast.parse("import argparse\n"
                     "def h(args: argparse.Namespace) -> int: pass\n"
                     "def k(x, *, args: Namespace): pass\n"
                     "def build(p: argparse.ArgumentParser) -> None: pass\n"
                     "def parser() -> argparse.ArgumentParser: pass\n")
    assert [n.name for n in _handlers(tree)] == ["h", "k"]


# ----------------------------------------------------------------------------- import circles
def _import_targets(path: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The files of the package an import statement of ``path`` loads: the most specific module it names (``from .
    import fsio`` -> ``fsio.py``; ``from ..nn import X`` -> ``nn/__init__.py``). A package's ``__init__`` that runs
    first because one of its submodules is imported is not counted: it would close every package whose
    ``__init__`` imports its own submodules into a circle."""
    files = set(_modules())

    def file_of(parts: list[str]) -> str | None:
        for cand in ("/".join(parts) + ".py", "/".join([*parts, "__init__.py"])):
            if cand in files:
                return cand
        return None

    here = list(Path(path).parts[:-1])  # the package of the file
    if isinstance(node, ast.ImportFrom):
        if node.level:
            if node.level - 1 > len(here):
                return set()
            base = here[:len(here) - (node.level - 1)]
        elif node.module and (node.module == "stripe" or node.module.startswith("stripe.")):
            base = []
        else:
            return set()
        mod = node.module.split(".") if node.module else []
        target = base + (mod[1:] if not node.level else mod)
        out = set()
        for alias in node.names:
            f = file_of([*target, alias.name]) or file_of(target)
            out |= {f} if f else set()
        return out
    out = set()
    for alias in node.names:
        parts = alias.name.split(".")
        if parts[0] == "stripe":
            while len(parts) > 1 and file_of(parts[1:]) is None:
                parts.pop()
            f = file_of(parts[1:])
            out |= {f} if f else set()
    return out


def _top_level_imports(body: list[ast.stmt]) -> list[ast.stmt]:
    """The import statements that run when the module is imported (module level, also inside if/try)."""
    out = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, (ast.If, ast.Try)):
            out += _top_level_imports(node.body) + _top_level_imports(node.orelse)
            out += _top_level_imports(getattr(node, "finalbody", []))
            out += [n for h in getattr(node, "handlers", []) for n in _top_level_imports(h.body)]
    return out


def _import_graph(*, inside_functions: bool) -> dict[str, set[str]]:
    """File -> the files of the package it imports: at module level only, or also inside functions."""
    graph = {}
    for path, tree in _modules().items():
        nodes = ([n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))] if inside_functions
                 else _top_level_imports(tree.body))
        graph[path] = {t for n in nodes for t in _import_targets(path, n)} - {path}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one file (Tarjan): each is one or more import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_at_module_level():
    """No file of the package imports, while it is being imported, a file that imports it back (directly or
    through others): the import graph of module-level imports has no circle."""
    graph = _import_graph(inside_functions=False)
    assert sum(map(len, graph.values())) > len(graph) // 2  # the scan sees the imports
    assert not _circles(graph), _circles(graph)


def test_no_import_circle_counting_imports_inside_functions():
    """Nor through the imports inside functions (deferred, yet a circle all the same: the two files need each other)."""
    found = _circles(_import_graph(inside_functions=True))
    new = [sorted(c) for c in found if c not in CIRCLES_PENDING]
    assert not new, f"import circles: {new}"
    gone = [sorted(c) for c in CIRCLES_PENDING if c not in found]
    assert not gone, f"{gone} are no longer circles: delete them from CIRCLES_PENDING"


def test_the_import_scan_resolves_like_python_and_finds_circles():
    def targets(path: str, source: str) -> set[str]:
        return {t for n in ast.parse(source).body for t in _import_targets(path, n)}

    assert targets("gates/trace.py", "from .find import x\nfrom ..nn import y\nfrom .. import fsio\nimport os") == \
        {"gates/find.py", "nn/__init__.py", "fsio.py"}
    assert targets("gates/__init__.py", "from .gate import G\nfrom ..nn.cbam import C") == {"gates/gate.py",
                                                                                          "nn/cbam.py"}
    assert targets("cli/collect.py", "import stripe.record.sweep\nfrom stripe.nn import taps\nfrom .. import errors"
                   "\nfrom .common import x") == {"record/sweep.py", "nn/taps.py", "errors.py", "cli/common.py"}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _circles(graph) == [{"a", "b", "c"}]
    tree = ast.parse("import a\nif x:\n    import b\ntry:\n    import c\nexcept E:\n    import d\n"
                     "def f():\n    import e\n")
    assert [n.names[0].name for n in _top_level_imports(tree.body)] == ["a", "b", "c", "d"]


# ----------------------------------------------------------------------------- the registry's own strings
def test_placements_are_read_only_by_the_registry_and_the_model():
    """An attention's placement (``after_bn``, ``in_bn``, ``stage``) is the business of the registry that declares it
    and the model that builds it and folds it (it owns both halves); everything else asks the model."""
    from stripe.nn import AttnSpec, build_model

    owners = {str(Path(inspect.getsourcefile(o)).relative_to(PKG)) for o in (AttnSpec, build_model)}
    readers = {path for path, tree in _modules().items()
               if any(isinstance(n, ast.Attribute) and n.attr == "placement" for n in ast.walk(tree))}
    assert readers - owners == set(), f"read an attention's placement: {sorted(readers - owners)}"
    assert owners <= readers  # the scan sees the readers it allows


def _name_comparisons(tree: ast.Module, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every comparison (==, !=, in, not in) of something with a string in ``names``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                elts = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                found += [(node.lineno, e.value) for e in elts
                          if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value in names]
    return found


def test_no_layer_a_new_attention_joins_tells_attentions_apart_by_name():
    """The registry's names are its own: the layers a new attention joins by registration alone (ANY_ATTENTION)
    compare nothing with a registered attention's name (``attn == "dia"`` would leave a new one out)."""
    from stripe.nn import get_spec
    from stripe.nn.registry import list_attn

    names = set(list_attn())
    registry = str(Path(inspect.getsourcefile(get_spec)).relative_to(PKG))
    bad = [f"stripe/{path}:{line} compares with {name!r}" for path, tree in _modules().items()
           if Path(path).parts[0] in ANY_ATTENTION and path != registry for line, name in _name_comparisons(tree, names)]
    assert not bad, "\n".join(bad)


def test_the_name_comparison_scan_sees_every_form():
    tree = ast.parse("a == 'se'\n'dia' != b\nc in ('x', 'ie')\nd not in ['eca']\ne == 'other'\nf('se')\n")
    assert _name_comparisons(tree, {"se", "dia", "ie", "eca"}) == [(1, "se"), (2, "dia"), (3, "ie"), (4, "eca")]


def test_public_api_resolves():
    import stripe

    for name in stripe.__all__:
        assert getattr(stripe, name) is not None, name
