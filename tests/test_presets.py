"""The presets' CPU dry runs: every stage runs within its budget, one archive comes back, figures render from it."""
import json
import tarfile

import pytest

from stripe.cli import main
from stripe.experiments.presets import PRESETS, Budget, Deadline, run_preset



pytestmark = pytest.mark.real_data  # every test here reads a real data set

def _records(out):
    return [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]


def test_gpu_quick_dry_run_every_stage_and_figures_from_the_archive(tmp_path):
    out = tmp_path / "out"
    assert run_preset("gpu-quick", out=out, dry_run=True, progress=False) == 0
    records = _records(out)
    assert not [r for r in records if "error" in r], [r for r in records if "error" in r]
    done = {r["stage"] for r in records if "done_s" in r}
    assert done == {"cuda-tests", "train-speed", "learns", "collect-speed", "speed", "science"}
    cuda_tests = [r for r in records if r["stage"] == "cuda-tests" and "rc" in r]
    assert cuda_tests and cuda_tests[0]["rc"] == 0, cuda_tests  # collected and skipped on the CPU
    speeds = [r for r in records if r["stage"] == "train-speed" and "images_per_s" in r]
    assert len(speeds) == 4 and all(r["images_per_s"] > 0 and r["finite"] for r in speeds)
    assert {(r["variant"], r["path"]) for r in speeds} == {("baseline", "fast"), ("+SE", "fast"), ("+ASR(SE)", "fast"),
                                                            ("+ASR(SE)", "fp32-eager")}
    learns = [r for r in records if r["stage"] == "learns" and "path" in r]
    assert {r["path"] for r in learns} == {"fast", "fp32-eager"}
    science = [r for r in records if r["stage"] == "science" and "epochs_done" in r]
    assert science and science[0]["epochs_done"] == science[0]["epochs"] >= 1
    unpacked = tmp_path / "unpacked"
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
        tar.extractall(unpacked, filter="data")
    assert not [n for n in names if "checkpoints" in n]
    assert "speed/speed.csv" in names and "science/plus_se_seed0/recording/manifest.json" in names
    assert main(["figures", str(unpacked), "--out", str(tmp_path / "figs"), "--formats", "png"]) == 0
    for name in ("heatmap_plus_se", "stripe_dynamics", "learning_curves", "speed_table"):
        assert (tmp_path / "figs" / f"{name}.png").exists(), name
    assert not list((tmp_path / "figs").glob("*.pdf"))


# what a GPU image may lack: the notebook and browser stack and the test/third-party extras
NOT_ON_GPU_IMAGE = ("jupytext", "nbformat", "nbclient", "ipykernel", "ipywidgets", "jupyterlab", "selenium",
                    "onnx2torch", "build")
_HIDE = """
import sys, importlib.abc
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Hide())
import pytest
sys.exit(pytest.main(["-q", "--co", "-m", "cuda", "-p", "no:cacheprovider", {tests!r}]))
"""


def test_cuda_tests_collect_without_the_notebook_stack():
    """The preset's first stage runs `pytest -m cuda tests/` on a GPU image without Jupyter: nothing may fail to import."""
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-c", _HIDE.format(names=NOT_ON_GPU_IMAGE, tests=tests)],
                          capture_output=True, text=True, cwd=Path(tests).parent, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "test_cuda.py" in out and "error" not in out.splitlines()[-1], out[-3000:]


def test_a_tiny_budget_still_writes_and_packs(tmp_path):
    out = tmp_path / "out"
    assert run_preset("gpu-quick", out=out, dry_run=True, budget=0.0, progress=False) == 0
    records = _records(out)
    skipped = {r["stage"] for r in records if r.get("skipped") == "out of budget"}
    assert skipped == {"cuda-tests", "train-speed", "learns", "collect-speed", "speed", "science"}
    assert records[0]["stage"] == "env" and records[-1]["stage"] == "done"
    assert (out / "results.tar.gz").stat().st_size > 0


def test_deadline_stops_before_overrunning():
    class State:
        epoch, row, stop = 3, {"epoch_seconds": 100.0}, False

        class cfg:  # noqa: N801
            epochs = 10

    d, s = Deadline(Budget(100.0)), State()
    d.on_epoch_end(s)
    assert s.stop and d.stopped_at == 3  # 100 s left; the next epoch would need about 120 s
    s2, d2 = State(), Deadline(Budget(1000.0))
    d2.on_epoch_end(s2)
    assert not s2.stop


def test_unknown_preset_and_cuda_presets_without_cuda(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown preset"):
        run_preset("nope", out=tmp_path)
    import torch

    if not torch.cuda.is_available():
        assert main(["reproduce", "gpu-quick", "--out", str(tmp_path / "x")]) == 2
        assert "needs a CUDA device" in capsys.readouterr().err
    assert set(PRESETS) == {"demo-cpu", "cifar10-resnet20-cpu", "gpu-quick", "paper-cifar10"}
