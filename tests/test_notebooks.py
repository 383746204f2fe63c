"""Notebooks: jupytext pairs in sync; both execute headless on a tiny run made here; every figure exists."""
from pathlib import Path

import pandas as pd
import pytest

# a GPU image without Jupyter still collects this module (`pytest -m cuda tests/`); here they are dependencies
jupytext = pytest.importorskip("jupytext", reason="jupytext is not installed (run `make install`)")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (run `make install`)")
from PIL import Image

from stripe import fsio
from stripe.viz import figures as plots
from stripe.analysis import run_ablation
from stripe.experiments.bench import inference_speed
from stripe.cli import main
from stripe.experiments.compare import run_comparison, run_dir_of
from stripe.viz.notebooks import NOTEBOOKS, execute_notebook
from stripe.record import collect

from helpers import run_data, tiny_cfg

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_jupytext_pairs_in_sync(name):
    py = jupytext.read(NB_DIR / f"{name}.py")
    ipynb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    strip = lambda nb: [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]
    assert strip(py) == strip(ipynb), f"{name}.ipynb is out of date: run `make notebooks`"
    assert any("parameters" in c.metadata.get("tags", []) for c in py.cells)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A tiny real comparison with recordings, ablations and a speed table."""
    root = tmp_path_factory.mktemp("demo")
    base = tiny_cfg(attn=None, asr=False, epochs=2)
    run_comparison(base, "se", [0], root / "compare", device="cpu", progress=False, data=run_data(base))
    for label in ("+SE", "+ASR(SE)", "+ASR(SE)+SE"):
        collect(run_dir_of(root / "compare", label, 0), device="cpu", progress=False)
    run_ablation(run_dir_of(root / "compare", "+SE", 0), scopes=("all", "stage", "tap"), device="cpu",
                 progress=False)
    speed = inference_speed("cifar_resnet8", attns=["se", "eca"], batches=(2,), repeats=1, min_seconds=0.01,
                            device="cpu", progress=False)
    fsio.write_text(root / "speed" / "speed.csv", speed.to_csv(index=False))
    return root


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _expected(name: str, blocks: int = 1) -> tuple[int, int]:
    w, h = plots.FIGSIZE[name]
    return round(w * plots.DPI), round(h * blocks * plots.DPI)


@pytest.mark.real_data
def test_paper_figures_headless(demo_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figures", str(demo_dir), "--out", str(out)]) == 0
    expected = {
        "heatmap_plus_se": _expected("stripe_heatmap"),
        "heatmap_plus_asr_se": _expected("stripe_heatmap"),
        "heatmap_plus_asr_se_plus_se": _expected("stripe_heatmap"),
        "channel_std_plus_se": _expected("channel_std"),
        "channel_std_plus_asr_se_plus_se": _expected("channel_std"),
        "stripe_dynamics": _expected("stripe_dynamics", blocks=2),  # +SE and +ASR(SE)+SE
        "learning_curves": _expected("learning_curves"),
        "speed_table": _expected("speed_table"),
        "ablation": _expected("ablation"),
    }
    for name, size in expected.items():
        assert _png_size(out / f"{name}.png") == size, name
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    for table in ("results.md", "results.csv", "speed_table.md", "tables_plus_se/taps.csv"):
        assert (out / table).stat().st_size > 0, table
    assert (out / "paper_figures.ipynb").exists()
    assert pd.read_csv(out / "results.csv")["variant"].tolist() == ["baseline", "+SE", "+ASR(SE)", "+ASR(SE)+SE"]


@pytest.mark.real_data
def test_explore_stripes_headless(demo_dir, tmp_path):
    rec = run_dir_of(demo_dir / "compare", "+ASR(SE)+SE", 0) / "recording"
    execute_notebook("explore_stripes", {"source": str(demo_dir), "recording": str(rec), "out": str(tmp_path)},
                     tmp_path / "explore.ipynb")
    assert _png_size(tmp_path / "explore_heatmap.png") == _expected("stripe_heatmap")
    assert _png_size(tmp_path / "explore_channel_std.png") == _expected("channel_std")
    assert _png_size(tmp_path / "explore_tap_curve.png") == _expected("tap_curve")


def test_figures_on_a_folder_without_artifacts(tmp_path, capsys):
    assert main(["figures", str(tmp_path)]) == 2
    assert "no run, comparison, recording, speed or ablation table found" in capsys.readouterr().err
