"""Checkpoints of the ASR paper's official code: names, config inference, logits, the fold, logs and run folders."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from stripe import load_model
from stripe.nn import ModelConfig, build_model, list_attn
from stripe.nn import strip_prefix
from stripe.train import from_official, infer_config, normalize_names, official_input, split_fused, to_official
from stripe.gates import randomize_norms, reparameterize
from stripe.train import (CheckpointError, fold_vs_official, official_run, read_official_log, save_checkpoint)

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {  # folder -> (attn, asr, both)
    "cifar10-resnet20": (None, False, False),
    "cifar10-resnet20-senet": ("se", False, False),
    "cifar10-resnet20-senet-asr": ("se", True, False),
    "cifar10-resnet20-senet-asr-both": ("se", True, True),
}
#: the released ResNet-164 CIFAR-100 logs: (last, best) Valid Acc.; best is the official repository's table
RELEASED = {
    "cifar100-resnet164": (73.54, 74.10),
    "cifar100-resnet164-senet": (74.69, 75.03),
    "cifar100-resnet164-senet-asr": (74.43, 75.21),
    "cifar100-resnet164-senet-asr-both": (75.71, 76.23),
}
EPS32 = torch.finfo(torch.float32).eps


def float32_tol(model: torch.nn.Module, logits: torch.Tensor) -> float:
    """How far a float32 forward of ``model`` may be from its exact logits, on any CPU: by the √n rule a layer whose
    outputs are sums of K products rounds them by about √K·eps32 (relative), and the D layers of a chain add up:
    D·√K_max·eps32 of the largest logit. The reference logits were computed in float32 by the official code on
    another CPU, whose convolution algorithms round differently; ours are computed in float64 and compared with
    them, so only the reference's own rounding is between the two. A wrong mapping of names or a wrong fold is off
    by the order of the logits."""
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    fan_in = max(m.weight[0].numel() for m in layers)
    return len(layers) * fan_in ** 0.5 * EPS32 * max(1.0, float(logits.abs().max()))


def _shared_dir() -> Path | None:
    """The official checkpoints, looked for as the package looks for ../shared/data/cifar10-jpeg."""
    env = os.environ.get("STRIPE_OFFICIAL_ASR_CKPTS")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data" / "official-asr-ckpts",
                   Path.cwd().parent / "shared" / "data" / "official-asr-ckpts"]
    return next((c for c in candidates if (c / "cifar10-resnet20" / "checkpoint.pth.tar").is_file()), None)


SHARED = _shared_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="the official ASR checkpoints are not here "
                                  "(looked for ../shared/data/official-asr-ckpts next to the repository and the working "
                                  "directory; or set STRIPE_OFFICIAL_ASR_CKPTS)")


def _reference(folder: str) -> dict[str, np.ndarray]:
    with np.load(SHARED / folder / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _off(model: torch.nn.Module, x: torch.Tensor, want: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """(max |logits of ``model`` in float64 - ``want``|, :func:`float32_tol` of ``want``)."""
    import copy

    want = torch.as_tensor(want).double()
    got = _logits(copy.deepcopy(model).double(), x.double())
    return (got - want).abs().max().item(), float32_tol(model, want)


# ------------------------------------------------------------------ the official code's files


@needs_shared
@pytest.mark.parametrize("folder", list(FOLDERS))
def test_official_checkpoint_gives_the_official_logits(folder):
    attn, asr, both = FOLDERS[folder]
    path = SHARED / folder / "checkpoint.pth.tar"
    ref = _reference(folder)
    model = load_model(path)
    info = model.load_info
    cfg = model.config
    assert (cfg.name, cfg.block, cfg.num_classes, cfg.in_chans) == ("cifar_resnet20", "bottleneck", 10, 3)
    assert (cfg.attn, cfg.asr, cfg.both) == (attn, asr, both)
    assert cfg.asr is False or cfg.psi_size == 1
    assert (info.format, info.config_from, info.epoch, info.stripped_prefix) == ("official-checkpoint", "inferred",
                                                                                  2, "module.")
    assert info.fused == (6 if asr else 0)
    x = official_input(ref["images_uint8"])
    diff, tol = _off(model, x, ref["logits"])
    print(f"\n{folder}: max |logits (float64) - official (float32)| = {diff:.3g} (bound {tol:.3g})")
    assert diff <= tol
    # a given config is checked and used
    given = load_model(path, ModelConfig(name="cifar_resnet20", block="bottleneck", attn=attn, asr=asr, both=both))
    assert given.load_info.config_from == "given"
    assert torch.equal(_logits(given, x), _logits(model, x))


@needs_shared
@pytest.mark.parametrize("folder", [f for f, v in FOLDERS.items() if v[1]])
def test_official_asr_fold_matches_the_official_deployed_logits(folder):
    path = SHARED / folder / "checkpoint.pth.tar"
    ref = _reference(folder)
    x = official_input(ref["images_uint8"])
    want = torch.from_numpy(ref["deployed_logits"])
    model = load_model(path)
    ours = reparameterize(model)
    d_ours, tol = _off(ours, x, want)
    deployed = load_model(path, deployed=True)
    assert deployed.load_info.deployed == "the file's fused_bn (the official fold)"
    assert deployed.config == model.config.folded().resolved()
    assert not any("psi" in k for k in deployed.state_dict())
    d_file, _ = _off(deployed, x, want)
    report = fold_vs_official(path, ref["images_uint8"])
    print(f"\n{folder}: our fold vs deployed_logits {d_ours:.3g}; fused_bn model vs deployed_logits {d_file:.3g}; "
          f"fold vs fused_bn {report}")
    assert d_ours <= tol and d_file <= tol
    assert report["norms"] == 6
    assert report["stale"] == []  # the file's fused_bn is the fold of its weights (to FUSED_RTOL)
    assert report["running_mean"] == 0.0 and report["running_var"] == 0.0
    assert report["logits"] <= 2 * tol  # two float32 forwards on this CPU


@needs_shared
@pytest.mark.parametrize("folder", [f for f, v in FOLDERS.items() if v[1]])
def test_deleted_deploy_and_stale_fused_bn(folder, tmp_path):
    """A state after the official switch_to_deploy(delete=True) loads as the folded model; a fused_bn that is not a
    fold (running statistics not bn's) is not used for deployed=True."""
    path = SHARED / folder / "checkpoint.pth.tar"
    ref = _reference(folder)
    x = official_input(ref["images_uint8"])
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["state_dict"]
    asr_norms = {k[: -len(".vector")] for k in state if k.endswith(".vector")}
    deleted = {k: v for k, v in state.items()
               if not any(k.startswith(p + s) for p in asr_norms for s in (".vector", ".bn.", ".attention_module."))}
    torch.save(deleted, tmp_path / "deleted.pth")
    m = load_model(tmp_path / "deleted.pth")
    assert m.config.asr is False and m.config.attn == ("se" if FOLDERS[folder][2] else None)
    diff, tol = _off(m, x, ref["deployed_logits"])
    assert diff <= tol

    stale = dict(state)
    key = next(iter(sorted(k for k in state if k.endswith("fused_bn.running_mean"))))
    stale[key] = state[key] + 1.0
    torch.save({**ckpt, "state_dict": stale}, tmp_path / "stale.pth.tar")
    d = load_model(tmp_path / "stale.pth.tar", deployed=True)
    assert d.load_info.deployed == "this package's fold"
    assert any("fused_bn do not hold the official fold" in n for n in d.load_info.notes)
    diff, tol = _off(d, x, ref["deployed_logits"])
    assert diff <= tol


@needs_shared
def test_official_files_need_the_bottleneck_config():
    """The official 'ResNet-20' is a bottleneck net: this package's basic cifar_resnet20 does not fit it."""
    path = SHARED / "cifar10-resnet20-senet" / "checkpoint.pth.tar"
    with pytest.raises(CheckpointError) as e:
        load_model(path, ModelConfig(name="cifar_resnet20", attn="se"))
    msg = str(e.value)
    assert re.search(r"\d+ missing \([^)]*\); \d+ unexpected \([^)]*\)", msg), msg
    assert "cifar_resnet20 (bottleneck) +SE" in msg  # what the file looks like


@needs_shared
@pytest.mark.parametrize("folder", list(FOLDERS))
def test_official_run_folder(folder):
    run = official_run(SHARED / folder)
    assert list(run.checkpoints) == ["checkpoint.pth.tar"]
    ck = run.checkpoint()
    assert ck.epoch == 2 and ck.acc is not None and ck.best_acc is not None and ck.best_acc >= ck.acc
    assert list(run.log.columns) == ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert run.log["epoch"].tolist() == [1, 2]
    assert run.log["test_acc"].iloc[-1] == pytest.approx(ck.acc, abs=1e-6)
    assert run.notes == []


@needs_shared
@pytest.mark.parametrize("name", list(RELEASED))
def test_released_logs(name):
    df = read_official_log(SHARED / "released-logs" / name / "log.txt")
    last, best = RELEASED[name]
    assert len(df) == 164 and df["epoch"].tolist() == list(range(1, 165))
    assert df["test_acc"].iloc[-1] == pytest.approx(last, abs=1e-6)
    assert df["test_acc"].max() == pytest.approx(best, abs=1e-6)
    assert df["lr"].iloc[0] == pytest.approx(0.1) and df["lr"].iloc[-1] == pytest.approx(0.001)
    assert df["train_acc"].between(0, 100).all() and (df["train_loss"] > 0).all()


# ------------------------------------------------------------------ round trips without files


def _randomized(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """A model with every parameter and BN statistic away from its initial value."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    randomize_norms(model, calib=torch.randn(4, cfg.in_chans or 3, 32, 32, generator=g))
    return model.eval()


def _official_file(path: Path, state: dict[str, torch.Tensor], epoch: int = 164) -> None:
    """Save a state dict (official names) as the official script does: DataParallel keys in its checkpoint dict."""
    torch.save({"epoch": epoch, "state_dict": {f"module.{k}": v for k, v in state.items()}, "acc": 70.0,
                "best_acc": 71.0, "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "momentum": 0.9,
                                                                               "params": [0, 1]}]}}, path)


VARIANTS = {"baseline": (None, False, False), "+SE": ("se", False, False), "+ASR(SE)": ("se", True, False),
            "+ASR(SE)+SE": ("se", True, True)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resnet164_cifar100_round_trip(variant, tmp_path):
    attn, asr, both = VARIANTS[variant]
    cfg = ModelConfig(name="cifar_resnet164", num_classes=100, attn=attn, asr=asr, both=both)
    model = _randomized(cfg)
    state = model.state_dict()
    official = to_official(state, cfg)
    if attn:
        assert "layer3.17.attention_module.fc1.weight" in official or asr and not both
    if asr:
        assert {"layer1.0.bn3.vector", "layer1.0.bn3.bn.running_var", "layer3.17.bn3.fused_bn.weight",
                "layer2.5.bn3.attention_module.fc2.bias"} <= set(official)
        assert not any(".psi" in k or ".norm." in k for k in official)
    weights, fused = split_fused(official)
    back = from_official(weights)
    assert list(back) == list(state) and all(torch.equal(back[k], state[k]) for k in state)
    assert infer_config(normalize_names(official)[0]) == infer_config(state)
    _official_file(tmp_path / "checkpoint.pth.tar", official)
    loaded = load_model(tmp_path / "checkpoint.pth.tar")
    got = loaded.config
    assert (got.name, got.block, got.num_classes, got.attn, got.asr, got.both) == \
           ("cifar_resnet164", "bottleneck", 100, attn, asr, both)
    assert loaded.load_info.epoch == 164 and loaded.load_info.extra == {"acc": 70.0, "best_acc": 71.0}
    # what the file implies beyond its weights, carried by the model: the official code's data set and normalisation
    assert (loaded.load_info.dataset, loaded.load_info.preprocess) == \
        ("cifar100", {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2023, 0.1994, 0.2010)})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(loaded, x), _logits(model, x))
    if asr:
        d = load_model(tmp_path / "checkpoint.pth.tar", deployed=True)
        assert d.load_info.deployed == "the file's fused_bn (the official fold)"
        assert torch.equal(_logits(d, x), _logits(reparameterize(model), x))


def test_infer_config_on_this_packages_state_dicts():
    """Every registered attention, plain, under ASR and both, at a small depth; a non-default reduction too."""
    for block, depth in (("bottleneck", 11), ("basic", 8)):
        for attn in [None, *list_attn()]:
            for asr, both in ((False, False), (True, False), (True, True)):
                if attn is None and asr:
                    continue
                cfg = ModelConfig(name=f"cifar_resnet{depth}", block=block, num_classes=7, attn=attn, asr=asr,
                                  both=both).resolved()
                with torch.device("meta"):
                    state = build_model(cfg).state_dict()
                got = infer_config(state)
                assert got.resolved() == cfg, (cfg, got)
    # a wrapper prefix is stripped by the reader of files; a state dict in memory that carries one is told how
    wrapped = {f"module.{k}": v for k, v in state.items()}
    with pytest.raises(ValueError, match="wrapper prefix 'module.'.*strip_prefix"):
        infer_config(wrapped)
    assert infer_config(strip_prefix(wrapped)[0]).resolved() == cfg
    cfg = ModelConfig(name="cifar_resnet20", num_classes=10, attn="se", reduction=8).resolved()
    with torch.device("meta"):
        assert infer_config(build_model(cfg).state_dict()).resolved() == cfg


def test_plain_state_dict_and_own_checkpoint_load(tmp_path):
    cfg = ModelConfig(name="cifar_resnet11", block="bottleneck", num_classes=5, attn="se", asr=True)
    model = _randomized(cfg)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    plain = load_model(tmp_path / "plain.pt")
    assert (plain.load_info.format, plain.load_info.config_from, plain.load_info.naming) == \
           ("state-dict", "inferred", "stripe")
    assert plain.load_info.dataset is None and plain.load_info.preprocess == {}  # a plain file implies neither
    assert torch.equal(_logits(plain, x), _logits(model, x))
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 4},
               tmp_path / "wrapped.pt")
    wrapped = load_model(tmp_path / "wrapped.pt")
    assert wrapped.load_info.epoch == 4 and wrapped.load_info.stripped_prefix == "module."
    assert torch.equal(_logits(wrapped, x), _logits(model, x))

    save_checkpoint(tmp_path / "epoch_0003.pt", epoch=3, model=model, metrics={"test_acc": 50.0})
    own = load_model(tmp_path / "epoch_0003.pt")
    assert (own.load_info.format, own.load_info.config_from, own.load_info.epoch) == ("stripe-checkpoint", "file", 3)
    assert own.config == model.config
    assert torch.equal(_logits(own, x), _logits(model, x))
    dep = load_model(tmp_path / "epoch_0003.pt", deployed=True)
    assert dep.load_info.deployed == "this package's fold" and dep.config == model.config.folded()
    assert torch.equal(_logits(dep, x), _logits(reparameterize(model), x))
    assert "+ASR(SE), 5 classes" in dep.load_info.summary() and dep.load_info.summary().endswith("fold -> baseline")
    assert dep.load_info.to_dict()["deployed_config"]["asr"] is False


def test_mismatch_lists_missing_and_unexpected(tmp_path):
    cfg = ModelConfig(name="cifar_resnet11", block="bottleneck", num_classes=5, attn="se")
    state = build_model(cfg).state_dict()
    state["layer1.0.attn.extra"] = torch.zeros(3)
    del state["layer2.0.attn.fc1.bias"]
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "odd.pt", cfg)
    msg = str(e.value)
    assert "1 missing (layer2.0.attn.fc1.bias); 1 unexpected (layer1.0.attn.extra)" in msg, msg
    # many keys on both sides: counts and the first few of each list, both lists present
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "odd.pt", ModelConfig(name="cifar_resnet20", num_classes=5, attn="eca"))
    msg = str(e.value)
    m = re.search(r"(\d+) missing \(([^)]*)\); (\d+) unexpected \(([^)]*)\)", msg)
    assert m and int(m.group(1)) > 3 and int(m.group(3)) > 3 and m.group(2).endswith("…") and \
        m.group(4).endswith("…"), msg
    # nothing to infer from: the layout is named as not recognised
    with pytest.raises(CheckpointError, match="layout not recognised.*give the model config"):
        load_model(tmp_path / "odd.pt")
    torch.save({"features.0.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a CIFAR ResNet state dict"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.pt")


class _Payload:
    """An object whose unpickling would run code (creates a folder)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_malicious_pickle_is_refused(tmp_path):
    target = tmp_path / "ran"
    torch.save({"state_dict": _Payload(str(target)), "epoch": 1}, tmp_path / "evil.pth.tar")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_model(tmp_path / "evil.pth.tar")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        official_run(tmp_path)
    assert not target.exists()


def test_name_mapping_rules():
    cfg = ModelConfig(name="cifar_resnet11", block="bottleneck", num_classes=3, attn="se", asr=True, both=True)
    official = to_official(build_model(cfg).state_dict(), cfg)
    with pytest.raises(ValueError, match="split_fused"):
        from_official(official)
    stripped, removed = strip_prefix({"module._orig_mod.a": torch.zeros(1)})
    assert list(stripped) == ["a"] and removed == ["module.", "_orig_mod."]
    with pytest.raises(ValueError, match="official code cannot build"):
        to_official({}, ModelConfig(name="cifar_resnet11", block="bottleneck", num_classes=3, attn="cbam"))
    with pytest.raises(ValueError, match="basic block"):
        to_official({}, ModelConfig(name="cifar_resnet8", num_classes=3, attn="se"))


def test_read_official_log_rejects_malformed_files(tmp_path):
    head = "Learning Rate\tTrain Loss\tValid Loss\tTrain Acc.\tValid Acc.\t\n"
    ok = tmp_path / "ok.txt"
    ok.write_text(head + "0.100000\t2.5\t2.3\t10.0\t13.0\t\n0.010000\t2.0\t2.1\t20.0\t25.0\t\n")
    df = read_official_log(ok)
    assert df.to_dict("list") == {"epoch": [1, 2], "lr": [0.1, 0.01], "train_loss": [2.5, 2.0],
                                  "train_acc": [10.0, 20.0], "test_loss": [2.3, 2.1], "test_acc": [13.0, 25.0]}
    (tmp_path / "head.txt").write_text(head)
    assert len(read_official_log(tmp_path / "head.txt")) == 0
    cases = {"": "empty", "epoch,lr\n1,0.1\n": "not an official log", head + "0.1\t2.5\t2.3\t10.0\n": "line 2 has 4",
             head + "0.1\t2.5\tabc\t10.0\t13.0\n": "line 2: 'abc' is not a number"}
    for i, (text, match) in enumerate(cases.items()):
        p = tmp_path / f"bad{i}.txt"
        p.write_text(text)
        with pytest.raises(ValueError, match=match):
            read_official_log(p)
    with pytest.raises(FileNotFoundError):
        read_official_log(tmp_path / "absent.txt")


def test_official_run_notes_disagreements(tmp_path):
    cfg = ModelConfig(name="cifar_resnet11", block="bottleneck", num_classes=3)
    state = build_model(cfg).state_dict()
    _official_file(tmp_path / "checkpoint.pth.tar", state, epoch=3)
    _official_file(tmp_path / "model_best.pth.tar", state, epoch=2)
    (tmp_path / "log.txt").write_text("Learning Rate\tTrain Loss\tValid Loss\tTrain Acc.\tValid Acc.\t\n"
                                      "0.1\t2.5\t2.3\t10.0\t13.0\t\n0.1\t2.4\t2.2\t11.0\t71.0\t\n")
    run = official_run(tmp_path)
    assert list(run.checkpoints) == ["checkpoint.pth.tar", "model_best.pth.tar"]
    assert [c.epoch for c in run.checkpoints.values()] == [3, 2]
    assert run.notes == ["checkpoint.pth.tar records epoch 3 but log.txt has 2 rows"]
    with pytest.raises(KeyError, match="present: checkpoint.pth.tar, model_best.pth.tar"):
        run.checkpoint("other.pth.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither"):
        official_run(tmp_path / "empty")


# ----------------------------------------------------------------------------- the command line, no config
@needs_shared
@pytest.mark.real_data
@pytest.mark.parametrize("folder", list(FOLDERS))
def test_cli_collects_stats_ablates_and_folds_official_run_folders(folder, tmp_path, capsys):
    """Each official run folder as it is: collect (taps expected from the variant), stats, ablate, fold."""
    from stripe.cli import main
    from stripe.record import Recording

    attn, asr, both = FOLDERS[folder]
    rec = tmp_path / "rec"
    code = main(["collect", str(SHARED / folder), "--out", str(rec), "--probe", "100", "--device", "cpu",
                 "--no-progress"])
    cap = capsys.readouterr()
    if attn is None:
        assert code == 2 and "no tap matches" in cap.err
        return
    assert code == 0, cap.err
    taps = Recording.open(rec).taps
    assert len(taps) == 6 * (1 + both) and int(taps["asr"].sum()) == (6 if asr else 0)
    assert sorted(set(taps["stage"])) == [1, 2, 3] and list(Recording.open(rec).epochs) == [2]
    assert Recording.open(rec).manifest["probe"]["preprocess"]["std"] == [0.2023, 0.1994, 0.201]
    assert main(["stats", str(rec)]) == 0
    capsys.readouterr()
    if not asr or both:
        assert main(["ablate", str(SHARED / folder), "--out", str(tmp_path / "abl"), "--probe-n", "100",
                     "--test-subset", "200", "--device", "cpu", "--no-progress"]) == 0
        assert "wrote" in capsys.readouterr().out
    if asr:
        assert main(["fold", "--checkpoint", str(SHARED / folder / "checkpoint.pth.tar")]) == 0
        out = capsys.readouterr().out
        diff = float(re.search(r"float64, the file's own weights and BN statistics: ([0-9.e+-]+)", out).group(1))
        weight = float(re.search(r"max \|Δ\| weight ([0-9.e+-]+)", out).group(1))
        assert diff < 1e-12 and weight < 1e-6, out


@needs_shared
@pytest.mark.real_data
def test_each_weights_file_is_read_once_per_command(tmp_path, capsys, monkeypatch):
    """collect --files A B, collect of an official run folder, ablate and fold each read a weights file once: the
    model a command checks is the model it works with (every torch.load counted by the file it opens)."""
    import shutil
    from collections import Counter

    from stripe.cli import main
    from stripe.record import Recording

    folder = tmp_path / "official-run"  # a run folder with two checkpoints: the last (epoch 2) and one of epoch 1
    folder.mkdir()
    files = [folder / "checkpoint.pth.tar", folder / "model_best.pth.tar"]
    shutil.copy(SHARED / "cifar10-resnet20-senet-asr-both" / "checkpoint.pth.tar", files[0])
    torch.save({**torch.load(files[0], weights_only=True), "epoch": 1}, files[1])
    reads: Counter = Counter()
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            reads[Path(f).resolve()] += 1
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)

    def reads_of(*args: str) -> dict[str, int]:
        reads.clear()
        common = [] if args[0] == "fold" else ["--device", "cpu", "--no-progress"]
        code = main([*map(str, args), *common])
        err = capsys.readouterr().err
        assert code == 0, err
        return {p.name: reads[p.resolve()] for p in files}

    assert reads_of("collect", "--files", *files, "--out", tmp_path / "rec", "--probe", "50") == \
        {"checkpoint.pth.tar": 1, "model_best.pth.tar": 1}
    assert list(Recording.open(tmp_path / "rec").epochs) == [1, 2]  # both recorded, from the models read once
    assert reads_of("collect", folder, "--out", tmp_path / "rec-folder", "--probe", "50") == \
        {"checkpoint.pth.tar": 1, "model_best.pth.tar": 1}
    assert reads_of("ablate", folder, "--out", tmp_path / "abl", "--probe-n", "50", "--test-subset", "100") == \
        {"checkpoint.pth.tar": 1, "model_best.pth.tar": 0}
    assert reads_of("fold", "--checkpoint", files[0]) == {"checkpoint.pth.tar": 1, "model_best.pth.tar": 0}
