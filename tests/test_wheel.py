"""`stripe figures` from a regular (non-editable) wheel install: the notebooks ship inside the package.

The wheel is built from this checkout and installed into a fresh virtual environment that sees the
test environment's dependencies (torch, Jupyter, …) but not this source tree; the command then runs
from an unrelated folder on a tiny recording.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _tiny_recording(root: Path) -> Path:
    from stripe.record import FoldStats, RecordingWriter, batch_moments

    rng = np.random.default_rng(0)
    taps = [{"key": "layer1.0.attn.tap", "module": "layer1.0.attn", "attn": "se", "asr": False, "stage": 1,
             "block": 0, "depth": 0, "call": None, "channels": 8}]
    with RecordingWriter(root, {"model": {"name": "cifar_resnet8", "attn": "se", "asr": False, "both": False},
                                "folds": 2}) as w:
        for epoch in (0, 1):
            a = torch.from_numpy(np.clip(0.5 + 0.3 * rng.normal(size=(40, 8)) / (epoch + 1), 0, 1))
            stats = {("layer1.0.attn.tap", k): FoldStats.from_moments_list([batch_moments(a, torch.arange(40) % 2, 2)])
                     for k in ("after", "before")}
            w.add(epoch, stats, {"layer1.0.attn.tap/after": a[:16].numpy().astype(np.float16),
                                 "layer1.0.attn.tap/before": a[:16].numpy().astype(np.float16)}, taps,
                  checkpoint=None, checkpoint_sha256=None)
    return root


def test_figures_from_a_wheel_install(tmp_path):
    import shutil

    src = tmp_path / "src"  # build from a copy: the checkout gets no build/ or egg-info
    for name in ("pyproject.toml", "README.md", "stripe", "notebooks"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(REPO / name, src / name)
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = dist.glob("stripe-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "stripe/notebooks/paper_figures.py" in names and "stripe/notebooks/explore_stripes.ipynb" in names
    assert not [n for n in names if n.startswith(("tests/", "data/", "figures/"))]
    packages = {str(p.relative_to(src)) for p in (src / "stripe").rglob("__init__.py")}  # every one, the CLI's too
    assert "stripe/cli/__init__.py" in packages and not packages - set(names), sorted(packages - set(names))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies come from the test environment (a path, not its .pth files: the source tree stays out)
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]

    rec = _tiny_recording(tmp_path / "rec")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STRIPE_DATA_DIR")}
    where = subprocess.run([str(py), "-c", "import stripe, stripe.viz.notebooks as n; print(stripe.__file__); "
                            "print(n.notebook_path('paper_figures'))"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-2000:]
    assert str(REPO) not in where.stdout and str(venv) in where.stdout  # the installed copy, not the checkout
    out = work / "figs"
    run = subprocess.run([str(venv / "bin" / "stripe"), "figures", str(rec), "--out", str(out), "--formats", "png"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "heatmap_plus_se.png").is_file() and (out / "stripe_dynamics.png").is_file()
    assert (out / "paper_figures.ipynb").is_file()
