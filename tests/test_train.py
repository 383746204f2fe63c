"""The trainer: schedule, optimizer, run directory, resume, NaN stop, checkpoints, torchrun, compare."""
import json
from dataclasses import replace
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import stripe.train as T
from stripe.data import Loader
from stripe.train import CheckpointError, list_checkpoints, load_checkpoint, load_model
from stripe.cli import main
from stripe.nn import create_model
from stripe.train import NonFiniteLossError, RunExistsError, SGD, TrainConfig, train

from helpers import cli_args, data_model, real_dataset_name, run_data, tiny_cfg, tiny_data

REPO = Path(__file__).resolve().parents[1]


def test_paper_schedule_and_config_round_trip():
    cfg = TrainConfig(epochs=164)
    assert cfg.model.name == "cifar_resnet20" and cfg.model.resolved().block == "basic"
    assert cfg.milestone_epochs() == [82, 123]
    assert [cfg.lr_at(e) for e in (1, 82, 83, 123, 124, 164)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert (cfg.momentum, cfg.weight_decay, cfg.batch_size) == (0.9, 1e-4, 128)
    assert cfg.milestone_steps(390) == [82 * 390, 123 * 390]  # on epoch boundaries: the same as per epoch
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="unknown train config keys"):
        TrainConfig.from_dict({"modle": "x"})
    assert TrainConfig(epochs=10, checkpoints=(5,)).is_checkpoint(0)
    assert not TrainConfig(epochs=10, checkpoints=(5,)).is_checkpoint(3)


def test_sgd_matches_torch_sgd():
    torch.manual_seed(0)
    a = create_model("cifar_resnet8", num_classes=10, attn="se")
    b = create_model("cifar_resnet8", num_classes=10, attn="se")
    b.load_state_dict(a.state_dict())
    ours = SGD(list(a.named_parameters()), 0.1, 0.9, 1e-4)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for i in range(4):
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        ours.set_lr(0.1 if i < 2 else 0.01)
        for g in ref.param_groups:
            g["lr"] = 0.1 if i < 2 else 0.01
        for m, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_short_runs_train_at_the_full_lr_first():
    """A 1-epoch run decays inside the epoch: lr 0.1 for the first half of its steps, 0.01 to 75 %, then 0.001
    (per-epoch milestones would round to epoch 0 and train the whole run at 0.001)."""
    cfg = TrainConfig(epochs=1)
    spe = 46  # 6,000 images at batch 128
    assert cfg.milestone_steps(spe) == [23, 34]
    lrs = [cfg.lr_at_step(i, spe) for i in range(spe)]
    assert lrs[:23] == [0.1] * 23 and lrs[23:34] == pytest.approx([0.01] * 11) and lrs[34:] == pytest.approx([0.001] * 12)
    assert cfg.lr_at(1, spe) == 0.1
    two = TrainConfig(epochs=2)
    assert [two.lr_at(e, 10) for e in (1, 2)] == pytest.approx([0.1, 0.01])  # 2nd epoch starts at the first milestone


@pytest.mark.real_data
def test_run_directory_contents(tmp_path):
    rows = train(tiny_cfg(), tmp_path / "run", device="cpu", progress=False, data=tiny_data())
    run = tmp_path / "run"
    info = json.loads((run / "config.json").read_text())
    assert info["train"]["model"]["attn"] == "se" and info["probe"]["n"] == 300 and len(info["probe"]["hash"]) == 64
    assert info["probe"]["split"] == "train" and info["score"]["split"] == "test" and info["score"]["n"] == 200
    assert info["params"]["deployed"] == sum(p.numel() for p in data_model("cifar_resnet8").parameters())
    assert [e for e, _ in list_checkpoints(run)] == [0, 1, 2, 3]
    m = pd.read_csv(run / "metrics.csv")
    assert list(m.columns) == T.METRIC_COLUMNS and list(m["epoch"]) == [0, 1, 2, 3]
    # milestones at 1.5 and 2.25 epochs, applied at the step: lr at each epoch's first and last step
    assert m["lr"].iloc[1:].tolist() == pytest.approx([0.1, 0.1, 0.01])
    assert m["lr_end"].iloc[1:].tolist() == pytest.approx([0.1, 0.01, 0.001])
    assert (m["images_per_s"].iloc[1:] > 0).all() and m["test_acc"].between(0, 100).all()
    ckpt = load_checkpoint(run / "checkpoints" / "epoch_0002.pt")
    assert ckpt["train_config"] == tiny_cfg().to_dict() and ckpt["model_config"]["asr"] is True
    # test accuracy is that of the folded model
    model = load_model(run / "checkpoints" / "epoch_0003.pt")
    loader = Loader(tiny_data().test, 100, train=False)
    assert T.evaluate(T.deployed(model), loader)[1] == pytest.approx(rows[-1]["test_acc"])
    assert not list(run.rglob("*.tmp"))


@pytest.mark.real_data
def test_refuses_to_overwrite_unless_told(tmp_path):
    cfg = tiny_cfg(epochs=1)
    train(cfg, tmp_path, device="cpu", progress=False, data=run_data(cfg))
    with pytest.raises(RunExistsError, match="already holds a run"):
        train(cfg, tmp_path, device="cpu", progress=False, data=run_data(cfg))
    with pytest.raises(ValueError, match="cannot resume with a different config .*epochs: 1 -> 2"):
        train(tiny_cfg(epochs=2), tmp_path, resume=True, device="cpu", progress=False, data=run_data(cfg))
    train(cfg, tmp_path, overwrite=True, device="cpu", progress=False, data=run_data(cfg))
    assert main(["train", *cli_args(cfg), "--out", str(tmp_path)]) == 2  # one-line error, exit 2


@pytest.mark.real_data
def test_killed_run_resumes_bit_identical(tmp_path):
    cfg = tiny_cfg(epochs=4, attn="dia")
    ref = tmp_path / "ref"
    train(cfg, ref, device="cpu", progress=False, data=run_data(cfg))

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "stripe", "train", *cli_args(cfg), "--out", str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "epoch_0001.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "the training process ended before epoch 1"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [e for e, _ in list_checkpoints(run)]
    assert 4 not in done, "the run finished before it was killed; the test proves nothing"
    train(cfg, run, resume=True, device="cpu", progress=False, data=run_data(cfg))

    a = load_checkpoint(ref / "checkpoints" / "epoch_0004.pt")
    b = load_checkpoint(run / "checkpoints" / "epoch_0004.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["optimizer"]["momentum_buffer"].items():
        assert torch.equal(v, b["optimizer"]["momentum_buffer"][k]), k
    ma, mb = pd.read_csv(ref / "metrics.csv"), pd.read_csv(run / "metrics.csv")
    assert ma["test_acc"].tolist() == mb["test_acc"].tolist()


@pytest.mark.real_data
def test_nan_loss_stops_cleanly_keeping_checkpoints(tmp_path, monkeypatch):
    calls = {"n": 0}
    steps_per_epoch = 256 // 64

    def nan_from_epoch_2(logits, y):
        calls["n"] += 1
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss * float("nan") if calls["n"] > steps_per_epoch else loss

    import stripe.train.step as step

    monkeypatch.setattr(step, "loss_fn", nan_from_epoch_2)
    with pytest.raises(NonFiniteLossError, match="training loss became nan in epoch 2; stopped. Checkpoints up to epoch 1"):
        train(tiny_cfg(), tmp_path, device="cpu", progress=False, data=tiny_data())
    assert [e for e, _ in list_checkpoints(tmp_path)] == [0, 1]
    for _, p in list_checkpoints(tmp_path):
        load_model(p)
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [0, 1]


@pytest.mark.real_data
def test_corrupt_and_mismatched_checkpoints_are_refused(tmp_path):
    cfg = tiny_cfg(epochs=2)
    train(cfg, tmp_path, device="cpu", progress=False, data=run_data(cfg))
    last = tmp_path / "checkpoints" / "epoch_0002.pt"
    other = data_model("cifar_resnet8", attn="eca").config
    with pytest.raises(CheckpointError, match=f"{last}: the weights do not fit cifar_resnet8 \\(basic\\) \\+ECA"):
        load_model(last, other)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{last}: corrupt or truncated checkpoint"):
        load_checkpoint(last)
    with pytest.raises(CheckpointError, match="epoch_0002.pt: corrupt or truncated"):
        train(cfg, tmp_path, resume=True, device="cpu", progress=False, data=run_data(cfg))
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt: corrupt or truncated"):
        load_checkpoint(tmp_path / "notes.pt")


@pytest.mark.real_data
def test_torchrun_two_cpu_processes(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    cfg = tiny_cfg(epochs=2, attn="se", asr=False)
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "stripe", "train",
                          *cli_args(cfg), "--out", str(run)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[:3000] + "\n…\n" + out.stderr[-1500:]  # each rank's error comes first
    info = json.loads((run / "config.json").read_text())
    assert info["distributed"] == {"world_size": 2, "global_batch": 64, "per_rank_batch": 32}
    # the reported test accuracy covers the whole test subset once: recompute it in one process
    model = load_model(run / "checkpoints" / "epoch_0002.pt")
    acc = T.evaluate(model, Loader(tiny_data().test, 100, train=False))[1]
    assert pd.read_csv(run / "metrics.csv")["test_acc"].iloc[-1] == pytest.approx(acc)


@pytest.mark.real_data
def test_compare_writes_results_table(tmp_path, capsys):
    cfg = tiny_cfg(epochs=1, train_subset=128, test_subset=100)
    assert main(["compare", *[a for a in cli_args(cfg) if a != "--asr"], "--seeds", "2",
                 "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    assert table["variant"].tolist() == ["baseline", "+SE", "+ASR(SE)", "+ASR(SE)+SE"]
    assert (table["seeds"] == 2).all() and table["final_top1_std"].notna().all()
    plain = sum(p.numel() for p in data_model("cifar_resnet8").parameters())
    with_se = sum(p.numel() for p in data_model("cifar_resnet8", attn="se").parameters())
    assert table["params_deployed"].tolist() == [plain, with_se, plain, with_se]
    final = {(v, s): pd.read_csv(tmp_path / "runs" / f"{slug}_seed{s}" / "metrics.csv")["test_acc"].iloc[-1]
             for v, slug in (("baseline", "baseline"), ("+SE", "plus_se")) for s in (0, 1)}
    se = table.set_index("variant").loc["+SE"]  # paired: each seed against the baseline of the same seed
    diffs = [final[("+SE", s)] - final[("baseline", s)] for s in (0, 1)]
    assert se["paired_seeds"] == 2 and se["diff_vs_baseline_mean"] == pytest.approx(np.mean(diffs), abs=1e-4)
    assert np.isnan(table.set_index("variant").loc["baseline", "diff_vs_baseline_mean"])
    md = (tmp_path / "results.md").read_text()
    assert "final-epoch top-1" in md and "best-epoch top-1" in md and "p (paired t)" in md
    assert "+ASR(SE)+SE" in capsys.readouterr().out


def test_the_cpu_fast_path_trains_like_eager(synthetic_images):
    """The CPU fast path (channels_last + torch.compile) computes the same training step as eager NCHW.

    In float32 the two differ by rounding, and how much depends on the CPU: the convolution algorithms round
    differently, and cancellation in small updates (a BN bias whose gradient sums terms of both signs) amplifies
    it to a few percent of a step on some CPUs. So the claim is checked where rounding cannot hide a difference:
    both paths run in float64 from the same weights on the same batches. Rounding then moves each tensor by
    about n·eps64·κ of its update (n terms per sum, κ the cancellation), while a fast path that computed
    anything else (a wrong stride, a dropped or reordered op) moves it by the order of the update itself. The
    bound, eps32 = 2^-23 of each tensor's largest update, leaves n·κ a margin of eps32/eps64 = 2^29."""
    from stripe.nn import ModelConfig
    from stripe.train import TrainConfig, TrainStep, build_training, fast_path

    fast = fast_path("cpu")
    assert fast == {"channels_last": True, "compile": "compile"}
    eps32 = torch.finfo(torch.float32).eps
    dev = torch.device("cpu")
    base = TrainConfig(model=ModelConfig("cifar_resnet8", attn="se"), epochs=1, batch_size=32)
    batches = [b for _, b in zip(range(3), Loader(synthetic_images, 32, train=True, seed=3))]
    runs = {}
    for name, cfg in (("eager", base), ("fast", replace(base, **fast))):
        model, _ = build_training(cfg, synthetic_images, dev)
        model = model.double()
        opt = SGD(list(model.named_parameters()), cfg.lr, cfg.momentum, cfg.weight_decay)  # float64 buffers too
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        step = TrainStep(model.train(), opt, cfg, dev)
        losses = []
        for x, y in batches:
            x = x.double()
            step(x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x, y)
            losses.append(step.take_sums()[0])
        runs[name] = (losses, start, {k: v.detach().clone() for k, v in model.state_dict().items()})
    (le, start, we), (lf, start_f, wf) = runs["eager"], runs["fast"]
    assert all(torch.equal(start[k], start_f[k]) for k in start)  # the same weights to start from
    assert np.allclose(lf, le, rtol=eps32, atol=0), (le, lf)
    worst = 0.0
    for k in we:
        if not we[k].is_floating_point():
            assert torch.equal(wf[k], we[k]), k  # BN's batch counters
            continue
        assert wf[k].dtype == torch.float64, k
        update = float((we[k] - start[k]).abs().max())
        assert update > 0, f"{k} did not change in three steps; the comparison proves nothing for it"
        worst = max(worst, float((wf[k] - we[k]).abs().max()) / update)
    assert worst <= eps32, worst
    print(f"fast path vs eager in float64: losses {le} vs {lf}; worst difference {worst:.2e} of a tensor's update")
