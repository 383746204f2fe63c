"""The presets' CPU dry runs: every stage runs within its budget, one archive comes back, figures render from it."""
import json
import tarfile

import numpy as np
import pandas as pd
import pytest

from stripe.cli import main
from stripe.experiments.budget import Budget, Deadline
from stripe.experiments.gpu import GPU_STAGES
from stripe.experiments.presets import PRESETS, run_preset

pytestmark = pytest.mark.real_data  # every test here reads a real data set


def _records(out):
    return [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    """One full dry run of gpu-quick (every stage, tiny sizes, on the CPU)."""
    out = tmp_path_factory.mktemp("gpu-quick") / "out"
    assert run_preset("gpu-quick", out=out, dry_run=True, progress=False) == 0
    return out


def _unpack(archive, dest):
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(dest, filter="data")
    return names


def test_gpu_quick_dry_run_every_stage_and_figures_from_the_archive(dry, tmp_path):
    out = dry
    records = _records(out)
    assert not [r for r in records if "error" in r], [r for r in records if "error" in r]
    done = [r["stage"] for r in records if "done_s" in r]
    assert done == ["train-speed", "learns", "collect-speed", "speed", "science"] == list(GPU_STAGES)
    speeds = [r for r in records if r["stage"] == "train-speed" and "images_per_s" in r]
    assert len(speeds) == 4 and all(r["images_per_s"] > 0 and r["finite"] for r in speeds)
    assert {(r["variant"], r["path"]) for r in speeds} == {("baseline", "fast"), ("+SE", "fast"), ("+ASR(SE)", "fast"),
                                                            ("+ASR(SE)", "fp32-eager")}
    learns = [r for r in records if r["stage"] == "learns" and "path" in r]
    assert {r["path"] for r in learns} == {"fast", "fp32-eager"}
    science = [r for r in records if r["stage"] == "science" and "epochs_done" in r]
    assert science and science[0]["epochs_done"] == science[0]["epochs"] >= 1
    unpacked = tmp_path / "unpacked"
    names = _unpack(out / "results.tar.gz", unpacked)
    assert not [n for n in names if "checkpoints" in n]
    assert "speed/speed.csv" in names and "runs/plus_se_seed0/recording/manifest.json" in names
    assert "runs/plus_se_seed0/predictions_final.npz" in names and "PACKING.json" not in names  # small: not thinned
    assert main(["figures", str(unpacked), "--out", str(tmp_path / "figs"), "--formats", "png"]) == 0
    for name in ("heatmap_plus_se", "stripe_dynamics", "learning_curves", "speed_table"):
        assert (tmp_path / "figs" / f"{name}.png").exists(), name
    assert not list((tmp_path / "figs").glob("*.pdf"))


@pytest.mark.parametrize("tables_written", [True, False])
def test_a_recording_too_big_for_the_archive_travels_thinned(dry, tmp_path, capsys, tables_written):
    """Thinned to its last epoch, a recording still gives the tables of every epoch, exactly, and the figures
    (its tables written by the preset, or by the packing when a stage stopped before them)."""
    import shutil

    import pandas as pd

    from stripe.analysis import compute_tables
    from stripe.experiments.archive import pack
    from stripe.record import Recording

    out = tmp_path / "out"
    shutil.copytree(dry, out, ignore=shutil.ignore_patterns("checkpoints", "results.tar.gz"))
    full = out / "runs" / "plus_se_seed0" / "recording"
    n_epochs = len(Recording.open(full).epochs)
    assert n_epochs >= 3
    if not tables_written:
        shutil.rmtree(full / "tables")
    pack(out, limit_mib=0.01)
    assert "thinned 1 recording(s)" in capsys.readouterr().out
    unpacked = tmp_path / "unpacked"
    names = _unpack(out / "results.tar.gz", unpacked)
    assert "PACKING.json" in names and "runs/plus_se_seed0/recording/tables/channels.parquet" not in names
    thin = unpacked / "runs" / "plus_se_seed0" / "recording"
    rec = Recording.open(thin)
    assert rec.epochs == [Recording.open(full).epochs[-1]]
    assert rec.manifest["thinned"]["epochs"] == Recording.open(full).epochs
    assert len(list((thin / "stats").glob("*.parquet"))) == 1 and len(list((thin / "raw").glob("*"))) == 1
    a, b = compute_tables(full), compute_tables(thin)
    for name in ("taps", "convergence", "stages"):
        pd.testing.assert_frame_equal(b[name], a[name], check_exact=True)
    last = rec.epochs[0]
    pd.testing.assert_frame_equal(b["channels"].reset_index(drop=True),
                                  a["channels"][a["channels"]["epoch"] == last].reset_index(drop=True), check_exact=True)
    pd.testing.assert_frame_equal(compute_tables(thin, eps=0.2)["convergence"],
                                  compute_tables(full, eps=0.2)["convergence"], check_exact=True)
    with pytest.raises(ValueError, match="thinned"):
        compute_tables(thin, dead_tol=1e-3)
    assert main(["stats", str(thin)]) == 0
    assert main(["figures", str(unpacked), "--out", str(tmp_path / "figs"), "--formats", "png"]) == 0
    for name in ("heatmap_plus_se", "stripe_dynamics", "channel_std_plus_se"):
        assert (tmp_path / "figs" / f"{name}.png").exists(), name


def test_table_defaults_match_compute_tables():
    """A thinned recording's stored tables are computed with compute_tables' defaults, which it checks against."""
    import inspect

    from stripe.analysis.tables import DEAD_TOL, SATURATION, compute_tables

    sig = inspect.signature(compute_tables)
    assert (sig.parameters["saturation"].default, sig.parameters["dead_tol"].default) == (SATURATION, DEAD_TOL)


def test_a_campaign_continues_in_another_call_and_compares(dry, tmp_path, capsys):
    """A later slot trains the baseline with the same schedule; the unpacked archives compare without checkpoints."""
    out2 = tmp_path / "slot2"
    epochs = [r for r in _records(dry) if r["stage"] == "science-plan"][0]["epochs"]
    assert main(["reproduce", "gpu-quick", "--dry-run", "--no-progress", "--out", str(out2), "--stages", "science",
                 "--variant", "baseline", "--epochs", str(epochs)]) == 0
    records = _records(out2)
    assert {r["stage"] for r in records} == {"env", "science-plan", "science", "done"}
    assert records[0]["campaign"] == {"stages": ["science"], "variant": "baseline", "seed": 0, "epochs": epochs}
    both = tmp_path / "campaign"
    _unpack(dry / "results.tar.gz", both)
    names = _unpack(out2 / "results.tar.gz", both)
    assert "runs/baseline_seed0/predictions_final.npz" in names
    assert not [n for n in names if "baseline_seed0/recording" in n]  # nothing to record without attention
    capsys.readouterr()
    assert main(["compare", "--attn", "se", "--table-only", "--out", str(both)]) == 0
    text = (both / "results.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| baseline") or ln.startswith("| +")]
    assert [r.split(" | ")[0] for r in rows] == ["| baseline", "| +SE"]
    assert rows[1].split(" | ")[7] not in ("—", "")  # McNemar p of +SE against the baseline, from the predictions


def _top1_of_predictions(run):
    """Top-1 % of a run's final deployed model, from its own ``predictions_final.npz``."""
    with np.load(run / "predictions_final.npz") as z:
        return 100 * float((z["pred"] == z["labels"]).mean())


def _t95(x):
    """(mean, lo, hi) of the 95% t-interval, computed here with scipy (not with stripe's helpers)."""
    from scipy import stats

    x = np.asarray(x, dtype=float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def test_resnet20_cpu_over_seeds_pairs_the_variants_and_keeps_finished_ablations(tmp_path):
    """Two seeds: results_seeds.csv/.md hold each variant's mean top-1 with its t-interval and +ASR(SE) − +SE per
    seed with its mean, t-interval and paired t-test, all recomputed here from each run's own predictions. Called
    again, the preset keeps a complete ablation (files untouched, logged as skipped) and redoes an incomplete one;
    called with one seed it gives the value and says "one seed"."""
    import os
    import warnings

    import pandas as pd
    from scipy import stats

    from stripe.analysis import finished_ablation

    out = tmp_path / "out"
    argv = ["reproduce", "cifar10-resnet20-cpu", "--dry-run", "--no-progress", "--out", str(out)]
    assert main([*argv, "--seeds", "2"]) == 0
    records = _records(out)
    assert not [r for r in records if "error" in r], [r for r in records if "error" in r]
    slugs = {"+SE": "plus_se", "+ASR(SE)": "plus_asr_se"}
    top1 = {label: [_top1_of_predictions(out / "runs" / f"{s}_seed{seed}") for seed in (0, 1)]
            for label, s in slugs.items()}
    table = pd.read_csv(out / "results_seeds.csv", keep_default_na=False, na_values=[""])
    rows = {r["row"]: r for r in table.to_dict("records")}
    assert list(rows) == ["+SE", "+ASR(SE)", "+ASR(SE) − +SE"]
    for label, acc in top1.items():
        r = rows[label]
        assert r["n_seeds"] == 2 and r["seeds"] == "0 1" and r["per_seed"] == " ".join(f"{a:.2f}" for a in acc)
        np.testing.assert_allclose([r["mean"], r["lo"], r["hi"]], _t95(acc), rtol=1e-9, atol=1e-9)
    diffs = [a - s for a, s in zip(top1["+ASR(SE)"], top1["+SE"])]
    d = rows["+ASR(SE) − +SE"]
    assert d["kind"] == "paired difference" and d["n_seeds"] == 2
    assert d["per_seed"] == " ".join(f"{x:+.2f}" for x in diffs)
    np.testing.assert_allclose([d["mean"], d["lo"], d["hi"]], _t95(diffs), rtol=1e-9, atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no spread: scipy warns and gives NaN, as the table must
        p = stats.ttest_rel(top1["+ASR(SE)"], top1["+SE"]).pvalue
    np.testing.assert_allclose(d["p_paired_t"], p, rtol=1e-9, equal_nan=True)
    assert d["reads"].startswith("2 seeds") and len(str(d["mcnemar_p_per_seed"]).split()) == 2
    md = (out / "results_seeds.md").read_text()
    assert f"| +ASR(SE) − +SE | 0 1 | {d['per_seed']} | {np.mean(diffs):+.2f} |" in md
    logged = [r for r in records if r["stage"] == "compare-seeds"]
    assert len(logged) == 1 and [r["row"] for r in logged[0]["rows"]] == list(rows)

    # a second call: seed 0's ablation is complete and kept; seed 1's lost its md (an interrupted one) and is redone
    abl = {seed: out / "runs" / f"plus_se_seed{seed}" / "ablation" for seed in (0, 1)}
    before = {p: p.stat().st_mtime_ns for a in abl.values() for p in a.iterdir()}
    (abl[1] / "ablation.md").unlink()
    n_before = len(records)
    assert main([*argv, "--seeds", "2"]) == 0
    again = _records(out)[n_before:]
    assert not [r for r in again if "error" in r]
    ablate = {r["variant"]: r for r in again if r["stage"] == "ablate"}
    assert ablate["+SE seed 0"]["skipped"] == "already complete" and ablate["+SE seed 0"]["table"]
    assert "skipped" not in ablate["+SE seed 1"] and (abl[1] / "ablation.md").is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p.parent == abl[0])
    assert (abl[1] / "ablation.csv").stat().st_mtime_ns > before[abl[1] / "ablation.csv"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "results_seeds.csv", keep_default_na=False, na_values=[""]),
                                  table)

    # an ablation that lacks a scope asked for, or is older than the run's last checkpoint, is not complete
    run0 = abl[0].parent
    assert finished_ablation(run0, ("all", "stage", "tap")) is not None
    assert finished_ablation(run0, ("all", "stage", "tap", "nope")) is None
    last = sorted((run0 / "checkpoints").glob("epoch_*.pt"))[-1]
    later = (abl[0] / "ablation.md").stat().st_mtime_ns + 10**9
    os.utime(last, ns=(later, later))
    assert finished_ablation(run0, ("all", "stage", "tap")) is None

    # one seed: the value only, and it says so
    assert main([*argv, "--seeds", "1"]) == 0
    one = {r["row"]: r for r in pd.read_csv(out / "results_seeds.csv", keep_default_na=False,
                                             na_values=[""]).to_dict("records")}
    d1 = one["+ASR(SE) − +SE"]
    assert d1["n_seeds"] == 1 and d1["reads"] == "one seed" and np.isclose(d1["mean"], diffs[0])
    assert all(np.isnan(d1[k]) for k in ("lo", "hi", "p_paired_t"))
    md1 = (out / "results_seeds.md").read_text()
    assert "one seed" in md1 and not [w for w in ("detectable", "behind", "ahead") if w in md1.lower()]


@pytest.mark.parametrize(("argv", "message"), [
    (["--stages", "science,warp"], "--stages: unknown stage(s) warp"),
    (["--variant", "+ECA"], "the campaign is of SE"),
    (["--variant", "SE"], "not a variant label"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--stages", "cuda-tests,science"], "`pytest -m cuda`, not a stage"),
    (["--archive-mib", "0"], "--archive-mib must be > 0"),
])
def test_campaign_options_are_checked(tmp_path, capsys, argv, message):
    try:
        code = main(["reproduce", "gpu-quick", "--dry-run", "--out", str(tmp_path / "x"), *argv])
    except SystemExit as e:  # argparse's own check of the option
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_campaign_options_belong_to_gpu_quick(tmp_path, capsys):
    assert main(["reproduce", "demo-cpu", "--dry-run", "--out", str(tmp_path / "x"), "--variant", "+SE"]) == 2
    assert "apply to gpu-quick only" in capsys.readouterr().err
    assert main(["reproduce", "gpu-quick", "--dry-run", "--out", str(tmp_path / "y"), "--jobs", "2"]) == 2
    assert "--jobs and --only apply to zoo-cifar10-cpu only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.real_data
def test_the_zoos_workers_log_for_tensorboard(tmp_path):
    """`reproduce zoo-cifar10-cpu --tensorboard DIR`: each (run, seed) trained in a worker process logs its
    epochs and, recorded, its stripe statistics into DIR/SLUG_seedN, the same numbers as its metrics.csv."""
    pytest.importorskip("tensorboard")
    from helpers import need_cifar10
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    need_cifar10()
    tb, out = tmp_path / "tb", tmp_path / "z"
    assert main(["reproduce", "zoo-cifar10-cpu", "--dry-run", "--only", "plus_se", "--seeds", "1,", "--jobs", "1",
                 "--tensorboard", str(tb), "--out", str(out), "--no-progress"]) == 0
    assert [p.name for p in tb.iterdir()] == ["plus_se_seed1"]
    ea = EventAccumulator(str(tb / "plus_se_seed1"), size_guidance={"scalars": 0})
    ea.Reload()
    metrics = pd.read_csv(out / "runs" / "plus_se_seed1" / "metrics.csv")
    got = {e.step: e.value for e in ea.Scalars("accuracy/test")}
    assert sorted(got) == metrics["epoch"].tolist()
    # metrics.csv keeps 6 significant digits (relative rounding <= 5e-6), TensorBoard float32 (6e-8)
    assert np.allclose([got[e] for e in sorted(got)], metrics["test_acc"], rtol=5.1e-6, atol=0)
    assert "stripe/S_after/stage1" in ea.Tags()["scalars"]


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
    """`pytest -m cuda tests/` (the GPU checks) on a GPU image without Jupyter: nothing may fail to import."""
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
    assert run_preset("gpu-quick", out=out, dry_run=True, budget=1e-3, progress=False) == 0
    records = _records(out)
    skipped = {r["stage"] for r in records if r.get("skipped") == "out of budget"}
    assert skipped == set(GPU_STAGES)
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
    assert set(PRESETS) == {"demo-cpu", "cifar10-resnet20-cpu", "zoo-cifar10-cpu", "gpu-quick", "paper-cifar10"}
