"""Never delete what stripe did not write; every failure a clear line; nothing damaged passes for done.

One test per item of the hostile review (numbers in the test names). Every case goes through the
command line like a user would and checks the exit code, the one-line message and every byte on disk.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from stripe.cli import main
from stripe.errors import RefusedError, StripeError, UserError
from stripe.record import Recording

from helpers import cli_args, tiny_cfg

pytestmark = pytest.mark.real_data


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``stripe ARGV``."""
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err.strip()


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("stripe ")]
    assert len(lines) == 1, err
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under ``root``, by relative path."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def user_folder(root: Path) -> Path:
    """A folder of the user's: files, a git repository, a config.json and a metrics.csv that are not stripe's."""
    d = root / "mine"
    (d / ".git" / "objects").mkdir(parents=True)
    (d / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (d / ".git" / "objects" / "ab12").write_bytes(os.urandom(64))
    (d / "notes.txt").write_text("my notes\n")
    (d / "config.json").write_text(json.dumps({"lr": 0.1, "mine": True}))
    (d / "metrics.csv").write_text("epoch,acc\n1,0.5\n")
    (d / "sub").mkdir()
    (d / "sub" / "data.bin").write_bytes(os.urandom(128))
    return d


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny finished run (+SE, 1 epoch) with its recording and ablation."""
    r = tmp_path_factory.mktemp("safety") / "run"
    assert main(["train", *cli_args(tiny_cfg(epochs=1, asr=False)), "--record", "--out", str(r)]) == 0
    return r


# 1 -------------------------------------------------------------------------------------------------
def test_01_no_command_writes_into_or_deletes_a_users_folder(capsys, tmp_path, run):
    mine = user_folder(tmp_path)
    before = snapshot(mine)
    (tmp_path / "keep.pt").write_bytes(b"user weights")
    cases = [
        ["train", *cli_args(tiny_cfg(epochs=1)), "--out", mine],
        ["train", *cli_args(tiny_cfg(epochs=1)), "--out", mine, "--overwrite"],
        ["train", *cli_args(tiny_cfg(epochs=1)), "--out", mine, "--resume"],
        ["collect", run, "--out", mine, "--device", "cpu", "--no-progress"],
        ["collect", run, "--out", mine, "--device", "cpu", "--no-progress", "--overwrite"],
        ["ablate", run, "--out", mine, "--device", "cpu", "--no-progress"],
        ["ablate", run, "--save", tmp_path / "keep.pt", "--device", "cpu", "--no-progress"],
        ["stats", run / "recording", "--out", mine],
        ["figures", run, "--out", mine],
        ["compare", "--attn", "se", "--table-only", "--out", mine],
        ["reproduce", "demo-cpu", "--dry-run", "--out", mine, "--no-progress"],
        ["demo", "--tiny", "--out", mine, "--no-progress"],
    ]
    for argv in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        line = one_line(err)
        assert ("files stripe did not write" in line or "was not written by stripe" in line
                or "holds no run to resume" in line), (argv, line)
        assert snapshot(mine) == before, argv  # every byte of the user's folder survived
    assert (tmp_path / "keep.pt").read_bytes() == b"user weights"


def test_01_overwrite_of_a_stripe_run_keeps_the_users_own_files_in_it(capsys, tmp_path):
    r = tmp_path / "r"
    assert main(["train", *cli_args(tiny_cfg(epochs=1)), "--out", str(r)]) == 0
    (r / "my_notes.txt").write_text("keep me")
    old_id = json.loads((r / "config.json").read_text())["run_id"]
    code, _, err = run_cli(capsys, "train", *cli_args(tiny_cfg(epochs=1, seed=3)), "--out", r, "--overwrite")
    assert code == 0, err
    assert (r / "my_notes.txt").read_text() == "keep me"
    assert json.loads((r / "config.json").read_text())["run_id"] != old_id
    # an empty folder (or one holding only stripe's lock) is fine to start in; --resume there is refused
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "train", *cli_args(tiny_cfg(epochs=1)), "--out", empty, "--resume")
    assert code == 2 and "holds no run to resume" in one_line(err)
    assert list(empty.iterdir()) == []


# 2 -------------------------------------------------------------------------------------------------
def test_02_a_failed_archive_write_keeps_the_old_archive(tmp_path, monkeypatch):
    from stripe.experiments import archive as presets

    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "x.txt").write_text("first")
    presets.pack(out)
    good = (out / "results.tar.gz").read_bytes()
    (out / "a" / "y.txt").write_text("second")

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "add", full)
    with pytest.raises(StripeError, match="no space left on device"):
        presets.pack(out)
    assert (out / "results.tar.gz").read_bytes() == good
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# 3 -------------------------------------------------------------------------------------------------
def test_03_an_output_below_a_folder_named_checkpoints_is_archived(tmp_path):
    from stripe.experiments import archive as presets

    out = tmp_path / "checkpoints" / "x"
    (out / "runs" / "r" / "checkpoints").mkdir(parents=True)
    (out / "runs" / "r" / "metrics.csv").write_text("epoch\n1\n")
    (out / "runs" / "r" / "checkpoints" / "epoch_0001.pt").write_bytes(b"w" * 100)
    with tarfile.open(presets.pack(out)) as tar:
        names = tar.getnames()
    assert names == ["runs/r/metrics.csv"]  # checkpoints inside out are left out, nothing else


# 4 -------------------------------------------------------------------------------------------------
def _collect(capsys, rec_src: Path, out: Path | None = None) -> tuple[int, str, str]:
    extra = ["--out", out] if out else []
    return run_cli(capsys, "collect", rec_src, "--device", "cpu", "--no-progress", *extra)


def test_04_a_damaged_recording_is_recorded_again_not_skipped(capsys, tmp_path, run):
    r = tmp_path / "run"
    shutil.copytree(run, r)
    rec = r / "recording"
    manifest = json.loads((rec / "manifest.json").read_text())
    assert all("stats_sha256" in c and "raw_sha256" in c for c in manifest["checkpoints"])
    code, out, err = _collect(capsys, r)
    assert code == 0 and "skipped 2 already done" in out, err
    # a truncated stats file
    stats1 = rec / "stats" / "epoch_0001.parquet"
    stats1.write_bytes(stats1.read_bytes()[:100])
    code, out, err = _collect(capsys, r)
    assert code == 0 and "epoch 1 re-recorded: stats file damaged" in out, out
    # two stats paths swapped in the manifest
    m = json.loads((rec / "manifest.json").read_text())
    m["checkpoints"][0]["stats"], m["checkpoints"][1]["stats"] = m["checkpoints"][1]["stats"], m["checkpoints"][0]["stats"]
    (rec / "manifest.json").write_text(json.dumps(m))
    code, out, err = _collect(capsys, r)
    assert code == 0 and "recorded 2 checkpoint(s)" in out and "damaged" in out, out
    # a path that leaves the recording: the reader refuses it, collect records the epoch anew
    m = json.loads((rec / "manifest.json").read_text())
    m["checkpoints"][0]["stats"] = "../../secret.parquet"
    (rec / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="points outside the recording"):
        Recording.open(rec).frame(0)
    code, out, err = _collect(capsys, r)
    assert code == 0 and "epoch 0 re-recorded: stats path '../../secret.parquet' points outside" in out, out
    # an empty tap list
    m = json.loads((rec / "manifest.json").read_text())
    m["taps"] = []
    (rec / "manifest.json").write_text(json.dumps(m))
    code, out, err = _collect(capsys, r)
    # the first epoch recorded again restores the list; the other epoch's files are intact (hashes) and kept
    assert code == 0 and "recorded 1 checkpoint(s) (epoch 0 re-recorded: the manifest lists no taps)" in out, out
    assert Recording.open(rec).taps.shape[0] > 0
    code, out, err = _collect(capsys, r)
    assert "skipped 2 already done" in out


# 5 -------------------------------------------------------------------------------------------------
def test_05_the_recording_of_another_file_is_not_replaced_silently(capsys, tmp_path, run):
    other = tmp_path / "other"
    assert main(["train", *cli_args(tiny_cfg(epochs=1, asr=False, seed=5)), "--out", str(other)]) == 0
    cfg = tmp_path / "cfg.json"
    cfg.write_text((run / "config.json").read_text())
    out = tmp_path / "rec"
    common = ["--model-config", cfg, "--dataset", tiny_cfg().dataset, "--probe", "100", "--out", out,
              "--device", "cpu", "--no-progress"]
    code, _, err = run_cli(capsys, "collect", "--files", run / "checkpoints" / "epoch_0001.pt", *common)
    assert code == 0, err
    first = (out / "manifest.json").read_bytes()
    code, _, err = run_cli(capsys, "collect", "--files", other / "checkpoints" / "epoch_0001.pt", *common)
    assert code == 2 and "holds the recording of other files" in one_line(err) and "--overwrite" in err
    assert (out / "manifest.json").read_bytes() == first
    code, outp, err = run_cli(capsys, "collect", "--files", other / "checkpoints" / "epoch_0001.pt", *common,
                              "--overwrite")
    assert code == 0 and "epoch 1 re-recorded: checkpoint file changed" in outp, err
    (out / "stats" / "epoch_0001.parquet").unlink()
    code, outp, err = run_cli(capsys, "collect", "--files", other / "checkpoints" / "epoch_0001.pt", *common)
    assert code == 0 and "epoch 1 re-recorded: stats file missing" in outp, err


# 6 -------------------------------------------------------------------------------------------------
def test_06_only_distinct_runs_aggregate_as_seeds(capsys, tmp_path, run):
    rec = run / "recording"
    code, _, err = run_cli(capsys, "stats", rec, rec, "--out", tmp_path / "s1")
    assert code == 2 and "the same recording is given twice" in one_line(err)
    stage1 = tmp_path / "stage1"
    assert main(["collect", str(run), "--taps", "stage:1", "--out", str(stage1), "--device", "cpu",
                 "--no-progress"]) == 0
    code, _, err = run_cli(capsys, "stats", rec, stage1, "--out", tmp_path / "s2")
    assert code == 2 and "record the same run" in one_line(err)
    seed1 = tmp_path / "seed1"
    assert main(["train", *cli_args(tiny_cfg(epochs=1, asr=False, seed=1)), "--record", "--out", str(seed1)]) == 0
    code, out, err = run_cli(capsys, "stats", rec, seed1 / "recording", "--out", tmp_path / "s3")
    assert code == 0 and "2 runs aggregated" in out, err
    asr = tmp_path / "asr"
    assert main(["train", *cli_args(tiny_cfg(epochs=1, seed=2)), "--record", "--out", str(asr)]) == 0
    code, _, err = run_cli(capsys, "stats", rec, asr / "recording", "--out", tmp_path / "s4")
    assert code == 2 and "differ in their model" in one_line(err)


# 7 and 9 -------------------------------------------------------------------------------------------
def test_07_09_compare_table_only_checks_each_runs_files(capsys, tmp_path):
    out = tmp_path / "cmp"
    base = tiny_cfg(epochs=1, asr=False)
    for label, extra, seed in (("plus_se", [], 0), ("baseline", [], 0), ("plus_se", [], 1)):
        argv = cli_args(tiny_cfg(epochs=1, asr=False, seed=seed))
        if label == "baseline":
            i = argv.index("--attn")
            del argv[i:i + 2]
        assert main(["train", *argv, "--out", str(out / "runs" / f"{label}_seed{seed}")]) == 0
    code, stdout, err = run_cli(capsys, "compare", "--attn", "se", "--table-only", "--out", out)
    assert code == 0 and "left out" not in err, err
    # 7: predictions of another run, checkpoints gone
    (out / "runs" / "plus_se_seed1" / "predictions_final.npz").unlink()
    shutil.copy(out / "runs" / "plus_se_seed0" / "predictions_final.npz", out / "runs" / "plus_se_seed1")
    shutil.rmtree(out / "runs" / "plus_se_seed1" / "checkpoints")
    code, stdout, err = run_cli(capsys, "compare", "--attn", "se", "--table-only", "--out", out)
    assert code == 0 and "plus_se_seed1" in err and "made for run" in err, err
    # 9: epoch 0 only, no epoch column, no params, a folder whose name says another seed
    r = out / "runs" / "plus_se_seed1"
    shutil.rmtree(r)
    shutil.copytree(out / "runs" / "plus_se_seed0", r)  # config says seed 0, folder says seed 1
    code, stdout, err = run_cli(capsys, "compare", "--attn", "se", "--table-only", "--out", out)
    assert code == 0 and "folder name says plus_se_seed1" in err and "seed 0" in err, err
    shutil.rmtree(r)
    b = out / "runs" / "baseline_seed0"
    lines = (b / "metrics.csv").read_text().splitlines()
    (b / "metrics.csv").write_text("\n".join(lines[:2]) + "\n")
    code, stdout, err = run_cli(capsys, "compare", "--attn", "se", "--table-only", "--out", out)
    assert code == 0 and "no trained epoch yet" in err, err
    (b / "metrics.csv").write_text("\n".join(l.split(",", 1)[1] for l in lines) + "\n")
    code, stdout, err = run_cli(capsys, "compare", "--attn", "se", "--table-only", "--out", out)
    assert code == 0 and "no column epoch" in err, err
    info = json.loads((out / "runs" / "plus_se_seed0" / "config.json").read_text())
    del info["params"]
    (out / "runs" / "plus_se_seed0" / "config.json").write_text(json.dumps(info))
    code, stdout, err = run_cli(capsys, "compare", "--attn", "se", "--table-only", "--out", out)
    assert code == 2 and "no run could be tabulated" in one_line(err) and "'params'" in err, err


# 10 and 11 -----------------------------------------------------------------------------------------
def test_10_11_model_sources_that_fail_say_what_failed(capsys, tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text("import sys\n"
                                   "def broken(num_classes=10):\n    raise KeyError('no such layer')\n"
                                   "def quits(num_classes=10):\n    sys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = run_cli(capsys, "fold", "--model", "userpkg.models:broken", "--num-classes", "10")
    assert code == 2 and "model factory 'userpkg.models:broken' raised KeyError" in one_line(err)
    code, _, err = run_cli(capsys, "fold", "--model", "userpkg.models:quits", "--num-classes", "10")
    assert code == 2 and "called sys.exit(0)" in one_line(err)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    code, _, err = run_cli(capsys, "fold", "--model", f"onnx:{empty}")
    assert code == 2 and "the file is empty" in one_line(err)
    code, _, err = run_cli(capsys, "fold", "--model", f"onnx:{tmp_path}")
    assert code == 2 and "is a folder, not an ONNX file" in one_line(err)
    code, _, err = run_cli(capsys, "collect", "--model", "torchvision:mobilenet_v3_small", "--weights", tmp_path,
                           "--dataset", tiny_cfg().dataset, "--out", tmp_path / "r")
    assert code == 2 and "is a folder, not a weights" in one_line(err)


# 12 ------------------------------------------------------------------------------------------------
def test_12_a_full_disk_while_saving_a_checkpoint_is_named(capsys, tmp_path, monkeypatch):
    import stripe.fsio as fsio

    real = torch.save

    def full(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("epoch") == 1:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1088 vs 1024")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(fsio.torch, "save", full)
    r = tmp_path / "r"
    code, _, err = run_cli(capsys, "train", *cli_args(tiny_cfg(epochs=1)), "--out", r)
    line = one_line(err)
    assert code == 2 and "epoch_0001.pt" in line and "the disk is full" in line and "partial file was removed" in line
    assert (r / "checkpoints" / "epoch_0000.pt").is_file()  # what was written before is kept
    assert not list((r / "checkpoints").glob(".*.tmp"))


# 13 ------------------------------------------------------------------------------------------------
def test_13_a_budget_that_is_not_positive_is_refused(capsys, tmp_path):
    for b in ("-5", "0"):
        code, _, err = run_cli(capsys, "reproduce", "cifar10-resnet20-cpu", "--budget", b, "--out", tmp_path / b)
        assert code == 2 and "--budget must be a positive number of seconds" in one_line(err)
        assert not (tmp_path / b).exists()


# 14 ------------------------------------------------------------------------------------------------
def test_14_collect_checks_inputs_before_creating_anything(capsys, tmp_path, run):
    out = tmp_path / "rec"
    code, _, err = run_cli(capsys, "collect", "--model", "timm:seresnet18", "--weights", tmp_path / "nope.pth",
                           "--dataset", tiny_cfg().dataset, "--out", out)
    assert code == 2 and "--weights" in one_line(err) and "no such file" in err
    assert not out.exists()
    code, _, err = run_cli(capsys, "collect", "--files", run / "checkpoints" / "epoch_0001.pt", "--model-config",
                           run / "config.json", "--dataset", tiny_cfg().dataset, "--taps", "layer9*", "--out", out,
                           "--device", "cpu", "--no-progress")
    assert code == 2 and "no tap matches" in one_line(err)
    assert not out.exists()  # the folder it made for nothing is gone again


# 15 ------------------------------------------------------------------------------------------------
def test_15_messages_name_things_not_python_objects(tmp_path, monkeypatch):
    import io
    import zipfile

    from stripe.data import readers
    from stripe.fsio import write_bytes

    with pytest.raises(UserError) as e:
        readers._decode_jpegs([b"not a jpeg"], ["train/cat/1.jpg"], (32, 32), "x", "train.zip")
    assert "BytesIO" not in str(e.value) and "train/cat/1.jpg" in str(e.value)
    import tempfile

    def denied(*a, **k):  # the folder cannot be written (as a read-only folder does for a normal user)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(StripeError) as e:
        write_bytes(tmp_path / "f.bin", b"x")
    assert "Permission denied" in str(e.value) and "partial file" not in str(e.value)  # nothing written or removed


# 16 ------------------------------------------------------------------------------------------------
def test_16_user_errors_are_one_line_bugs_keep_their_traceback(capsys, monkeypatch):
    from stripe import cli

    def user_error(args):
        raise RefusedError("would overwrite something")

    def bug(args):
        raise KeyError("internal")

    monkeypatch.setitem(cli.COMMANDS, "models", user_error)
    code, _, err = run_cli(capsys, "models")
    assert code == 2 and one_line(err) == "stripe models: error: would overwrite something"
    monkeypatch.setitem(cli.COMMANDS, "models", bug)
    with pytest.raises(KeyError, match="internal"):
        main(["models"])
    # as a program: exit 1 with the traceback
    import subprocess

    script = ("import sys; from stripe import cli\n"
              "def bug(a): raise KeyError('internal')\n"
              "cli.COMMANDS['models'] = bug\n"
              "sys.exit(cli.main(['models']))\n")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" in p.stderr and "KeyError: 'internal'" in p.stderr
