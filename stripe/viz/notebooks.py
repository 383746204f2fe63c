"""The notebooks' side of the toolkit: where their data is, the artifacts a folder holds (runs,
comparisons, recordings, speed and ablation tables), and headless execution (``stripe figures``).

The notebooks' jupytext sources ship with the package (``stripe.notebooks``, the repository's
``notebooks/`` folder), so ``stripe figures`` works from a wheel. Their default data folder does not
depend on the working directory: an explicit ``source``, else ``$STRIPE_DATA_DIR``, else the
project's ``data/`` found from the package's location (:func:`data_root`).

The tracked pairs stay byte-stable: each ``.py`` header pins what jupytext writes (its
``notebook_metadata_filter`` leaves out the jupytext version; the format version is written), the
``.ipynb`` files keep their cell ids (``make notebooks`` runs ``jupytext --update``), and ``make lab``
saves the bundled notebooks through :func:`clean_saved_notebook`, which drops what opening or running
them adds (outputs, execution counts, the kernel's ``language_info``, widget state, cell timings and trust,
JupyterLab's display name for the kernel), in the ``.ipynb`` and in the ``.py`` jupytext saves beside it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..errors import NotFoundError, UserError
from .. import fsio
from ..nn.variants import config_label, parse_label, slug, variant_rank

__all__ = ["NOTEBOOKS", "Sources", "clean_saved_notebook", "config_label", "data_root", "default_figures_out",
           "discover", "execute_notebook", "metrics_long", "notebook_path", "read_table", "recording_choices",
           "recording_label", "recording_tables", "recordings_by_label", "notebook_source", "run_label", "slug"]

NOTEBOOKS = ("explore_stripes", "paper_figures")


@dataclass
class Sources:
    """The artifacts found under a folder."""

    root: Path
    comparisons: list[Path] = field(default_factory=list)  # folders with results.csv
    runs: list[Path] = field(default_factory=list)  # folders with config.json (training runs)
    recordings: list[Path] = field(default_factory=list)  # folders with manifest.json
    speed: list[Path] = field(default_factory=list)  # speed.csv files
    ablations: list[Path] = field(default_factory=list)  # ablation.csv files
    notes: list[str] = field(default_factory=list)  # what was skipped or is missing, and why

    def describe(self) -> str:
        """One line per kind of artifact, then the notes."""
        rel = lambda ps: ", ".join(str(p.relative_to(self.root)) if p != self.root else "." for p in ps) or "none"
        return "\n".join([f"comparisons: {rel(self.comparisons)}", f"runs: {rel(self.runs)}",
                          f"recordings: {rel(self.recordings)}", f"speed tables: {rel(self.speed)}",
                          f"ablations: {rel(self.ablations)}", *(f"note: {n}" for n in self.notes)])


def discover(source: str | Path) -> Sources:
    """Every artifact under ``source`` (itself included); a clear error if there is none."""
    root = Path(source)
    if not root.exists():
        raise NotFoundError(f"{root}: no such folder")
    s = Sources(root=root)
    from ..fsio import owner_kind

    # figures stripe drew (a demo's own figures/, a `stripe figures --out` folder) copy the tables they were drawn
    # from: outputs, not a second comparison
    drawn = [d for d in root.rglob("*") if d.is_dir() and (owner_kind(d) == "figures" or (
        d.name == "figures" and str(owner_kind(d)).startswith("part of ")))]
    for p in sorted(root.rglob("*")):
        if any(d in p.parents for d in drawn):
            continue
        if p.name == "results.csv":
            s.comparisons.append(p.parent)
        elif p.name == "config.json" and (p.parent / "metrics.csv").exists():
            if _format_of(p).startswith("stripe-run/"):
                s.runs.append(p.parent)
            else:
                s.notes.append(f"{p.parent}: its config.json is not a stripe run's; skipped")
        elif p.name == "log.txt" and _is_official_log(p):
            why = _unusable_official_log(p)
            if why:
                s.notes.append(f"{p}: read as the official ASR code's log and rejected ({why}); skipped")
            else:
                s.runs.append(p.parent)  # a run of the official ASR code: its log's learning curves
        elif p.name == "manifest.json":
            if _format_of(p).startswith("stripe-recording/"):
                s.recordings.append(p.parent)
            else:
                s.notes.append(f"{p}: not a stripe recording's manifest; skipped")
        elif p.name == "speed.csv":
            s.speed.append(p)
        elif p.name == "ablation.csv":
            s.ablations.append(p)
    from ..analysis.stats import has_attention

    recorded = {r.resolve() for r in s.recordings}
    for run in s.runs:
        rec = run / "recording"
        if (run / "config.json").is_file() and has_attention(run) and rec.resolve() not in recorded and not any(
                rec.resolve() in r.parents for r in recorded):
            s.notes.append(f"run {run} has no recording inside it: record it with `stripe collect {run}`, or give "
                           "the folder that holds its recording")
    if not (s.comparisons or s.runs or s.recordings or s.speed or s.ablations):
        raise NotFoundError(f"{root}: no run, comparison, recording, speed or ablation table found"
                            + (f" ({'; '.join(s.notes)})" if s.notes else ""))
    return s


def _format_of(path: Path) -> str:
    """The ``format`` field of a JSON file ('' when it has none or is not JSON)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(d.get("format", "")) if isinstance(d, dict) else ""


def _is_official_log(path: Path) -> bool:
    """Whether ``path`` is the official ASR code's tab-separated log.txt (by its header)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.readline()
    except OSError:
        return False
    return head.startswith("Learning Rate\t") and "Valid Acc." in head


def _unusable_official_log(path: Path) -> str | None:
    """Why the official log ``path`` cannot be drawn (its reader's one line, without the path), or None."""
    from ..train import read_official_log

    try:
        read_official_log(path)
    except (UserError, OSError) as e:
        return str(e).removeprefix(f"{path}: ")
    return None


def recording_label(path: Path) -> str:
    """Variant label of a recording, from its manifest."""
    return config_label(json.loads((path / "manifest.json").read_text())["model"])


def _plain_attention(label: str) -> bool:
    """Whether a variant label is a model whose every tap depends on the input ('+SE', not ASR nor baseline)."""
    try:
        v = parse_label(label)
    except ValueError:
        return False
    return v.attn is not None and not v.asr


def recording_choices(root: str | Path, recordings: Sequence[str | Path]) -> list[tuple[str, str]]:
    """(label, folder) of each recording for a notebook's drop-down: the label is the folder relative to ``root``
    (as given when outside it) and the variant, e.g. 'compare/runs/plus_se_seed0/recording (+SE)'; plain-attention
    models (+att) first, then the paper's variant order, then by folder. The first is the one to open on."""
    root = Path(root).resolve()
    rows = []
    for rec in recordings:
        path = Path(rec).resolve()
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            rel = str(rec)
        try:
            variant = recording_label(path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            variant = "?"
        rows.append((not _plain_attention(variant), variant_rank(variant), rel, variant, str(path)))
    return [(f"{rel or '.'} ({variant})", path) for *_, rel, variant, path in sorted(rows)]


def metrics_long(runs: list[Path]) -> pd.DataFrame:
    """The metrics rows of several runs with ``variant`` and ``seed`` columns (for learning curves); a run of the
    official ASR code contributes its ``log.txt`` (variant from its checkpoint when there is one, else the folder's
    name, marked "official")."""
    frames = []
    for run in runs:
        if not (run / "config.json").is_file():
            frames.append(_official_metrics(run))
            continue
        info = json.loads((run / "config.json").read_text())
        m = pd.read_csv(run / "metrics.csv")
        m["variant"], m["seed"] = config_label(info["model"]), info["train"]["seed"]
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _official_metrics(run: Path) -> pd.DataFrame:
    from ..train import CheckpointError, load_model, read_official_log

    m = read_official_log(run / "log.txt")
    label = run.name
    ckpt = run / "checkpoint.pth.tar"
    if ckpt.is_file():
        try:
            label = config_label(load_model(ckpt).config)
        except (CheckpointError, UserError):
            pass
    m["variant"], m["seed"] = f"{label} (official)", 0
    return m


def recordings_by_label(src: Sources) -> dict[str, Path]:
    """Recording folders keyed by variant label, in the paper's variant order."""
    found = {recording_label(r): r for r in src.recordings}
    return {label: found[label] for label in sorted(found, key=variant_rank)}


def recording_tables(src: Sources) -> dict[str, dict[str, pd.DataFrame]]:
    """Stripe tables of every recording found, keyed by variant label, in the paper's variant order."""
    from ..analysis import compute_tables

    return {label: compute_tables(path) for label, path in recordings_by_label(src).items()}


def read_table(path: str | Path, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV written by the toolkit; empty text cells stay empty strings."""
    df = pd.read_csv(path)
    for c in text_columns:
        if c in df:
            df[c] = df[c].fillna("").astype(str)
    return df


def run_label(run: Path) -> str | None:
    """Variant label of a run directory (None if it is not one)."""
    cfg = run / "config.json"
    return config_label(json.loads(cfg.read_text())["model"]) if cfg.exists() else None


def _project_dir() -> Path | None:
    """The source checkout holding the package (a folder with pyproject.toml above ``stripe/``), if any."""
    repo = Path(__file__).resolve().parents[2]
    return repo if (repo / "pyproject.toml").is_file() else None


def data_root(explicit: str | Path | None = None) -> Path:
    """The data folder: ``explicit`` when given, else ``$STRIPE_DATA_DIR``, else the project's ``data/``
    (found from the package's location, not the working directory). The error names every place tried."""
    import os

    tried = []
    for label, path in (("source", explicit), ("$STRIPE_DATA_DIR", os.environ.get("STRIPE_DATA_DIR")),
                        ("the project's data/", None if _project_dir() is None else _project_dir() / "data")):
        if path in (None, ""):
            continue
        path = Path(path).expanduser()
        if path.is_dir():
            return path.resolve()
        tried.append(f"{label} {path}")
        if label == "source":  # an explicit folder that does not exist is an error, not a fallback
            break
    raise NotFoundError("no data folder found (looked at: " + ("; ".join(tried) or "nothing: no source given, "
                            "$STRIPE_DATA_DIR unset, not a source checkout") + "); run `make demo` first or pass "
                            "source=FOLDER")


def notebook_source(source: str | Path | None = None, *, prefer: str | None = None) -> Path:
    """The folder a notebook reads: ``source`` if given, else the data folder (its ``prefer`` subfolder when
    that exists, e.g. ``demo``)."""
    if source not in (None, ""):
        return data_root(source)
    root = data_root()
    return root / prefer if prefer and (root / prefer).is_dir() else root


def default_figures_out(source: Path) -> Path:
    """Where figures go by default: a demo's own ``figures/`` (where ``stripe demo`` draws them), else
    ``<data folder>/figures/<name of source>`` (never the committed figures/)."""
    from ..fsio import owner_kind

    if owner_kind(source) == "demo":
        return Path(source) / "figures"
    try:
        root = data_root()
    except FileNotFoundError:
        root = source.parent
    return root / "figures" / source.resolve().name


def notebook_path(name: str) -> Path:
    """The jupytext source of a bundled notebook (package data ``stripe.notebooks``, i.e. ``notebooks/<name>.py``)."""
    from importlib import resources

    if name not in NOTEBOOKS:
        raise UserError(f"unknown notebook {name!r}; known: {', '.join(NOTEBOOKS)}")
    candidates = []
    try:
        candidates.append(Path(str(resources.files("stripe.notebooks") / f"{name}.py")))
    except ModuleNotFoundError:
        pass
    if _project_dir() is not None:
        candidates.append(_project_dir() / "notebooks" / f"{name}.py")
    for path in candidates:
        if path.is_file():
            return path
    raise NotFoundError(f"notebook source {name}.py not found (looked in: {', '.join(map(str, candidates))}); "
                            "reinstall the package")


def _tracked_kernelspec(target: Path) -> dict[str, Any] | None:
    """The kernelspec the tracked ``.ipynb`` of a bundled pair holds (None when it cannot be read)."""
    try:
        meta = json.loads(target.with_suffix(".ipynb").read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        return None
    spec = meta.get("kernelspec") if isinstance(meta, dict) else None
    return dict(spec) if isinstance(spec, dict) else None


def _clean_notebook(nb: Any, kernelspec: dict[str, Any] | None) -> None:
    """Drop from a notebook (a dict or a NotebookNode, in place) what opening or running it adds."""
    meta = nb.get("metadata", {})
    for key in ("language_info", "widgets"):
        meta.pop(key, None)
    if kernelspec is not None and isinstance(meta.get("kernelspec"), dict) \
            and meta["kernelspec"].get("name") == kernelspec.get("name"):
        meta["kernelspec"] = dict(kernelspec)  # JupyterLab renames "Python 3" to "Python 3 (ipykernel)"
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in ("execution", "trusted", "scrolled", "collapsed"):
            cell.get("metadata", {}).pop(key, None)


def clean_saved_notebook(model: dict[str, Any], path: str, contents_manager: Any = None, **_: Any) -> None:
    """A Jupyter ``pre_save_hook`` (``make lab``): before a bundled notebook is saved, drop what opening or running
    it adds -- outputs, execution counts, the kernel's ``language_info``, widget state, cell timings, JupyterLab's
    name for the kernel (the tracked kernelspec is kept) -- so saving unchanged sources leaves the tracked files as
    they are. jupytext saves the pair's ``.py`` as a text file of its own, rendered before this hook runs: that text
    is rendered again from the cleaned notebook. Other notebooks and files are saved untouched."""
    target = Path(getattr(contents_manager, "root_dir", "") or ".") / path.lstrip("/")
    if target.stem not in NOTEBOOKS or target.suffix not in (".ipynb", ".py"):
        return
    if not (target.with_suffix(".py").is_file() and target.with_suffix(".ipynb").is_file()):
        return  # not one of the bundled pairs
    kernelspec = _tracked_kernelspec(target)
    if target.suffix == ".ipynb":
        if model.get("type") == "notebook" and isinstance(model.get("content"), dict):
            _clean_notebook(model["content"], kernelspec)
        return
    if model.get("type") != "file" or model.get("format") != "text" or not isinstance(model.get("content"), str):
        return
    import jupytext

    text = model["content"]
    try:
        nb = jupytext.reads(text, fmt="py:percent")
    except Exception:  # noqa: BLE001 - text jupytext cannot read is saved as the user wrote it
        return
    if nb.metadata.get("jupytext", {}).get("text_representation", {}).get("format_name") != "percent":
        return  # not the pair's percent format: leave it alone
    _clean_notebook(nb, kernelspec)
    model["content"] = jupytext.writes(nb, fmt="py:percent")


def _error_names() -> frozenset[str]:
    """The class names of stripe's own errors (one line for the user), as a kernel reports them: every subclass of
    :class:`~stripe.errors.StripeError` defined by the time of the call."""
    from .. import errors

    found = {errors.StripeError}
    todo = [errors.StripeError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return frozenset(c.__name__ for c in found)


def execute_notebook(name: str, params: dict[str, Any], out_ipynb: str | Path, *, timeout: int = 1200,
                     cwd: str | Path | None = None) -> Path:
    """Execute a bundled notebook headless (nbclient, kernel ``python3``) with ``params`` injected
    after its ``parameters`` cell; writes the executed notebook to ``out_ipynb``.

    The kernel runs in ``cwd`` (default: the working folder) but imports nothing from it: Python's safe-path
    mode (``PYTHONSAFEPATH``, which IPython honours too) keeps the folder off ``sys.path``, so a ``stripe.py`` or
    ``pandas.py`` lying there is never run in place of the installed package. A cell that fails with one of
    stripe's own errors is that error's one line (:class:`~stripe.errors.UserError`), not the kernel's traceback."""
    import os
    import tempfile

    import jupytext
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = jupytext.read(notebook_path(name))
    index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
    if index is None:
        raise UserError(f"{name}: the notebook has no cell tagged 'parameters'")
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out_ipynb = Path(out_ipynb)
    with tempfile.TemporaryDirectory(prefix="stripe-kernel-") as sockets:
        # a local kernel over IPC sockets in a private folder: nothing listens on the network
        km = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "ipc"))
        client = NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(cwd or Path.cwd())}})
        try:
            client.execute(env={**os.environ, "PYTHONSAFEPATH": "1"})
        except CellExecutionError as e:
            if getattr(e, "ename", "") in _error_names():  # the user's input, said in one line by stripe itself
                raise UserError(f"{name} notebook: {e.evalue}") from None
            raise
        finally:
            if km.has_kernel:
                km.shutdown_kernel(now=False)
            fsio.write_text(out_ipynb, nbformat.writes(nb))
    return out_ipynb


def render_figures(source: Path, out: Path, *, timeout: int = 1800, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Execute ``paper_figures`` headless on ``source`` into ``out`` (a new or empty folder, or one stripe made:
    :func:`stripe.fsio.claim_dir`); returns the files now in ``out``."""
    from .. import fsio

    fsio.claim_dir(out, "figures")
    execute_notebook("paper_figures", {"source": str(Path(source).resolve()), "out": str(Path(out).resolve()),
                                       "formats": list(formats)}, Path(out) / "paper_figures.ipynb", timeout=timeout)
    return sorted(p for p in Path(out).rglob("*") if p.is_file())
