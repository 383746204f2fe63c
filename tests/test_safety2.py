"""Nothing of a user's touched, nothing wrong printed clean (the second hostile review).

One test per HIGH and MEDIUM item (H1-H3, M1-M5 in the test names), then the smaller items. Every case
goes through the command line like a user would and checks the exit code, the one-line message and every
byte on disk.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stripe.cli import main
from stripe.errors import RefusedError, StripeError, UserError

from helpers import cli_args, tiny_cfg
from test_safety import one_line, run_cli, snapshot

pytestmark = pytest.mark.real_data
REPO = Path(__file__).resolve().parents[1]


def _official_dir() -> Path | None:
    """The official ASR code's run folders (see tests/test_official.py), if they are here."""
    env = os.environ.get("STRIPE_OFFICIAL_ASR_CKPTS")
    for c in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data" / "official-asr-ckpts"]:
        if (c / "cifar10-resnet20-senet" / "checkpoint.pth.tar").is_file():
            return c
    return None


OFFICIAL = _official_dir()
needs_official = pytest.mark.skipif(OFFICIAL is None, reason="the official ASR checkpoints are not here")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny finished run (+SE, 1 epoch) with its recording."""
    r = tmp_path_factory.mktemp("safety2") / "run"
    assert main(["train", *cli_args(tiny_cfg(epochs=1, asr=False)), "--record", "--out", str(r)]) == 0
    return r


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _mywork(parent: Path, name: str = "mywork") -> Path:
    """A user's folder inside a stripe folder: a thesis, a metrics.csv, a git repository and a hidden file."""
    d = parent / name
    (d / ".git").mkdir(parents=True)
    (d / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (d / "thesis.tex").write_text("\\documentclass{article}\n")
    (d / "metrics.csv").write_text("epoch,acc\n1,0.5\n")
    (d / ".hidden").write_text("mine\n")
    return d


# H1 ------------------------------------------------------------------------------------------------
def test_h1_a_users_folder_inside_a_stripe_folder_is_not_stripes(capsys, tmp_path, run):
    r = _copy(run, tmp_path / "run")
    mine = _mywork(r)
    before = snapshot(mine)
    cases = [
        ["train", *cli_args(tiny_cfg(epochs=1)), "--out", mine],
        ["train", *cli_args(tiny_cfg(epochs=1)), "--out", mine, "--overwrite"],
        ["collect", r, "--out", mine, "--device", "cpu", "--no-progress"],
        ["ablate", r, "--out", mine, "--device", "cpu", "--no-progress"],
    ]
    for argv in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "files stripe did not write" in one_line(err), (argv, err)
        assert snapshot(mine) == before, argv  # every byte of the user's folder survived
    # a new folder inside the run is stripe's to make; a stripe folder's own parts stay its own
    code, _, err = run_cli(capsys, "collect", r, "--out", r / "mywork3", "--device", "cpu", "--no-progress")
    assert code == 0, err
    from stripe.fsio import owner_kind

    assert owner_kind(r / "mywork3") == "recording" and owner_kind(r / "recording") == "recording"
    assert owner_kind(mine) is None


def test_h1_a_users_folder_with_the_name_of_a_stripe_part_is_not_stripes(capsys, tmp_path, run):
    """A user's folder inside a run named as stripe names its parts (logs, figures, stats, checkpoints) is the
    user's when it holds files stripe does not write there; a part holding only stripe's files stays stripe's."""
    from stripe.fsio import PARTS, owner_kind

    r = _copy(run, tmp_path / "run")
    # what stripe wrote stays its own: every part of a trained and recorded run, marked or not
    parts = [p for p in r.rglob("*") if p.is_dir() and p.name in PARTS]
    assert {"checkpoints", "recording", "raw", "stats"} <= {p.name for p in parts}
    assert all(owner_kind(p) is not None for p in parts), [str(p) for p in parts if owner_kind(p) is None]
    for name in ("logs", "figures", "stats", "checkpoints"):
        mine = _mywork(r, name)
        before = snapshot(mine)
        assert owner_kind(mine) is None, name
        for argv in (["train", *cli_args(tiny_cfg(epochs=1)), "--out", mine],
                     ["train", *cli_args(tiny_cfg(epochs=1)), "--out", mine, "--overwrite"],
                     ["collect", r, "--out", mine, "--device", "cpu", "--no-progress"]):
            code, _, err = run_cli(capsys, *argv)
            assert code == 2 and "files stripe did not write" in one_line(err), (argv, err)
            assert snapshot(mine) == before, argv  # every byte of the user's folder survived
    # one foreign file is enough, a hidden one too; stripe's own files (from before the marker) keep a part stripe's
    part = r / "raw"
    part.mkdir()
    (part / "tap_000.npy").write_bytes(b"")
    assert owner_kind(part) == "part of run"
    (part / ".notes").write_text("mine\n")
    assert owner_kind(part) is None
    assert owner_kind(r / "checkpoints") is None  # the user's checkpoints folder made above


# H2 ------------------------------------------------------------------------------------------------
def test_h2_a_lock_that_is_a_symbolic_link_is_refused_and_its_target_kept(capsys, tmp_path, run):
    r = _copy(run, tmp_path / "run")
    precious = tmp_path / "precious.txt"
    precious.write_text("a file of the user's\n")
    cases = [  # the run's lock, and the lock of the recording inside it
        (r, ["train", *cli_args(tiny_cfg(epochs=1, asr=False)), "--out", r, "--resume"]),
        (r / "recording", ["collect", r, "--device", "cpu", "--no-progress"]),
    ]
    for folder, argv in cases:
        lock = folder / ".stripe.lock"
        if lock.exists():
            lock.unlink()
        lock.symlink_to(precious)
        code, _, err = run_cli(capsys, *argv)
        line = one_line(err)
        assert code == 2 and str(lock) in line and "symbolic link" in line, (argv, err)
        assert precious.read_text() == "a file of the user's\n", argv
        assert lock.is_symlink()
    # a link to nowhere: nothing is created where it points
    lock.unlink()
    lock.symlink_to(tmp_path / "created-through-the-link")
    code, _, err = run_cli(capsys, "collect", r, "--device", "cpu", "--no-progress")
    assert code == 2 and "symbolic link" in one_line(err)
    assert not (tmp_path / "created-through-the-link").exists()


def test_h2_measurements_are_not_appended_through_a_symbolic_link(tmp_path):
    from stripe.experiments.budget import Budget
    from stripe.experiments.context import Context, Sizes

    out = tmp_path / "out"
    out.mkdir()
    precious = tmp_path / "precious.jsonl"
    precious.write_text("mine\n")
    (out / "measurements.jsonl").symlink_to(precious)
    ctx = Context(out, Budget(60), Sizes(), "cpu", "cifar10", None, False, False)
    with pytest.raises(RefusedError, match="measurements.jsonl: is a symbolic link"):
        ctx.log({"stage": "env"})
    assert precious.read_text() == "mine\n"
    (out / "measurements.jsonl").unlink()
    ctx.log({"stage": "env"})  # a plain file is appended to
    assert json.loads((out / "measurements.jsonl").read_text())["stage"] == "env"


# H3 ------------------------------------------------------------------------------------------------
def _poison(path: Path, key: str, value: float, index: tuple[int, ...] = (0, 0, 0, 0)) -> None:
    """Set one element of tensor ``key`` of the checkpoint at ``path`` to ``value`` (in place)."""
    ck = torch.load(path, weights_only=True)
    state = ck["model"] if "model" in ck else ck["state_dict"]
    name = next(k for k in state if k.endswith(key))
    state[name][index] = value
    torch.save(ck, path)


def test_h3_every_command_that_scores_a_model_says_its_weights_are_not_finite(capsys, tmp_path, run):
    r = _copy(run, tmp_path / "run")
    last = r / "checkpoints" / "epoch_0001.pt"
    _poison(last, "layer1.0.conv1.weight", float("nan"))
    want = "the model's weights are not finite (1 tensors, first: layer1.0.conv1.weight)"
    for argv in (["ablate", r, "--device", "cpu", "--no-progress"],
                 ["ablate", last, "--out", tmp_path / "ab", "--dataset", tiny_cfg().dataset, "--probe-n", "50",
                  "--test-subset", "50", "--device", "cpu", "--no-progress"],
                 ["fold", "--checkpoint", last]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and want in one_line(err), (argv, out, err)
    assert not (r / "ablation" / "ablation.csv").exists() and not (tmp_path / "ab" / "ablation.csv").exists()
    # compare: the run is left out with the reason, and with no other run there is nothing to tabulate
    cmp = tmp_path / "cmp"
    shutil.copytree(r, cmp / "runs" / "plus_se_seed0")
    code, out, err = run_cli(capsys, "compare", "--attn", "se", "--table-only", "--out", cmp, "--device", "cpu")
    assert code == 2 and want in one_line(err), (out, err)
    # finite weights whose outputs overflow
    _poison(last, "layer1.0.conv1.weight", 3e38)
    for i in range(1, 4):
        _poison(last, "layer1.0.conv1.weight", 3e38, (i, 0, 0, 0))
    code, out, err = run_cli(capsys, "ablate", r, "--device", "cpu", "--no-progress")
    assert code == 2 and "the model's outputs are not finite" in one_line(err), (out, err)


@needs_official
def test_h3_an_official_file_with_a_nan_weight_is_named(capsys, tmp_path):
    f = tmp_path / "checkpoint.pth.tar"
    shutil.copy(OFFICIAL / "cifar10-resnet20-senet-asr" / "checkpoint.pth.tar", f)
    _poison(f, "layer2.0.conv2.weight", float("nan"))
    code, out, err = run_cli(capsys, "ablate", f, "--out", tmp_path / "ab", "--probe-n", "50", "--test-subset", "50",
                             "--device", "cpu", "--no-progress")
    assert code == 2 and "the model's weights are not finite (1 tensors, first: layer2.0.conv2.weight)" in \
        one_line(err), (out, err)
    code, out, err = run_cli(capsys, "fold", "--checkpoint", f)
    assert code == 2 and "weights are not finite" in one_line(err), (out, err)


# M1 ------------------------------------------------------------------------------------------------
@needs_official
def test_m1_collect_of_an_official_folder_whose_best_is_its_last(capsys, tmp_path):
    folder = tmp_path / "official"
    shutil.copytree(OFFICIAL / "cifar10-resnet20-senet", folder)
    shutil.copy(folder / "checkpoint.pth.tar", folder / "model_best.pth.tar")  # the last epoch was the best
    common = ["--probe", "40", "--device", "cpu", "--no-progress"]
    code, out, err = run_cli(capsys, "collect", folder, "--out", tmp_path / "rec", *common)
    assert code == 0 and "recorded 1 checkpoint(s)" in out, err
    # one file given twice: recorded once
    ck = folder / "checkpoint.pth.tar"
    code, out, err = run_cli(capsys, "collect", "--files", ck, ck, "--out", tmp_path / "rec2", *common)
    assert code == 0 and "recorded 1 checkpoint(s)" in out, err
    # two different files of one epoch: refused before anything is written
    other = tmp_path / "other.pth.tar"
    obj = torch.load(ck, weights_only=True)
    obj["acc"] = 99.0
    torch.save(obj, other)
    code, out, err = run_cli(capsys, "collect", "--files", ck, other, "--out", tmp_path / "rec3", *common)
    assert code == 2 and "two different files for epoch 2" in one_line(err), err
    assert not (tmp_path / "rec3").exists()


# M2 ------------------------------------------------------------------------------------------------
def test_m2_the_notebook_kernel_does_not_import_from_the_working_folder(tmp_path, monkeypatch):
    from stripe.viz import notebooks

    hostile = tmp_path / "cwd"
    hostile.mkdir()
    marker = tmp_path / "MARKER"
    for mod in ("stripe", "pandas"):
        (hostile / f"{mod}.py").write_text(f"open({str(marker)!r}, 'a').write('{mod} ran\\n')\n")
    nb = tmp_path / "tiny.py"
    nb.write_text("# %% tags=[\"parameters\"]\nx = 0\n\n# %%\nimport pandas, stripe\n"
                  "print(stripe.__file__, pandas.__file__)\n")
    monkeypatch.setattr(notebooks, "notebook_path", lambda name: nb)
    monkeypatch.chdir(hostile)
    out = notebooks.execute_notebook("tiny", {"x": 1}, tmp_path / "tiny.ipynb", timeout=120)
    assert not marker.exists(), marker.read_text()
    text = out.read_text()
    assert str(hostile) not in text.replace(str(hostile) + "/", "") or "cwd/stripe.py" not in text
    assert "cwd/stripe.py" not in text and "cwd/pandas.py" not in text


# M3 ------------------------------------------------------------------------------------------------
def test_m3_damaged_checkpoints_are_one_line_not_tracebacks(capsys, tmp_path, run):
    from stripe.train import load_model

    good = torch.load(run / "checkpoints" / "epoch_0001.pt", weights_only=True)
    cases = {
        "config5": {**good, "model_config": 5},
        "modelstr": {**good, "model": "weights"},
        "nomodel": {k: v for k, v in good.items() if k != "model"},
        "hugeepoch": {**good, "epoch": 10 ** 30},
    }
    for name, obj in cases.items():
        f = tmp_path / f"{name}.pt"
        torch.save(obj, f)
        with pytest.raises(StripeError) as e:
            load_model(f)
        assert str(f) in str(e.value) and "\n" not in str(e.value), (name, e.value)
        code, _, err = run_cli(capsys, "fold", "--checkpoint", f)
        assert code == 2 and str(f) in one_line(err), (name, err)
    official = {"epoch": 10 ** 30, "state_dict": good["model"], "acc": 1.0, "best_acc": 1.0}
    f = tmp_path / "official_huge.pth.tar"
    torch.save(official, f)
    code, _, err = run_cli(capsys, "collect", "--files", f, "--model-config", run / "config.json", "--dataset",
                           tiny_cfg().dataset, "--out", tmp_path / "rec", "--probe", "20", "--device", "cpu",
                           "--no-progress")
    assert code == 2 and "epoch" in one_line(err), err


@needs_official
def test_m3_figures_of_an_official_folder_with_a_bad_log_row_is_one_line(capsys, tmp_path):
    folder = tmp_path / "official"
    folder.mkdir()
    log = (OFFICIAL / "cifar10-resnet20-senet" / "log.txt").read_text().splitlines()
    log.insert(2, "\t".join(["0.1", "x.y", "2.0", "10.0", "10.0"]) + "\t")
    (folder / "log.txt").write_text("\n".join(log) + "\n")
    code, out, err = run_cli(capsys, "figures", folder, "--out", tmp_path / "fig")
    line = one_line(err)
    assert code == 2 and "log.txt" in line and "line 3" in line and "'x.y' is not a number" in line, err
    assert "read as the official ASR code's log and rejected" in line
    assert "Traceback" not in err


# M4 ------------------------------------------------------------------------------------------------
def test_m4_train_record_options_are_checked_before_the_run_folder_exists(capsys, tmp_path):
    cases = [
        (["--record", "--record-taps", "layer9*"], "no tap matches"),
        (["--record", "--record-folds", "100000"], "--record-folds 100000 exceeds"),
        (["--record"], "no attention"),  # a baseline: nothing to record
    ]
    for i, (extra, want) in enumerate(cases):
        argv = cli_args(tiny_cfg(epochs=1, asr=False))
        if i == 2:
            j = argv.index("--attn")
            del argv[j:j + 2]
        out = tmp_path / f"r{i}"
        code, _, err = run_cli(capsys, "train", *argv, *extra, "--out", out)
        assert code == 2 and want in one_line(err), (extra, err)
        assert not out.exists(), extra  # nothing created: the corrected command starts afresh


# LOW -----------------------------------------------------------------------------------------------
def test_low_weights_files_that_are_not_what_they_claim_are_named(tmp_path, run):
    from stripe.train import epoch_from_name, load_model

    good = torch.load(run / "checkpoints" / "epoch_0001.pt", weights_only=True)
    state = good["model"]

    def refused(obj, *want):
        f = tmp_path / "f.pt"
        torch.save(obj, f)
        with pytest.raises(StripeError) as e:
            load_model(f)
        for w in want:
            assert w in str(e.value), (obj if not isinstance(obj, dict) else list(obj), str(e.value))

    refused({"state_dict": {}}, "'state_dict' is empty (no tensors)")
    refused({**state, "note": "hello"}, "'note' is a str")
    for epoch in (-5, True):
        refused({**good, "epoch": epoch}, f"its epoch {epoch!r} is not an epoch number")
        refused({"epoch": epoch, "state_dict": state, "acc": 1.0, "best_acc": 1.0}, "is not an epoch number")
    wrong = dict(state)
    wrong["layer1.0.conv1.weight"] = wrong["layer1.0.conv1.weight"][:, :8]
    refused(wrong, "layer1.0.conv1.weight: file (16, 8, 3, 3) vs model (16, 16, 3, 3)")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo never",))

    refused({"model": Evil()}, "refused by weights_only=True", "GLOBAL posix.system")
    assert "Re-running" not in str(pytest.raises(StripeError, load_model, tmp_path / "f.pt").value)
    # a name's hyper-parameters are no epoch; a number standing alone is
    assert epoch_from_name("resnet20_lr0.1_bs128.pth", any_number=True) is None
    assert epoch_from_name("ckpt_12.pt", any_number=True) == 12


def test_low_options_are_refused_by_the_name_the_user_typed(capsys, tmp_path, run):
    argv = cli_args(tiny_cfg(epochs=1, asr=False))
    for opt, want in (("--record-folds", "--record-folds must be >= 1"),
                      ("--record-batch-size", "--record-batch-size must be >= 1")):
        code, _, err = run_cli(capsys, "train", *argv, "--record", opt, "0", "--out", tmp_path / "r")
        assert code == 2 and want in one_line(err), err
    code, _, err = run_cli(capsys, "train", *argv, "--reduction", "1000", "--out", tmp_path / "r")
    assert code == 2 and "--reduction 1000" in one_line(err) and "hidden width of 16/1000 < 1" in err, err
    assert not (tmp_path / "r").exists()
    code, _, err = run_cli(capsys, "collect", run, "--checkpoints", "", "--out", tmp_path / "c", "--device", "cpu")
    assert code == 2 and "--checkpoints: expected all, last" in one_line(err), err
    code, _, err = run_cli(capsys, "ablate", run, "--save", f"{tmp_path / 'newdir'}/", "--device", "cpu",
                           "--no-progress")
    assert code == 2 and "names a folder" in one_line(err), err
    assert not (tmp_path / "newdir").exists()


def test_low_recordings_say_what_is_wrong(capsys, tmp_path, run):
    r = _copy(run, tmp_path / "run")
    m = json.loads((r / "recording" / "manifest.json").read_text())
    del m["checkpoints"][0]["checkpoint_sha256"]
    (r / "recording" / "manifest.json").write_text(json.dumps(m))
    code, out, err = run_cli(capsys, "collect", r, "--device", "cpu", "--no-progress")
    assert code == 0 and "re-recorded: the manifest does not hold its checkpoint file's sha256" in out, (out, err)
    # two models are refused as two models, not as two runs of one seed
    eca = tmp_path / "eca"
    assert main(["train", *cli_args(tiny_cfg(epochs=1, asr=False, attn="eca")), "--record", "--out", str(eca)]) == 0
    code, _, err = run_cli(capsys, "stats", r / "recording", eca / "recording", "--out", tmp_path / "s")
    assert code == 2 and "differ in their model (+ECA and +SE)" in one_line(err), err
    # a failed collect of a model's weights leaves nothing behind
    bad = tmp_path / "bad.pth"
    torch.save({"not.a.layer": torch.zeros(1)}, bad)
    out = tmp_path / "rec"
    code, _, err = run_cli(capsys, "collect", "--model", "torchvision:mobilenet_v3_small", "--weights", bad,
                           "--num-classes", "10", "--dataset", tiny_cfg().dataset, "--probe", "20", "--out", out,
                           "--device", "cpu", "--no-progress")
    assert code == 1 and "FAILED" in err and not out.exists(), err


def test_low_compare_names_the_runs_whose_recipes_differ(capsys, tmp_path, run):
    cmp = tmp_path / "cmp"
    shutil.copytree(run, cmp / "runs" / "plus_se_seed0")
    other = shutil.copytree(run, cmp / "runs" / "plus_se_seed1")
    info = json.loads((other / "config.json").read_text())
    info["train"]["seed"], info["train"]["epochs"] = 1, 2
    (other / "config.json").write_text(json.dumps(info))
    code, _, err = run_cli(capsys, "compare", "--attn", "se", "--table-only", "--out", cmp, "--device", "cpu")
    line = one_line(err)
    assert code == 2 and "plus_se_seed0 and plus_se_seed1 differ in epochs 1 vs 2" in line, err


@needs_official
def test_low_official_files(capsys, tmp_path):
    from stripe.train import load_model

    # a fused_bn whose weight is not the fold of the file's weights is not used as the official fold
    src = OFFICIAL / "cifar10-resnet20-senet-asr" / "checkpoint.pth.tar"
    ck = torch.load(src, weights_only=True)
    key = sorted(k for k in ck["state_dict"] if k.endswith("fused_bn.weight"))[0]
    ck["state_dict"][key] = ck["state_dict"][key] * 1.5
    stale = tmp_path / "stale.pth.tar"
    torch.save(ck, stale)
    d = load_model(stale, deployed=True)
    assert d.load_info.deployed == "this package's fold" and "stale" in d.load_info.summary()
    code, out, err = run_cli(capsys, "fold", "--checkpoint", stale)
    assert code == 0 and "do not hold the official fold of the file's weights (stale" in out, out
    # two different models are described as two models
    a = OFFICIAL / "cifar10-resnet20-senet" / "checkpoint.pth.tar"
    code, _, err = run_cli(capsys, "collect", "--files", a, src, "--out", tmp_path / "rec", "--probe", "20",
                           "--device", "cpu", "--no-progress")
    line = one_line(err)
    assert code == 2 and "+SE" in line and "+ASR(SE)" in line, err
    # collect does not need the log: a garbage log.txt is not its business; the log reader shows no raw bytes
    folder = shutil.copytree(OFFICIAL / "cifar10-resnet20-senet", tmp_path / "official")
    (folder / "log.txt").write_bytes(b"\x00\xff" * 5000)
    code, out, err = run_cli(capsys, "collect", folder, "--out", tmp_path / "rec2", "--probe", "20", "--device",
                             "cpu", "--no-progress")
    assert code == 0 and "recorded 1 checkpoint(s)" in out, err
    from stripe.train import read_official_log

    with pytest.raises(UserError) as e:
        read_official_log(folder / "log.txt")
    assert len(str(e.value)) < 400 and "not an official log.txt" in str(e.value)
