"""Constant-replacement ablation: a tap's attention replaced by its probe-set mean vector μ,
folded into the BN before it (γ' = γ·μ, β' = β·μ), so the result runs as the plain backbone does.

This is a post-hoc fold of a normally trained attention network: the practical pay-off of the
Stripe Observation. Per module type:
- after-BN modules (SE, ECA, SRM, SPA): the module is removed and μ folds into the last BN;
- CBAM: the channel gate folds; the spatial gate (input-dependent) stays;
- IE: the IEBN becomes a plain BN with γ' = γ·μ (β unchanged, as in IEBN's formula);
- DIA: a stage's blocks share one recurrent cell, so only whole stages (or all) are replaced;
- ASR taps: μ equals v exactly, so the replacement is the ASR fold itself (no change in accuracy).

μ is estimated on the run's probe images and accuracy is scored on its scored test images; the two
are disjoint by construction (:mod:`stripe.data.sets`). Each row reports the accuracy change, the
number of test predictions that changed, and an exact McNemar test of the paired predictions.

Any other model (a run of ``torchvision:NAME``/``timm:NAME``/…, or a model named with its weights
file): its gates are found by adapters and the generic detector (``taps="auto"``) and each one is
replaced at the gate by its constant (:func:`stripe.gates.replace_with_constants`, the same function that
replaces this package's modules); the table is the
same (scopes ``all`` and ``tap``; such gates have no stage). Folding them into the model's
parameters is ``stripe fold --model NAME``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from .. import fsio
from ..errors import NotFoundError, StripeError, UserError
from ..gates import Gate, replace_with_constants
from ..nn import check_finite_weights

if TYPE_CHECKING:
    import pandas as pd

SCOPES = ("all", "stage", "tap")


@dataclass
class AblationRow:
    """One scope's result: accuracy, change, and the paired comparison with the unchanged model."""

    scope: str
    target: str
    n_taps: int
    test_acc: float
    delta: float
    changed: int = 0
    gained: int = 0
    lost: int = 0
    mcnemar_p: float = 1.0


def mcnemar_exact(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value: a binomial test of the discordant pairs (``gained`` vs ``lost``) at 1/2."""
    n = gained + lost
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(min(gained, lost), n, 0.5, alternative="two-sided").pvalue)


def format_p(p: float, fmt: str = ".3g") -> str:
    """A p-value as text; an exact test's p too small for a float (0.0) reads '< 1e-300', not 0."""
    return "< 1e-300" if p == 0 else format(p, fmt)


def paired_counts(pred_a: Any, pred_b: Any, labels: Any) -> tuple[int, int, float]:
    """McNemar of two classifiers' paired predictions on the same images: (right only by b, right only by a, exact
    two-sided p). Works on torch tensors and numpy arrays alike."""
    ok_a, ok_b = pred_a == labels, pred_b == labels
    gained, lost = int((ok_b & ~ok_a).sum()), int((ok_a & ~ok_b).sum())
    return gained, lost, mcnemar_exact(gained, lost)


def paired_row(scope: str, target: str, n_taps: int, base_pred: torch.Tensor, pred: torch.Tensor,
               labels: torch.Tensor) -> AblationRow:
    """An :class:`AblationRow` from the unchanged model's and the ablated model's predictions on the same images."""
    acc0 = 100.0 * (base_pred == labels).double().mean().item()
    acc1 = 100.0 * (pred == labels).double().mean().item()
    gained, lost, p = paired_counts(base_pred, pred, labels)
    return AblationRow(scope, target, n_taps, acc1, acc1 - acc0, int((pred != base_pred).sum()), gained, lost, p)


def scope_groups(gates: list[Gate], scopes: Sequence[str]) -> list[tuple[str, str, list[Gate]]]:
    """(scope, target, gates) for each requested scope: all gates; each stage; each gate (a stage-shared cell, DIA,
    whose calls are one module: skipped)."""
    out = []
    for scope in scopes:
        if scope not in SCOPES:
            raise UserError(f"--scope: unknown scope {scope!r}; known: {', '.join(SCOPES)}")
        if scope == "all":
            out.append(("all", "all", list(gates)))
        elif scope == "stage":  # gates of other models have no stage
            for st in sorted({g.stage for g in gates if g.stage is not None}):
                out.append(("stage", f"stage {st}", [g for g in gates if g.stage == st]))
        else:
            out.extend(("tap", g.key, [g]) for g in gates if g.call is None)  # a shared cell's calls: whole stages
    return out


def _markdown(rows: list[AblationRow], run_dir: Path | str, epoch: int | None, n_test: int, n_probe: int,
              probe_split: str) -> str:
    md = ["| scope | target | taps replaced | test top-1 % | change (points) | predictions changed | "
          "gained / lost | McNemar p (exact) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r.scope} | {r.target or '-'} | {r.n_taps} | {r.test_acc:.2f} | {r.delta:+.2f} | {r.changed} | "
           f"{r.gained} / {r.lost} | {format_p(r.mcnemar_p)} |" for r in rows]
    where = f"{run_dir}, epoch {epoch}" if epoch is not None else str(run_dir)
    return (f"Constant-replacement ablation, {where}: test top-1 on {n_test} scored test images; "
            f"μ from the {n_probe}-image probe set ({probe_split} split), disjoint from the scored images.\n\n"
            + "\n".join(md) + "\n")


def _rows(model: nn.Module, probe_loader, test_loader, labels: torch.Tensor, scopes: Sequence[str], *,
          taps: str | Sequence[str] = "*", progress: bool = True
          ) -> tuple[list[AblationRow], list[Gate], dict[str, torch.Tensor], torch.Tensor]:
    """The ablation of any model: the gates (``taps``) recorded over the probe images, then each scope's gates
    replaced by their probe-set means (:func:`stripe.gates.replace_with_constants`), scored against the deployed
    model's predictions. Returns the rows, the gates, the means and the deployed model's predictions."""
    from tqdm.auto import tqdm

    from ..record import Recorder
    from ..train import deployed, predict

    example = next(iter(probe_loader))[0][:2] if "auto" in ([taps] if isinstance(taps, str) else taps) else None
    with Recorder(model, taps, example=example) as rec, torch.no_grad():
        for x, _ in probe_loader:
            model(x)
    # another model's gate that runs several times per forward is replaced at its module: by its first call's mean
    gates = [g for g in rec.taps if g.kind == "taps" or g.call is None]
    means = {key: torch.from_numpy(st.mean_) for (key, kind), st in rec.stats().items() if kind == "after"}
    base_pred = predict(deployed(model), test_loader)
    rows = [paired_row("none", "", 0, base_pred, base_pred, labels)]
    for scope, target, group in tqdm(scope_groups(gates, scopes), desc="ablate", unit="scope", disable=not progress):
        rows.append(paired_row(scope, target, len(group), base_pred,
                               predict(replace_with_constants(model, group, means), test_loader), labels))
    return rows, gates, means, base_pred


def _write(table: "pd.DataFrame", rows: list[AblationRow], out: Path, where: Path | str, epoch: int | None,
           n_test: int, n_probe: int, probe_split: str) -> None:

    fsio.write_text(out / "ablation.csv", table.to_csv(index=False, float_format="%.10g"))
    fsio.write_text(out / "ablation.md", _markdown(rows, where, epoch, n_test, n_probe, probe_split))


def ablate_model(model_name: str | None, *, weights: str | Path | None, dataset: str | None, out: str | Path,
                 num_classes: int | None = None, data_root: str | None = None, probe_n: int = 1000,
                 probe_split: str = "train", test_subset: int | None = None, seed: int = 0,
                 scopes: Sequence[str] = ("all", "tap"), taps: str | Sequence[str] = "auto",
                 preprocess: str | dict[str, Any] | None = "auto", device: str | None = "auto", batch_size: int = 100,
                 progress: bool = True, inform: Callable[[str], None] | None = None) -> "pd.DataFrame":
    """The ablation of a model from elsewhere on ``dataset``: μ from ``probe_n`` images of ``probe_split``,
    accuracy on the (disjoint) scored test images.

    ``model_name`` a source (``timm:NAME``, ``torchvision:NAME`` …) with its ``weights`` file and its own
    preprocessing (``preprocess``, see :func:`stripe.nn.preprocess_for`); or ``model_name`` None and
    ``weights`` a checkpoint of one of this package's models in any format :func:`stripe.train.load_model`
    reads (this package's, a plain state dict, the official ASR code's: its model inferred), its inputs
    preprocessed as the file implies with the given options on top, and ``dataset`` by default the one it implies
    (:class:`~stripe.train.LoadInfo`: an official CIFAR-100 file is normalised the official way, with CIFAR-10's
    mean and std, and is CIFAR-10 or CIFAR-100 by its classes). What was inferred
    (:func:`stripe.train.inferred_text`) goes to ``inform`` before the work and into the table's ``attrs["inferred"]``."""
    import pandas as pd

    from ..data import Loader, eval_sets, load_dataset
    from ..nn import build_source, preprocess_for
    from ..train import inferred_text, load_model, preprocess_origin
    from ..device import resolve_device

    dev = resolve_device(device)
    dataset_from = "--dataset"
    if model_name is None:
        if weights is None:
            raise UserError("give a checkpoint file (or a model NAME with --weights)")
        model = check_finite_weights(load_model(weights), weights)
        info = model.load_info  # what the file implies: the official code's data set and normalisation
        if dataset is None and info.dataset is not None:
            dataset, dataset_from = info.dataset, f"{info.dataset_from}; --dataset to change"
        where = f"{weights} ({info.summary()})"
        name, config, model_from = model.config.name, model.config, info.summary()
    else:
        model, _ = build_source(model_name, num_classes=num_classes, weights=weights)
        check_finite_weights(model, weights or model_name)
        info, where = None, f"{model_name} ({weights or 'no weights file'})"
        name, config, model_from = model_name, {"name": model_name, "num_classes": num_classes}, \
            f"--model, weights {weights}"
    if dataset is None:
        raise UserError("give the data set to ablate on (--dataset)")
    model.to(dev).eval()
    test_full = load_dataset(dataset, "test", root=data_root)
    train_full = load_dataset(dataset, "train", root=data_root) if probe_split == "train" else None
    data = eval_sets(test_full, train_full=train_full, probe_split=probe_split, probe_n=probe_n,
                     test_subset=test_subset, seed=seed)
    # the file's own preprocessing (LoadInfo), the given options on top
    pp = {**(info.preprocess if info is not None else {}),
          **(preprocess_for(name, preprocess, pretrained=weights is not None, in_chans=test_full.in_chans) or {})}
    inferred = inferred_text(
        config, model_from=model_from, dataset=dataset, dataset_from=dataset_from, images=data.score, preprocess=pp,
        preprocess_from=preprocess_origin(name, preprocess, pretrained=weights is not None, load_info=info),
        probe=data.probe_spec.to_dict(), scored=data.score_spec.to_dict(), notes=_scored_note(test_subset))
    out = fsio.claim_dir(out, "ablation")
    if inform is not None:
        inform(inferred)
    probe_loader = Loader(data.probe, batch_size, train=False, device=dev, **pp)
    test_loader = Loader(data.score, batch_size, train=False, device=dev, **pp)
    rows = _rows(model, probe_loader, test_loader, data.score.labels, scopes, taps="*" if model_name is None else taps,
                 progress=progress)[0]
    table = pd.DataFrame([r.__dict__ for r in rows])
    table.insert(0, "epoch", getattr(getattr(model, "load_info", None), "epoch", None))
    table["n_test"], table["n_probe"] = len(data.score), len(data.probe)
    _write(table, rows, out, where, table["epoch"].iloc[0], len(data.score), len(data.probe), probe_split)
    table.attrs["out"], table.attrs["inferred"] = str(out), inferred
    return table


def _scored_note(test_subset: int | None) -> list[str]:
    """What scoring every test image costs, said when no ``--test-subset`` was given."""
    if test_subset is not None:
        return []
    return ["every test image is scored once per scope (minutes per scope for a large model on a CPU); "
            "--test-subset N scores a seeded class-stratified N of them"]


def _is_stripe_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint stripe wrote (so ``--save`` may replace it)."""
    from ..train import CheckpointError, load_checkpoint

    try:
        load_checkpoint(path)
    except CheckpointError:
        return False
    return True


def run_ablation(run_dir: str | Path, *, checkpoint: str = "last", scopes: Sequence[str] = ("all", "stage"),
                 out: str | Path | None = None, save: str | Path | None = None, device: str | None = "auto",
                 batch_size: int = 500, progress: bool = True, taps: str | Sequence[str] = "auto",
                 inform: Callable[[str], None] | None = None) -> "pd.DataFrame":
    """Test accuracy of a run's checkpoint with its attention replaced by probe-set means, per scope;
    writes ``ablation.csv``/``ablation.md`` (default ``RUN_DIR/ablation``) and, with ``save``, the
    fully folded model as a checkpoint of the plain backbone (with that model's own accuracy).

    A run of a source model (``torchvision:NAME`` …) replaces its gates (``taps``, default ``auto``)
    at the gate; ``save`` does not apply to it (``stripe fold --model`` folds such gates)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ..data import Loader
    from ..nn import build_model, ModelConfig
    from ..record import Recorder, parse_checkpoint_spec
    from ..train import deployed, list_checkpoints, load_model, predict, read_run, run_eval_sets
    from ..device import resolve_device
    from ..train import save_checkpoint

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    paths = dict(list_checkpoints(run_dir))
    if not paths:
        raise NotFoundError(f"{run_dir}: the run has no checkpoints")
    (epoch,) = parse_checkpoint_spec(checkpoint, sorted(paths))[-1:]
    if save is not None:
        save = fsio.check_replaceable(save, _is_stripe_checkpoint, option="--save")
    dev = resolve_device(device)
    model = load_model(paths[epoch], info["model"])
    check_finite_weights(model, paths[epoch])
    model.to(dev).eval()
    _, data = run_eval_sets(info)
    out = fsio.claim_dir(Path(out) if out else run_dir / "ablation", "ablation")
    from ..train import inferred_text

    inferred = inferred_text(info["model"], model_from=f"the run's config.json, checkpoint of epoch {epoch}",
                             dataset=info["train"]["dataset"], dataset_from="the run's", images=data.test,
                             preprocess_from="the data set's own, as the run was trained",
                             probe=data.eval.probe_spec.to_dict(), scored=data.eval.score_spec.to_dict())
    if inform is not None:
        inform(inferred)
    if ModelConfig.from_dict(info["model"]).is_source:
        if save is not None:
            raise UserError("--save: a source model's folded gates change its architecture, so it cannot be saved "
                             "as a checkpoint of its config; use stripe fold --model NAME --weights FILE")
        rows = _rows(model, Loader(data.probe, batch_size, train=False, device=dev),
                     Loader(data.test, batch_size, train=False, device=dev), data.test.labels, scopes,
                     taps=taps, progress=progress)[0]
        table = pd.DataFrame([r.__dict__ for r in rows])
        table.insert(0, "epoch", epoch)
        table["n_test"], table["n_probe"] = len(data.test), len(data.probe)
        _write(table, rows, out, run_dir, epoch, len(data.test),
               len(data.probe), data.eval.probe_spec.split)
        table.attrs["out"], table.attrs["inferred"] = str(out), inferred
        return table
    test_loader = Loader(data.test, batch_size, train=False, device=dev)
    labels = data.test.labels
    rows, taps, means, base_pred = _rows(model, Loader(data.probe, batch_size, train=False, device=dev),
                                         test_loader, labels, scopes, progress=progress)
    table = pd.DataFrame([r.__dict__ for r in rows])
    table.insert(0, "epoch", epoch)
    table["n_test"] = len(data.test)
    table["n_probe"] = len(data.probe)
    fsio.write_text(out / "ablation.csv", table.to_csv(index=False, float_format="%.10g"))
    fsio.write_text(out / "ablation.md", _markdown(rows, run_dir, epoch, len(data.test), len(data.probe),
                                                   data.eval.probe_spec.split))
    if save is not None:
        folded = replace_with_constants(model, taps, means)
        cfg = ModelConfig.from_dict(info["model"])
        plain = build_model(cfg.plain())
        try:
            plain.load_state_dict(folded.state_dict(), strict=True)
        except RuntimeError:
            raise UserError(f"{cfg.attn}: part of the attention is input-dependent (CBAM's spatial gate) and "
                             "cannot fold into the plain backbone; nothing saved") from None
        saved = paired_row("all", "all", len(taps), base_pred, predict(plain.to(dev), test_loader), labels)
        save_checkpoint(save, epoch=epoch, model=plain, metrics={"test_acc": saved.test_acc,
                                                                 "n_test": len(data.test)})
    table.attrs["out"], table.attrs["inferred"] = str(out), inferred
    return table


def finished_ablation(run_dir: str | Path, scopes: Sequence[str]) -> "pd.DataFrame | None":
    """The table of ``run_dir``'s ablation (``RUN/ablation``, as :func:`run_ablation` writes it for the last
    checkpoint) when it is complete for the run as it is now; None otherwise, so that it is redone. Complete:
    ``ablation.csv`` and ``ablation.md`` both there (the csv is written first, each atomically), the md no older
    than the csv and both no older than the last checkpoint file, the csv readable, of the last checkpoint's epoch,
    of the run's number of scored images, and holding every scope of ``scopes``."""
    import pandas as pd

    from ..train import list_checkpoints, read_run

    run_dir = Path(run_dir)
    csv, md = run_dir / "ablation" / "ablation.csv", run_dir / "ablation" / "ablation.md"
    ckpts = list_checkpoints(run_dir)
    if not (csv.is_file() and md.is_file() and ckpts):
        return None
    epoch, last = ckpts[-1]
    try:
        t_csv, t_md, t_ckpt = csv.stat().st_mtime_ns, md.stat().st_mtime_ns, last.stat().st_mtime_ns
        table = pd.read_csv(csv)
        test_n = (read_run(run_dir).get("data") or {}).get("test_n")
    except (OSError, ValueError, StripeError):
        return None
    if t_md < t_csv or t_csv < t_ckpt or not {"epoch", "scope", "n_test"} <= set(table.columns) or table.empty:
        return None
    if set(table["epoch"]) != {epoch} or not set(scopes) <= set(table["scope"].astype(str)):
        return None
    if test_n is not None and set(table["n_test"]) != {int(test_n)}:
        return None
    if "target" in table.columns:  # the whole-model rows have none (written as an empty field)
        table["target"] = table["target"].fillna("").astype(str)
    table.attrs["out"] = str(csv.parent)
    return table


def ablate(target: str | Path | None = None, *, model: str | None = None, weights: str | Path | None = None,
           dataset: str | None = None, out: str | Path | None = None, checkpoint: str = "last",
           scopes: Sequence[str] = ("all", "stage"), save: str | Path | None = None, data_root: str | None = None,
           probe_n: int = 1000, test_subset: int | None = None, num_classes: int | None = None,
           taps: str | Sequence[str] = "auto", preprocess: str | dict[str, Any] | None = "auto",
           device: str | None = "auto", progress: bool = True,
           inform: Callable[[str], None] | None = None) -> "pd.DataFrame":
    """``stripe ablate`` as one call: ``target`` a stripe run (:func:`run_ablation`), a checkpoint file of any
    format or a run folder of the official ASR code (its ``checkpoint.pth.tar``; :func:`ablate_model`), or None
    with ``model`` (a source name) and ``weights``. The table's ``attrs["out"]`` says where it was written."""
    if target is not None and (Path(target) / "config.json").is_file():
        return run_ablation(target, checkpoint=checkpoint, scopes=scopes, out=out, save=save, device=device,
                            progress=progress, taps=taps, inform=inform)
    if target is not None:
        path = Path(target)
        if path.is_dir():
            if not (path / "checkpoint.pth.tar").is_file():
                raise UserError(f"{path}: neither a stripe run (config.json) nor a run folder of the official ASR "
                                "code (checkpoint.pth.tar); a checkpoint file of any format is ablated as itself: "
                                "`stripe ablate FILE --out DIR`")
            path = path / "checkpoint.pth.tar"
        elif not path.exists():
            raise NotFoundError(f"{path}: no such run, folder or checkpoint file")
        if out is None:
            raise UserError(f"{target}: not a stripe run, so give the ablation's output folder (--out)")
        if save is not None:
            raise UserError("--save applies to a stripe run")
        return ablate_model(None, weights=path, dataset=dataset, out=out, data_root=data_root, probe_n=probe_n,
                            test_subset=test_subset, scopes=scopes, preprocess=preprocess, device=device,
                            progress=progress, inform=inform)
    if not (model and dataset and out):
        raise UserError("give a RUN_DIR, a checkpoint file, or --model NAME --weights FILE --dataset D --out DIR")
    return ablate_model(model, weights=weights, dataset=dataset, out=out, num_classes=num_classes,
                        data_root=data_root, probe_n=probe_n, test_subset=test_subset, scopes=scopes, taps=taps,
                        preprocess=preprocess, device=device, progress=progress, inform=inform)
