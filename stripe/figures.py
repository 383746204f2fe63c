"""Find a folder's artifacts (runs, comparisons, recordings, speed and ablation tables) for the
notebooks, and execute the notebooks headless (``stripe figures``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import fsio
from .compare import config_label, slug, variant_rank

__all__ = ["NOTEBOOKS", "Sources", "config_label", "discover", "execute_notebook", "metrics_long", "notebook_path",
           "read_table", "recording_label", "recording_tables", "recordings_by_label", "run_label", "slug"]

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

    def describe(self) -> str:
        """One line per kind of artifact."""
        rel = lambda ps: ", ".join(str(p.relative_to(self.root)) if p != self.root else "." for p in ps) or "none"
        return "\n".join([f"comparisons: {rel(self.comparisons)}", f"runs: {rel(self.runs)}",
                          f"recordings: {rel(self.recordings)}", f"speed tables: {rel(self.speed)}",
                          f"ablations: {rel(self.ablations)}"])


def discover(source: str | Path) -> Sources:
    """Every artifact under ``source`` (itself included); a clear error if there is none."""
    root = Path(source)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    s = Sources(root=root)
    for p in sorted(root.rglob("*")):
        if p.name == "results.csv":
            s.comparisons.append(p.parent)
        elif p.name == "config.json" and (p.parent / "metrics.csv").exists():
            s.runs.append(p.parent)
        elif p.name == "manifest.json":
            s.recordings.append(p.parent)
        elif p.name == "speed.csv":
            s.speed.append(p)
        elif p.name == "ablation.csv":
            s.ablations.append(p)
    if not (s.comparisons or s.runs or s.recordings or s.speed or s.ablations):
        raise FileNotFoundError(f"{root}: no run, comparison, recording, speed or ablation table found")
    return s


def recording_label(path: Path) -> str:
    """Variant label of a recording, from its manifest."""
    return config_label(json.loads((path / "manifest.json").read_text())["model"])


def metrics_long(runs: list[Path]) -> pd.DataFrame:
    """The metrics rows of several runs with ``variant`` and ``seed`` columns (for learning curves)."""
    frames = []
    for run in runs:
        info = json.loads((run / "config.json").read_text())
        m = pd.read_csv(run / "metrics.csv")
        m["variant"], m["seed"] = config_label(info["model"]), info["train"]["seed"]
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def recordings_by_label(src: Sources) -> dict[str, Path]:
    """Recording folders keyed by variant label, in the paper's variant order."""
    found = {recording_label(r): r for r in src.recordings}
    return {label: found[label] for label in sorted(found, key=variant_rank)}


def recording_tables(src: Sources) -> dict[str, dict[str, pd.DataFrame]]:
    """Stripe tables of every recording found, keyed by variant label, in the paper's variant order."""
    from .stats import compute_tables

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


def notebook_path(name: str) -> Path:
    """The jupytext source (``notebooks/<name>.py``) of a bundled notebook."""
    if name not in NOTEBOOKS:
        raise ValueError(f"unknown notebook {name!r}; known: {', '.join(NOTEBOOKS)}")
    path = Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: notebook source not found (run from a source checkout)")
    return path


def execute_notebook(name: str, params: dict[str, Any], out_ipynb: str | Path, *, timeout: int = 1200,
                     cwd: str | Path | None = None) -> Path:
    """Execute a bundled notebook headless (nbclient, kernel ``python3``) with ``params`` injected
    after its ``parameters`` cell; writes the executed notebook to ``out_ipynb``."""
    import tempfile

    import jupytext
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = jupytext.read(notebook_path(name))
    index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
    if index is None:
        raise ValueError(f"{name}: the notebook has no cell tagged 'parameters'")
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
            client.execute()
        finally:
            if km.has_kernel:
                km.shutdown_kernel(now=False)
            fsio.write_text(out_ipynb, nbformat.writes(nb))
    return out_ipynb
