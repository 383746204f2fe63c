"""Nothing lost, nothing stale: run directories, recordings and bad input (one test per defect found by review).

Every case goes through the command line (``main(argv)``) like a user would, and checks the exit
code, the one-line message and what is (still) on disk.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stripe.cli import main
from stripe.record import Recording
from stripe.train import list_checkpoints, load_checkpoint, load_model

from helpers import cli_args, real_dataset_name, tiny_cfg

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.real_data


def run_cli(capsys, *argv) -> tuple[int, str]:
    """Exit code and stderr of ``stripe ARGV`` (stdout is dropped)."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def one_line(err: str) -> str:
    """The error line: exactly one line, starting with the command's prefix."""
    lines = [ln for ln in err.splitlines() if ln.startswith("stripe ")]
    assert len(lines) == 1, err
    return lines[0]


def _train(capsys, out: Path, **kw) -> int:
    code, err = run_cli(capsys, "train", *cli_args(tiny_cfg(**kw)), "--out", out)
    assert code == 0, err
    return code


# 1 --------------------------------------------------------------------------------------------
def test_overwrite_leaves_no_stale_recording_and_recordings_follow_their_checkpoints(capsys, tmp_path):
    run = tmp_path / "R"
    _train(capsys, run, epochs=1, seed=0)
    assert main(["collect", str(run), "--device", "cpu", "--no-progress"]) == 0
    assert main(["ablate", str(run), "--device", "cpu", "--no-progress"]) == 0
    old = Recording.open(run / "recording").manifest["checkpoints"][-1]["checkpoint_sha256"]
    code, err = run_cli(capsys, "train", *cli_args(tiny_cfg(epochs=1, seed=1)), "--overwrite", "--out", run)
    assert code == 0, err
    assert not (run / "recording").exists() and not (run / "ablation").exists()  # gone with the old run
    assert not list(run.glob(".trash-*"))
    main(["collect", str(run), "--device", "cpu", "--no-progress"])
    out = capsys.readouterr().out
    assert "recorded 2 checkpoint(s)" in out and "skipped 0" in out
    assert Recording.open(run / "recording").manifest["checkpoints"][-1]["checkpoint_sha256"] != old

    # a recording made from another run's checkpoints is refused, not mixed
    other = tmp_path / "other"
    _train(capsys, other, epochs=1, seed=2)
    code, err = run_cli(capsys, "collect", other, "--out", run / "recording", "--device", "cpu", "--no-progress")
    assert code == 2 and "different source_run_id" in one_line(err)


def test_a_changed_checkpoint_is_recorded_again(capsys, tmp_path):
    run = tmp_path / "R"
    _train(capsys, run, epochs=1)
    assert main(["collect", str(run), "--device", "cpu", "--no-progress"]) == 0
    ckpt = load_checkpoint(run / "checkpoints" / "epoch_0001.pt")
    for v in ckpt["model"].values():
        if v.is_floating_point():
            v.mul_(1.01)
    torch.save(ckpt, run / "checkpoints" / "epoch_0001.pt")
    capsys.readouterr()
    assert main(["collect", str(run), "--device", "cpu", "--no-progress"]) == 0
    assert "recorded 1 checkpoint(s) (epoch 1 re-recorded: checkpoint file changed)" in capsys.readouterr().out


def test_a_recording_is_tied_to_its_tap_selection(capsys, tmp_path):
    run = tmp_path / "R"
    _train(capsys, run, epochs=1)
    rec = tmp_path / "X"
    assert main(["collect", str(run), "--taps", "stage:1", "--out", str(rec), "--device", "cpu", "--no-progress"]) == 0
    code, err = run_cli(capsys, "collect", run, "--out", rec, "--device", "cpu", "--no-progress")
    assert code == 2 and "different taps_selector" in one_line(err) and "choose another --out" in err
    assert len(Recording.open(rec).taps) == 1  # the one-tap recording is untouched


# 2 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [["--model", "cifar_resnet15"], ["--data-root", "/nonexistent/place"],
                                 ["--attn", "nope"]])
def test_overwrite_validates_before_touching_anything(capsys, tmp_path, bad):
    run = tmp_path / "R"
    _train(capsys, run, epochs=1)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    args = cli_args(tiny_cfg(epochs=1))
    code, err = run_cli(capsys, "train", *args, *bad, "--overwrite", "--out", run)
    assert code == 2, err
    one_line(err)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing deleted
    load_model(run / "checkpoints" / "epoch_0001.pt")


# 3 --------------------------------------------------------------------------------------------
def test_resume_exits_zero_and_a_finished_run_says_so(capsys, tmp_path):
    run = tmp_path / "R"
    proc = subprocess.Popen([sys.executable, "-m", "stripe", "train", *cli_args(tiny_cfg(epochs=3)), "--out", str(run)],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (run / "checkpoints" / "epoch_0001.pt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert 3 not in [e for e, _ in list_checkpoints(run)]
    code = main(["train", *cli_args(tiny_cfg(epochs=3)), "--resume", "--out", str(run)])
    out = capsys.readouterr().out
    assert code == 0 and "done: epoch 3/3" in out
    code = main(["train", *cli_args(tiny_cfg(epochs=3)), "--resume", "--out", str(run)])
    out = capsys.readouterr().out
    assert code == 0 and "already finished; nothing to train" in out


# 4 --------------------------------------------------------------------------------------------
def _hold_lock(directory: Path) -> subprocess.Popen:
    """Another process holding the directory's lock (as a running `stripe train` would)."""
    code = ("import sys, time\nfrom stripe.fsio import DirLock\nDirLock(sys.argv[1]).acquire()\n"
            "print('locked', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(directory)], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_two_writers_of_one_run_or_recording_are_refused(capsys, tmp_path):
    run = tmp_path / "R"
    holder = _hold_lock(run)
    try:
        code, err = run_cli(capsys, "train", *cli_args(tiny_cfg(epochs=1)), "--out", run)
        assert code == 2 and f"in use by pid {holder.pid}" in one_line(err)
        assert not (run / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    _train(capsys, run, epochs=1)  # the lock died with its owner: nothing stale
    rec = tmp_path / "rec"
    holder = _hold_lock(rec)
    try:
        code, err = run_cli(capsys, "collect", run, "--out", rec, "--device", "cpu", "--no-progress")
        assert code == 2 and f"in use by pid {holder.pid}" in one_line(err)
    finally:
        holder.kill()
        holder.wait()


# 5 --------------------------------------------------------------------------------------------
def test_a_crash_between_checkpoint_and_metrics_row_loses_no_row(tmp_path, monkeypatch):
    import stripe.train.loop as loop
    from stripe.train import train

    from helpers import run_data

    cfg = tiny_cfg(epochs=3)
    real = loop.write_metrics

    def crash_after_checkpoint_2(path, rows):
        if rows[-1]["epoch"] == 2:
            raise KeyboardInterrupt  # checkpoint 2 is on disk, its row is not
        real(path, rows)

    monkeypatch.setattr(loop, "write_metrics", crash_after_checkpoint_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path, device="cpu", progress=False, data=run_data(cfg))
    monkeypatch.setattr(loop, "write_metrics", real)
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [0, 1]
    train(cfg, tmp_path, resume=True, device="cpu", progress=False, data=run_data(cfg))
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert m["epoch"].tolist() == [0, 1, 2, 3]
    saved = load_checkpoint(tmp_path / "checkpoints" / "epoch_0002.pt")["metrics"]
    assert m.loc[2, "test_acc"] == pytest.approx(saved["test_acc"], rel=1e-5)


# 6 --------------------------------------------------------------------------------------------
def test_ablate_save_stores_the_saved_models_own_accuracy(capsys, tmp_path):
    from stripe.data import Loader
    from stripe.train import evaluate, read_run, run_eval_sets

    run = tmp_path / "R"
    _train(capsys, run, epochs=2, asr=False)
    code, err = run_cli(capsys, "ablate", run, "--scope", "stage", "--save", tmp_path / "plain.pt", "--device", "cpu",
                        "--no-progress")
    assert code == 0, err
    model = load_model(tmp_path / "plain.pt")
    _, data = run_eval_sets(read_run(run))
    acc = evaluate(model, Loader(data.test, 100, train=False))[1]
    assert model.load_info.extra["metrics"]["test_acc"] == pytest.approx(acc)


# 7 and 8: one-line messages instead of tracebacks ---------------------------------------------
def _zip_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar"
    folder.mkdir()
    return folder


def test_train_subset_smaller_than_a_batch(capsys, tmp_path):
    code, err = run_cli(capsys, "train", *cli_args(tiny_cfg(train_subset=16, batch_size=64)), "--out", tmp_path / "R")
    assert code == 2 and "fewer than one batch of 64" in one_line(err)
    assert not (tmp_path / "R").exists()  # nothing half-made


def test_broken_data_files_are_named(capsys, tmp_path):
    folder = _zip_folder(tmp_path)
    (folder / "test.zip").write_bytes(b"this is not a zip")
    (folder / "train.zip").write_bytes(b"this is not a zip")
    code, err = run_cli(capsys, "train", "--data-root", folder, "--epochs", "1", "--out", tmp_path / "R")
    assert code == 2 and f"{folder / 'test.zip'}: not a readable zip file" in one_line(err)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, cls in enumerate(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                 "truck"]):
            zf.writestr(f"test/{cls}/0000.jpg", b"\xff\xd8garbage" if i == 3 else _jpeg())
    (folder / "test.zip").write_bytes(buf.getvalue())
    code, err = run_cli(capsys, "train", "--data-root", folder, "--epochs", "1", "--out", tmp_path / "R",
                        "--probe-split", "test", "--probe-n", "2")
    line = one_line(err)
    assert code == 2 and str(folder / "test.zip") in line and "test/cat/0000.jpg" in line

    whole = (folder / "test.zip").read_bytes()
    (folder / "test.zip").write_bytes(whole[: len(whole) // 2])
    code, err = run_cli(capsys, "train", "--data-root", folder, "--epochs", "1", "--out", tmp_path / "R")
    assert code == 2 and str(folder / "test.zip") in one_line(err)


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buf, format="JPEG")
    return buf.getvalue()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_cifar_pickle_is_refused_in_one_line(capsys, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({"data": _Evil()}))
    code, err = run_cli(capsys, "train", "--data-root", tmp_path, "--epochs", "1", "--out", tmp_path / "R")
    line = one_line(err)
    assert code == 2 and "refusing to load posix.system" in line and "test_batch" in line


@pytest.mark.parametrize(("argv", "message"), [
    (["collect", "{run}", "--checkpoints", "every:0"], "--checkpoints: every:K needs K >= 1"),
    (["collect", "{run}", "--checkpoints", "every:x"], "--checkpoints: expected all, last, every:K or epoch numbers"),
    (["collect", "{run}", "--checkpoints", "1,x"], "--checkpoints: expected all, last, every:K or epoch numbers"),
    (["collect", "{run}", "--probe", "0"], "--probe must be run, train, test or a positive number of images"),
    (["collect", "--files", "{run}/checkpoints/epoch_0001.pt", "--model-config", "/dev/null", "--dataset", "cifar10",
      "--out", "{tmp}/x"], "--model-config /dev/null: not JSON"),
    (["stats", "{tmp}/empty"], "the recording has no checkpoints yet"),
    (["train", "--test-subset", "-5", "--out", "{tmp}/y"], "--test-subset must be a positive number of images, got -5"),
    (["train", "--keep-checkpoints", "every:0", "--out", "{tmp}/y"], "--keep-checkpoints: every:K needs K >= 1"),
])
def test_clear_messages(capsys, tmp_path, argv, message):
    run = tmp_path / "R"
    if any("{run}" in a for a in argv):
        _train(capsys, run, epochs=1)
    if "{tmp}/empty" in argv:
        from stripe.record.format import RecordingWriter

        with RecordingWriter(tmp_path / "empty", {"model": {}}) as w:
            w.write_manifest()
    argv = [a.format(run=run, tmp=tmp_path) for a in argv]
    code, err = run_cli(capsys, *argv)
    assert code == 2 and message in one_line(err), err


def test_disk_full_while_writing_names_the_file_and_keeps_the_old_one(capsys, tmp_path, monkeypatch):
    import errno

    from stripe import fsio

    run = tmp_path / "R"
    _train(capsys, run, epochs=1)
    before = (run / "checkpoints" / "epoch_0001.pt").read_bytes()
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio.os, "fsync", full)
    code, err = run_cli(capsys, "train", *cli_args(tiny_cfg(epochs=1)), "--overwrite", "--out", run)
    monkeypatch.setattr(fsio.os, "fsync", real)
    line = one_line(err)
    assert code == 2 and "no space left on device" in line and "nothing already written was changed" in line
    assert (run / "checkpoints" / "epoch_0001.pt").read_bytes() == before  # the old run is back in place
    assert not list(run.glob(".trash-*")) and not list(run.rglob("*.tmp"))
    code, err = run_cli(capsys, "collect", run, "--out", tmp_path / "rec", "--device", "cpu", "--no-progress")
    assert code == 0, err


# 9 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("option", "message"), [
    (["--lr", "-0.1"], "--lr must be > 0"), (["--gamma", "-0.1"], "--gamma must be in (0, 1]"),
    (["--momentum", "5"], "--momentum must be in [0, 1)"), (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--model", "cifar_resnet15"], "cifar_resnet15: depth must be 9n+2"),
    (["--attn", "nope"], "unknown attention 'nope'"),
])
def test_nonsense_is_refused_before_any_data_is_read(capsys, tmp_path, option, message):
    # a data root that does not exist: the config error must come first
    code, err = run_cli(capsys, "train", "--data-root", tmp_path / "nowhere", *option, "--out", tmp_path / "R")
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "R").exists()


def test_subsets_larger_than_the_data_are_refused_not_clamped(capsys, tmp_path):
    code, err = run_cli(capsys, "train", *cli_args(tiny_cfg(train_subset=10**7)), "--out", tmp_path / "R")
    assert code == 2 and "--train-subset 10000000 is larger than the" in one_line(err)
    code, err = run_cli(capsys, "train", *cli_args(tiny_cfg(test_subset=10**7)), "--out", tmp_path / "R")
    assert code == 2 and "--test-subset 10000000 is larger than the" in one_line(err)
    _train(capsys, tmp_path / "ok", epochs=1)
    info = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert info["data"]["train_n"] == 256 and info["data"]["test_n"] == 200 and info["probe"]["n"] == 300


# 10 -------------------------------------------------------------------------------------------
def test_a_deleted_raw_file_is_recorded_again(capsys, tmp_path):
    run = tmp_path / "R"
    _train(capsys, run, epochs=1)
    assert main(["collect", str(run), "--device", "cpu", "--no-progress"]) == 0
    (run / "recording" / "raw" / "epoch_0001.safetensors").unlink()
    capsys.readouterr()
    assert main(["collect", str(run), "--device", "cpu", "--no-progress"]) == 0
    assert "recorded 1 checkpoint(s)" in capsys.readouterr().out
    assert (run / "recording" / "raw" / "epoch_0001.safetensors").is_file()


# 11 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "block", "params"), [
    ("cifar_resnet20", "basic", 0.27), ("cifar_resnet56", "basic", 0.85), ("cifar_resnet110", "basic", 1.73),
    ("cifar_resnet164", "bottleneck", 1.70),
])
def test_model_names_follow_the_field_convention(name, block, params):
    from stripe.nn import count_params, create_model

    m = create_model(name, num_classes=10)
    # He et al. report 0.27 M, 0.85 M, 1.7 M with parameter-free (option A) shortcuts; ours are 1x1 projections
    assert m.config.block == block and count_params(m) / 1e6 == pytest.approx(params, abs=0.01)
    assert create_model(name, num_classes=10, block="bottleneck").config.block == "bottleneck"


def test_models_command_and_run_names_show_the_block(capsys, tmp_path, monkeypatch):
    assert main(["models", "--model", "cifar_resnet20"]) == 0
    out = capsys.readouterr().out
    assert "basic" in out and "cifar_resnet20" in out
    monkeypatch.setenv("STRIPE_DATA_DIR", str(tmp_path))
    code = main(["train", *cli_args(tiny_cfg(epochs=1))])
    assert code == 0
    assert (tmp_path / "runs" / "cifar_resnet8-basic-plus_asr_se-seed0" / "config.json").is_file()


def test_runs_and_recordings_of_the_earlier_format_still_load(capsys, tmp_path):
    """A stripe-run/1 run (flat train config, probe on the test split, no score spec, no run id) and its
    stripe-recording/1 recording (no folds) keep working: collect, stats, ablate, resume."""
    run = tmp_path / "old"
    _train(capsys, run, epochs=1, asr=False)
    info = json.loads((run / "config.json").read_text())
    from stripe.data import load_dataset, probe_hash, stratified_indices

    test_full = load_dataset(real_dataset_name(), "test")
    idx = stratified_indices(test_full.labels, 300, 0)
    model = info["train"].pop("model")
    flat = {**info["train"], "model": model["name"], "attn": model["attn"], "asr": model["asr"],
            "both": model["both"], "block": model["block"], "psi_size": model["psi_size"], "psi_init": model["psi_init"]}
    flat.pop("probe_split"), flat.pop("keep_checkpoints")
    old = {"format": "stripe-run/1", "stripe_version": "0.1.0", "train": flat, "model": info["model"],
           "data": info["data"], "probe": {"split": "test", "n": 300, "seed": 0,
                                           "hash": probe_hash(test_full.source_hash, idx)}}
    (run / "config.json").write_text(json.dumps(old))
    for _, path in list_checkpoints(run):  # format-1 checkpoints carry no run id
        ckpt = load_checkpoint(path)
        ckpt.pop("run_id")
        torch.save(ckpt, path)
    assert main(["collect", str(run), "--device", "cpu", "--no-progress", "--folds", "1"]) == 0
    manifest = json.loads((run / "recording" / "manifest.json").read_text())
    manifest["format"] = "stripe-recording/1"
    (run / "recording" / "manifest.json").write_text(json.dumps(manifest))
    assert main(["stats", str(run / "recording")]) == 0
    assert main(["ablate", str(run), "--device", "cpu", "--no-progress"]) == 0
    abl = pd.read_csv(run / "ablation" / "ablation.csv")
    assert (abl["n_test"] == len(test_full) - 300).all()  # the test split without the probe images
