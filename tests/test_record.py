"""The Recorder, the checkpoint sweep, stripe tables from real recordings, and the ablation."""
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stripe.analysis import run_ablation
from stripe.nn import list_attn
from stripe.train import list_checkpoints, load_model
from stripe.cli import main
from stripe.nn import create_model
from stripe.gates import find_gates, select_gates
from stripe.record import Recorder, Recording, collect
from stripe.analysis import compute_tables
from stripe.train import TrainConfig, train

from helpers import forced_logits, real_dataset_name, run_data, tiny_cfg, tiny_data

REPO = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=None)
def tiny_run(root: str, attn: str = "se", asr: bool = False, epochs: int = 3) -> Path:
    run = Path(root) / f"run-{attn}-{asr}-{epochs}"
    cfg = tiny_cfg(attn=attn, asr=asr, epochs=epochs)
    train(cfg, run, device="cpu", progress=False, data=run_data(cfg))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return str(tmp_path_factory.mktemp("runs"))


def _images(n=8):
    """Random images: the Recorder's unit tests need tensors only (no data set)."""
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))


# ----------------------------------------------------------------------------- Recorder
@pytest.mark.parametrize("attn", list_attn())
def test_recorded_tap_reconstructs_module_output(attn):
    torch.manual_seed(0)
    model = create_model("cifar_resnet14", num_classes=10, attn=attn, block="basic")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    seen = []
    for name, m in model.named_modules():
        if name.endswith(".attn") or (attn == "ie" and name.endswith(".bn2")):
            m.register_forward_hook(lambda mod, i, o: seen.append((mod, i[0], o)))
    spatial = []
    for name, m in model.named_modules():
        if name.endswith("tap_spatial"):
            m.register_forward_hook(lambda mod, i, o: spatial.append(o))
    x = _images()
    with Recorder(model, "*", raw_n=8, raw_dtype=torch.float32) as rec, torch.no_grad():
        model(x)
    raw = rec.raw()
    taps = rec.taps
    assert len(taps) == 6 and all(t.attn == attn and not t.asr for t in taps)
    for t, (mod, xin, out) in zip(taps, seen):
        a = torch.from_numpy(raw[(t.key, "after")])
        if attn == "ie":
            xhat = torch.nn.functional.batch_norm(xin, mod.running_mean, mod.running_var, None, None, False, 0, mod.eps)
            expected = xhat * (mod.weight * a)[:, :, None, None] + mod.bias[None, :, None, None]
        else:
            expected = xin * a[:, :, None, None]
            if attn == "cbam":
                expected = expected * spatial.pop(0)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        before = torch.from_numpy(raw[(t.key, "before")])
        torch.testing.assert_close(before, xin.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    if attn == "dia":
        assert [t.key for t in taps[:2]] == ["layer1.attn.tap[0]", "layer1.attn.tap[1]"]
        assert [t.call for t in taps[:2]] == [0, 1]


def test_recorder_statistics_equal_two_pass_on_what_it_saw():
    torch.manual_seed(0)
    model = create_model("cifar_resnet8", num_classes=10, attn="se")
    x = torch.cat([_images(8)] * 3)
    with Recorder(model, "*", raw_n=24, raw_dtype=torch.float32) as rec, torch.no_grad():
        for chunk in x.split([5, 11, 8]):  # uneven batches
            model(chunk)
    for (key, kind), s in rec.stats().items():
        a = rec.raw()[(key, kind)].astype(np.float64)
        np.testing.assert_allclose(s.mean_, a.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(s.std_, a.std(0), rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(s.min_, a.min(0))
        np.testing.assert_array_equal(s.max_, a.max(0))
        # taps of different widths share one reduction: each row is normalised over its own tap only
        unit = a / np.linalg.norm(a, axis=1, keepdims=True)
        np.testing.assert_allclose(s.unit_sum_, unit.sum(0), rtol=1e-6, atol=1e-9)
        assert s.count_ == 24
    assert len({s.channels for s in rec.stats().values()}) > 1  # really mixed widths


def test_hooks_removed_user_hooks_kept_bn_untouched():
    model = create_model("cifar_resnet8", num_classes=10, attn="se").train()
    user = []
    model.layer1.blocks()[0].attn.tap.register_forward_hook(lambda m, i, o: user.append(1))
    count = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    hooks0 = count()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    with Recorder(model) as rec, torch.no_grad():
        model(_images())
        assert count() > hooks0
    assert count() == hooks0 and model.training
    with pytest.raises(ZeroDivisionError):
        with Recorder(model):
            model(_images())
            1 / 0
    assert count() == hooks0 and model.training
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    assert len(user) == 2 and len(rec.taps) == 3


def test_tap_selection():
    model = create_model("cifar_resnet20", num_classes=10, attn="se", asr=True, both=True, block="bottleneck")
    gates = find_gates(model)
    assert len(gates) == 12 and sum(g.asr for g in gates) == 6 and all(g.kind == "taps" for g in gates)
    paths = lambda sel: [g.path for g in select_gates(model, gates, sel)]  # noqa: E731
    assert paths("stage:2") == ["layer2.0.bn3.attn", "layer2.0.attn", "layer2.1.bn3.attn", "layer2.1.attn"]
    assert paths("attention") == [g.path for g in gates if not g.asr]
    assert paths("layer3.?.attn") == ["layer3.0.attn", "layer3.1.attn"]  # * also crosses dots
    assert paths("layer3.0.attn.tap") == ["layer3.0.attn"]  # the recording key matches too
    assert len(select_gates(model, gates, ["asr", "layer1.0.attn"])) == 7
    with pytest.raises(ValueError, match=r"no tap matches \['layer9\*'\]"):
        select_gates(model, gates, "layer9*")
    with pytest.raises(ValueError, match="no tap matches"):
        with Recorder(create_model("cifar_resnet20", num_classes=10), "*"):
            pass


def test_a_record_config_fits_a_probe_set_one_way_for_collect_and_train():
    """RecordConfig.fit_probe, what collect and train --record both call: raw vectors capped at the probe's images,
    more folds than images refused in one line named by the option the user typed."""
    from stripe.record import RecordConfig

    cfg = RecordConfig(raw_n=256, folds=10)
    assert cfg.fit_probe(100) == RecordConfig(raw_n=100, folds=10) and cfg.fit_probe(1000) == cfg
    with pytest.raises(ValueError, match=r"^--folds 10 exceeds the 9 probe images$"):
        cfg.fit_probe(9)
    with pytest.raises(ValueError, match=r"^--record-folds 10 exceeds the 9 probe images$"):
        cfg.fit_probe(9, prefix="record-")


def test_recorder_construction_stores_and_entering_resolves():
    """scikit-learn's rule: the constructor stores what to record (the model and a RecordConfig, or the same choices as
    arguments); entering resolves the gates, installs the hooks and starts the results afresh."""
    from stripe.record import RecordConfig, TapKey

    plain = create_model("cifar_resnet8", num_classes=10)
    rec = Recorder(plain, "*", folds=0)  # nothing is checked or resolved yet
    with pytest.raises(ValueError, match="resolved when it is entered"):
        rec.gates
    with pytest.raises(ValueError, match="folds must be an integer >= 1"):
        with rec:
            pass
    with pytest.raises(ValueError, match="no tap matches"):
        with Recorder(plain, "*"):
            pass
    with pytest.raises(ValueError, match="in the RecordConfig or as arguments, not both"):
        Recorder(plain, RecordConfig(), folds=2)

    model = create_model("cifar_resnet8", num_classes=10, attn="se", asr=True, both=True)
    rec = Recorder(model, RecordConfig(taps="layer1*,layer2.0.attn", raw_n=3, folds=2))
    assert (rec.selection, rec.raw_n, rec.folds) == (["layer1*", "layer2.0.attn"], 3, 2)
    for n in (5, 4):  # each with block records afresh
        with rec, torch.no_grad():
            model(_images(n))
        assert rec.images == n and [g.path for g in rec.gates] == ["layer1.0.bn2.attn", "layer1.0.attn",
                                                                   "layer2.0.attn"]
    stats, folds, raw = rec.stats(), rec.fold_stats(), rec.raw()
    # one key type for every result: TapKey (a (key, kind) tuple; its str is the raw file's tensor name)
    assert set(stats) == set(folds) == set(raw) and all(type(k) is TapKey for d in (stats, folds, raw) for k in d)
    assert {(k.tap, k.kind) for k in stats} == {(t.key, kind) for t in rec.taps for kind in ("after", "before", "hidden")}
    key = next(iter(raw))
    assert str(key) == f"{key.tap}/{key.kind}" and raw[key].shape[0] == 3 and stats[tuple(key)].count_ == 4


@pytest.mark.parametrize("attn", ["se", "dia"])
def test_tap_depth_is_the_global_block_index(attn):
    """Golden places of ResNet-20 (3 blocks per stage): depth counts each block once, 0 … 8 in forward order,
    for per-block modules and for DIA's stage-shared cell (block = call index)."""
    model = create_model("cifar_resnet20", num_classes=10, attn=attn)
    with Recorder(model, "*") as rec, torch.no_grad():
        model(_images(2))
    places = [(t.stage, t.block, t.depth) for t in rec.taps]
    assert places == [(s, b, 3 * (s - 1) + b) for s in (1, 2, 3) for b in range(3)]


def test_wrapped_models():
    model = create_model("cifar_resnet8", num_classes=10, attn="eca")
    wrapped = torch.nn.DataParallel(model)
    with Recorder(wrapped) as rec, torch.no_grad():
        wrapped(_images())
    assert len(rec.taps) == 3
    with pytest.raises(ValueError, match="torch.compile"):
        with Recorder(torch.compile(model)):
            pass


def test_asr_taps_are_exactly_constant():
    model = create_model("cifar_resnet8", num_classes=10, attn="se", asr=True)
    with Recorder(model) as rec, torch.no_grad():
        model(_images())
    for (key, kind), s in rec.stats().items():
        assert s.count_ == 8 and np.all(s.m2_ == 0) and s.stripe_index() == 1.0
    assert all(t.asr for t in rec.taps)


# ----------------------------------------------------------------------------- sweep
def _tables(out):
    t = compute_tables(out)
    return {k: v.reset_index(drop=True) for k, v in t.items()}


@pytest.mark.real_data
def test_sweep_writes_recording_and_resumes_identically(runs, tmp_path, monkeypatch):
    run = tiny_run(runs)
    full = collect(run, out=tmp_path / "full", device="cpu", progress=False)
    assert full.recorded == [0, 1, 2, 3] and not full.failed
    manifest = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert manifest["probe"]["hash"] == json.loads((run / "config.json").read_text())["probe"]["hash"]
    assert [c["epoch"] for c in manifest["checkpoints"]] == [0, 1, 2, 3] and len(manifest["taps"]) == 3
    rec = Recording.open(tmp_path / "full")
    assert rec.raw(3, manifest["taps"][0]["key"]).shape == (256, 16)

    import stripe.record.sources as S

    real = S.load_model
    calls = {"n": 0}

    def dies_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(S, "load_model", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        collect(run, out=tmp_path / "part", device="cpu", progress=False)
    monkeypatch.setattr(S, "load_model", real)
    assert [c["epoch"] for c in json.loads((tmp_path / "part" / "manifest.json").read_text())["checkpoints"]] == [0, 1]
    again = collect(run, out=tmp_path / "part", device="cpu", progress=False)
    assert again.skipped == [0, 1] and again.recorded == [2, 3]
    a, b = _tables(tmp_path / "full"), _tables(tmp_path / "part")
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k])
    assert not list((tmp_path / "part").rglob("*.tmp"))


@pytest.mark.real_data
def test_truncated_checkpoint_reported_others_processed(runs, tmp_path, capsys):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(tiny_run(runs), run)
    bad = run / "checkpoints" / "epoch_0002.pt"
    bad.write_bytes(bad.read_bytes()[:1000])
    code = main(["collect", str(run), "--device", "cpu", "--no-progress", "--out", str(tmp_path / "rec")])
    assert code == 1
    err = capsys.readouterr().err
    assert "epoch_0002.pt: corrupt or truncated checkpoint" in err
    epochs = [c["epoch"] for c in json.loads((tmp_path / "rec" / "manifest.json").read_text())["checkpoints"]]
    assert epochs == [0, 1, 3]


@pytest.mark.real_data
def test_sweep_of_checkpoint_files_from_elsewhere(runs, tmp_path):
    run = tiny_run(runs)
    files = []
    for epoch, path in list_checkpoints(run)[-2:]:
        model = load_model(path)
        files.append(tmp_path / f"weights_{epoch}.pt")
        torch.save(model.state_dict(), files[-1])
    cfg = json.loads((run / "config.json").read_text())["model"]
    (tmp_path / "model.json").write_text(json.dumps(cfg))
    assert main(["collect", "--files", *map(str, files), "--model-config", str(tmp_path / "model.json"),
                 "--dataset", real_dataset_name(), "--probe", "300", "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path / "rec")]) == 0
    ours = collect(run, checkpoints="2,3", out=tmp_path / "rec_run", device="cpu", progress=False)
    assert ours.recorded == [2, 3]
    a, b = _tables(tmp_path / "rec"), _tables(tmp_path / "rec_run")
    pd.testing.assert_frame_equal(a["taps"], b["taps"])


@pytest.mark.real_data
def test_torchrun_sweep_equals_one_process(runs, tmp_path):
    run = tiny_run(runs)
    one = collect(run, out=tmp_path / "one", device="cpu", progress=False)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "stripe", "collect", str(run),
                          "--device", "cpu", "--no-progress", "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[:4000]  # the workers' own messages come first, torchrun's summary last
    a, b = _tables(tmp_path / "one"), _tables(tmp_path / "two")
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k])
    assert one.recorded == [0, 1, 2, 3]


def test_torchrun_process_group_is_destroyed_before_interpreter_shutdown(tmp_path):
    """A gloo group left to interpreter shutdown can abort a worker whose work succeeded; stripe destroys it at
    exit. The check runs in an exit handler registered before the group starts, so it runs after stripe's."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import atexit, os, pathlib, torch, torch.distributed as dist\n"
        "from stripe.device import dist_from_env, init_distributed\n"
        "seen = pathlib.Path(__file__).with_name('up_at_exit_' + os.environ['RANK'])\n"
        "atexit.register(lambda: seen.write_text(str(dist.is_initialized())))\n"
        "init_distributed(dist_from_env(), torch.device('cpu'))\n"
        "dist.barrier()\n")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[:4000]
    assert [(tmp_path / f"up_at_exit_{rank}").read_text() for rank in (0, 1)] == ["False", "False"]


@pytest.mark.real_data
def test_stats_command(runs, tmp_path, capsys):
    run = tiny_run(runs)
    collect(run, out=tmp_path / "rec", device="cpu", progress=False)
    assert main(["stats", str(tmp_path / "rec")]) == 0
    out = capsys.readouterr().out
    assert "Stripe index" in out and "stage 1" in out
    taps = pd.read_csv(tmp_path / "rec" / "tables" / "taps.csv")
    assert set(taps["epoch"]) == {0, 1, 2, 3} and taps["stripe_after"].between(0, 1).all()


# ----------------------------------------------------------------------------- ablation
@pytest.mark.real_data
def test_ablation_of_constant_attention_loses_exactly_nothing(runs):
    table = run_ablation(tiny_run(runs, "se", asr=True), scopes=("all", "stage", "tap"), device="cpu",
                         progress=False)
    assert (table["delta"] == 0.0).all() and len(table) == 1 + 1 + 3 + 3


@pytest.mark.real_data
@pytest.mark.parametrize("attn", ["se", "dia", "ie"])
def test_ablation_folds_into_a_plain_backbone(runs, tmp_path, attn):
    run = tiny_run(runs, attn, epochs=2)
    table = run_ablation(run, scopes=("all", "stage"), device="cpu", progress=False, save=tmp_path / "plain.pt")
    assert table["scope"].tolist() == ["none", "all", "stage", "stage", "stage"]
    model = load_model(tmp_path / "plain.pt")
    assert model.config.attn is None and not find_gates(model)
    from stripe.data import Loader
    from stripe.train import evaluate

    acc = evaluate(model, Loader(tiny_data().test, 100, train=False))[1]
    assert acc == pytest.approx(float(table.loc[table["scope"] == "all", "test_acc"].iloc[0]))
    assert (run / "ablation" / "ablation.csv").exists()


@pytest.mark.parametrize("attn", list_attn())
@pytest.mark.parametrize("variant", [dict(), dict(asr=True, both=True)])
def test_constant_replacement_equals_forcing_the_taps(attn, variant):
    """The folded replacement gives the logits of the original model whose taps are forced to μ
    by forward hooks (an independent reference: the hook replaces the attention, nothing is folded).

    Compared in float64 to eps32 of the logits: float64 rounding would need an amplification of 2^29 to reach
    it, a wrong fold moves the logits by their own order (float32 would measure the CPU's rounding instead)."""
    from stripe.gates import replace_with_constants

    torch.manual_seed(0)
    model = create_model("cifar_resnet14", num_classes=10, attn=attn, block="basic", **variant).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model = model.double()
    x = _images().double()
    with Recorder(model) as rec, torch.no_grad():
        model(x)
    taps = rec.taps
    means = {t.key: torch.rand(t.channels, dtype=torch.float64) for t in taps}
    folded = replace_with_constants(model, taps, means).eval()

    forced = forced_logits(model, taps, means, x)
    with torch.no_grad():
        eps32 = torch.finfo(torch.float32).eps
        torch.testing.assert_close(folded(x), forced, rtol=0, atol=eps32 * max(1.0, float(forced.abs().max())))
    assert not find_gates(folded)  # no channel attention left (CBAM keeps only its spatial gate)


def test_constant_replacement_in_a_model_that_does_not_fold_its_own_gates():
    """A model of one's own holding this package's SE (no gate_folds()/fold_constant()): its gate says it does not
    fold, and constant replacement forces the constant at the tap (the model given keeps its attention)."""
    from torch import nn

    from stripe.gates import replace_with_constants
    from stripe.nn import create_attn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), create_attn("se", 8, reduction=2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).double().eval()
    (gate,) = find_gates(model)
    assert (gate.key, gate.fold, gate.fold_module) == ("2.tap", "none", None) and "forces" in gate.fold_reason
    mu = torch.rand(8, dtype=torch.float64)
    x = _images(4).double()
    with torch.no_grad():
        replaced = replace_with_constants(model, [gate], {gate.key: mu})(x)
        expected = model[5](model[4](model[3](model[1](model[0](x)) * mu[None, :, None, None])))
        eps32 = torch.finfo(torch.float32).eps  # float64 rounding is 2^29 below; a missed constant moves the logits
        torch.testing.assert_close(replaced, expected, rtol=0, atol=eps32 * max(1.0, float(expected.abs().max())))
        assert (model(x) - expected).abs().max() > 1e-3  # the model given still has its attention
