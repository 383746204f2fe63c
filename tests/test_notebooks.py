"""Notebooks: jupytext pairs in sync; both execute headless on a tiny run made here; every figure exists."""
from pathlib import Path

import pandas as pd
import pytest

# a GPU image without Jupyter still collects this module (`pytest -m cuda tests/`); here they are dependencies
jupytext = pytest.importorskip("jupytext", reason="jupytext is not installed (run `make install`)")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (run `make install`)")
from PIL import Image

from stripe import fsio
from stripe.viz import style
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
    w, h = style.FIGSIZE[name]
    return round(w * style.DPI), round(h * blocks * style.DPI)


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
    assert not (out / "channel_std_plus_asr_se.png").exists()  # ASR taps only: nothing but zeros to draw
    assert pd.read_csv(out / "results.csv")["variant"].tolist() == ["baseline", "+SE", "+ASR(SE)", "+ASR(SE)+SE"]


@pytest.mark.real_data
def test_explore_stripes_headless(demo_dir, tmp_path):
    rec = run_dir_of(demo_dir / "compare", "+ASR(SE)+SE", 0) / "recording"
    execute_notebook("explore_stripes", {"source": str(demo_dir), "recording": str(rec), "out": str(tmp_path)},
                     tmp_path / "explore.ipynb")
    assert _png_size(tmp_path / "explore_heatmap.png") == _expected("stripe_heatmap")
    assert _png_size(tmp_path / "explore_channel_std.png") == _expected("channel_std")
    assert _png_size(tmp_path / "explore_tap_curve.png") == _expected("tap_curve")
    # without a recording named: every one found is listed relative to the data folder, and +SE is shown
    out = execute_notebook("explore_stripes", {"source": str(demo_dir)}, tmp_path / "explore_default.ipynb")
    printed = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"
                      for o in c.outputs)
    rel = run_dir_of(demo_dir / "compare", "+SE", 0).relative_to(demo_dir) / "recording"
    assert f"3 recording(s) found under {demo_dir}; showing {rel.as_posix()} (+SE)" in printed


def test_figures_on_a_folder_without_artifacts(tmp_path, capsys):
    assert main(["figures", str(tmp_path)]) == 2
    assert "no run, comparison, recording, speed or ablation table found" in capsys.readouterr().err


# the tracked pairs stay byte-stable -------------------------------------------------------------------------
def _copy_notebooks(dest: Path) -> dict[str, bytes]:
    """The bundled pairs copied into ``dest``; their bytes by file name."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in NOTEBOOKS:
        for ext in (".py", ".ipynb"):
            shutil.copy2(NB_DIR / f"{name}{ext}", dest / f"{name}{ext}")
            files[f"{name}{ext}"] = (NB_DIR / f"{name}{ext}").read_bytes()
    return files


def _changed(dest: Path, files: dict[str, bytes]) -> list[str]:
    return [name for name, data in files.items() if (dest / name).read_bytes() != data]


def test_a_sync_of_unchanged_sources_changes_no_byte(tmp_path):
    import os

    from jupytext.cli import jupytext as jupytext_cli

    nb = tmp_path / "notebooks"
    files = _copy_notebooks(nb)
    py = [str(nb / f"{n}.py") for n in NOTEBOOKS]
    jupytext_cli(["--update", "--to", "ipynb", *py])  # what `make notebooks` runs
    assert _changed(nb, files) == [], "`make notebooks` rewrote unchanged notebooks (cell ids, metadata)"
    for newer in (".py", ".ipynb"):  # a sync either way (the newer file is the source)
        for n in NOTEBOOKS:
            os.utime(nb / f"{n}{newer}", (2e9, 2e9))
        jupytext_cli(["--sync", *py])
        assert _changed(nb, files) == [], f"a sync from the {newer} files rewrote them"
    # the check can fail: a plain conversion draws new cell ids
    jupytext_cli(["--to", "ipynb", py[0]])
    assert _changed(nb, files) == [f"{NOTEBOOKS[0]}.ipynb"]


def _lab_contents_manager(root: Path, hook: bool, lab: bool = False):
    """The contents manager `make lab` runs (jupytext's), with the Makefile's pre-save hook or without; ``lab``:
    the asynchronous one jupytext's server extension derives from JupyterLab's AsyncLargeFileManager."""
    from jupytext import TextFileContentsManager
    from traitlets.config import Config

    c = Config()
    if hook:
        c.ContentsManager.pre_save_hook = "stripe.viz.notebooks.clean_saved_notebook"  # as on the command line
    if lab:
        from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
        from jupytext.async_contentsmanager import build_async_jupytext_contents_manager_class

        return build_async_jupytext_contents_manager_class(AsyncLargeFileManager)(root_dir=str(root), config=c)
    return TextFileContentsManager(root_dir=str(root), config=c)


def _open_run_and_save(cm, path: str) -> None:
    """What JupyterLab 4 does: open the notebook, start a kernel (language_info, its own name for the kernel), run
    cells (outputs, timings, trust), save through the contents manager (which writes both files of a pair)."""
    import asyncio
    import inspect

    sync = lambda r: asyncio.run(r) if inspect.isawaitable(r) else r  # noqa: E731
    nb = sync(cm.get(path))["content"]
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.2", "mimetype": "text/x-python"}
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    if "kernelspec" in nb["metadata"]:
        nb["metadata"]["kernelspec"]["display_name"] = "Python 3 (ipykernel)"  # the kernel's own display name
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        cell["execution_count"] = i + 1
        cell["outputs"] = [nbformat.v4.new_output("stream", name="stdout", text="ran\n")]
        cell["metadata"]["execution"] = {"iopub.status.busy": "2024-01-01T00:00:00Z"}
        cell["metadata"]["trusted"] = True
    sync(cm.save({"type": "notebook", "content": nb}, path))


@pytest.mark.parametrize("lab", [False, True], ids=["sync", "lab-async"])
def test_saving_an_opened_notebook_from_lab_leaves_the_tracked_files_as_they_are(tmp_path, lab):
    nb = tmp_path / "notebooks"
    files = _copy_notebooks(nb)
    cm = _lab_contents_manager(nb, hook=True, lab=lab)
    for name in NOTEBOOKS:
        _open_run_and_save(cm, f"{name}.ipynb")
    assert _changed(nb, files) == []
    # another notebook in the folder keeps its outputs: the hook touches only the bundled pairs
    (nb / "scratch.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])))
    _open_run_and_save(cm, "scratch.ipynb")
    assert nbformat.read(nb / "scratch.ipynb", as_version=4).cells[0].outputs
    # without the hook the same save rewrites both files of the pair (the test can fail)
    _open_run_and_save(_lab_contents_manager(nb, hook=False, lab=lab), f"{NOTEBOOKS[0]}.ipynb")
    assert sorted(_changed(nb, files)) == [f"{NOTEBOOKS[0]}.ipynb", f"{NOTEBOOKS[0]}.py"]
    assert "Python 3 (ipykernel)" in (nb / f"{NOTEBOOKS[0]}.py").read_text()  # the name JupyterLab writes


def test_the_save_hook_keeps_an_edit_of_a_bundled_notebook(tmp_path):
    """A real edit to a bundled notebook is saved (into both files); only what running adds is dropped."""
    nb_dir = tmp_path / "notebooks"
    _copy_notebooks(nb_dir)
    cm = _lab_contents_manager(nb_dir, hook=True)
    model = cm.get(f"{NOTEBOOKS[0]}.ipynb")
    model["content"]["cells"][0]["source"] += "\n\nAn added line."
    model["content"]["metadata"]["kernelspec"]["display_name"] = "Python 3 (ipykernel)"
    cm.save({"type": "notebook", "content": model["content"]}, f"{NOTEBOOKS[0]}.ipynb")
    text = (nb_dir / f"{NOTEBOOKS[0]}.py").read_text()
    assert "# An added line." in text and "display_name: Python 3\n" in text
    assert "An added line." in (nb_dir / f"{NOTEBOOKS[0]}.ipynb").read_text()


def test_recording_choices_are_relative_and_open_on_the_plain_attention_model(tmp_path):
    import json

    from stripe.viz.notebooks import recording_choices

    made = {}
    for slug, model in (("plus_asr_se_plus_se", {"attn": "se", "asr": True, "both": True}),
                        ("plus_asr_se", {"attn": "se", "asr": True, "both": False}),
                        ("plus_se", {"attn": "se", "asr": False, "both": False})):
        rec = tmp_path / "compare" / "runs" / f"{slug}_seed0" / "recording"
        rec.mkdir(parents=True)
        (rec / "manifest.json").write_text(json.dumps({"model": {"name": "cifar_resnet8", **model}}))
        made[slug] = rec
    choices = recording_choices(tmp_path, sorted(made.values()))  # path order: +ASR(SE)+SE would come first
    assert [label for label, _ in choices] == ["compare/runs/plus_se_seed0/recording (+SE)",
                                               "compare/runs/plus_asr_se_seed0/recording (+ASR(SE))",
                                               "compare/runs/plus_asr_se_plus_se_seed0/recording (+ASR(SE)+SE)"]
    assert choices[0][1] == str(made["plus_se"].resolve())
    outside = recording_choices(tmp_path / "compare" / "runs" / "plus_se_seed0", [made["plus_asr_se"]])
    assert outside[0][0] == f"{made['plus_asr_se']} (+ASR(SE))"  # outside the data folder: the path as given
