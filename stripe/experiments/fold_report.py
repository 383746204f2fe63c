"""The fold report behind ``stripe fold``: one call (:func:`fold_report`), three kinds of input.

* this package's models (``--model cifar_resnetN --attn NAME`` or ``--all``): ASR(att) built, folded into
  plain BN and checked in float64 and float32 (every parameter perturbed, BN statistics randomised);
* any other model (``--model timm:NAME`` …): its gates detected, each mean attention over random images
  folded where it folds, checked against constant replacement in float64;
* a checkpoint file of any format (``--checkpoint FILE``): its ASR norms folded and checked with the file's
  own weights; an official ASR file is also compared with its ``fused_bn``.

The folds and the check themselves live in :mod:`stripe.gates`. The helpers here (random images of a
model's input shape, each gate's mean attention over images) also serve the gate benchmark
(:mod:`.gates_bench`) and the speed table of other models (:func:`stripe.experiments.bench.inference_speed`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..gates import FoldError, Gate, detect_gates, reparameterize, verify_fold, verify_posthoc_fold
from ..nn import (build_source, check_finite_outputs, check_finite_weights, count_params, create_model, is_source,
                  list_attn, preprocessing)
from ..record import Recorder


def random_images(n: int, shape: Sequence[int], seed: int) -> Tensor:
    """``n`` standard-normal images of ``shape`` (C, H, W) from a seeded generator: [n, C, H, W]."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def model_input_shape(spec: str, image_size: int | None = None,
                      shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """The input (C, H, W) of model ``spec``: ``shape`` when given, else 3 x ``image_size``² (default: the
    model's own crop size, else 224)."""
    if shape is not None:
        return tuple(int(v) for v in shape)
    if image_size is None:
        pp = preprocessing(spec) if ":" in spec else None
        image_size = (pp or {}).get("crop") or 224
    return 3, int(image_size), int(image_size)


@torch.no_grad()
def record_means(model: nn.Module, sites: list[Gate], x: Tensor) -> dict[str, Tensor]:
    """Per-gate mean attention ("after") over the images ``x``, by site key."""
    with Recorder(model, sites) as rec:
        model(x)
    return {key: torch.from_numpy(s.mean_).float() for (key, kind), s in rec.stats().items() if kind == "after"}


def source_fold(spec: str, *, num_classes: int | None = None, weights: str | Path | None = None,
                image_size: int | None = None, input_shape: Sequence[int] | None = None,
                atol: float = 1e-9) -> dict[str, Any]:
    """Detect the gates of model ``spec``, fold each constant (the mean attention over random images), and check
    the fold in float64 against constant replacement with perturbed BN statistics.

    Returns ``rows`` (one per gate), the check's numbers and ``ok`` (max difference <= ``atol`` relative to the
    largest output). The input is ``input_shape`` (C, H, W), or 3 x ``image_size``² (default: the model's
    own crop size, else 224)."""
    model, _ = build_source(spec, num_classes=num_classes, weights=weights)
    model.eval()
    shape = model_input_shape(spec, image_size, input_shape)
    x = random_images(2, shape, 0)
    sites = detect_gates(model, x)
    if not sites:
        raise UserError(f"{spec}: no channel gate found (no module of a registered adapter, no gate-shaped multiply)")
    means = record_means(model, sites, random_images(8, shape, 1))
    v = verify_posthoc_fold(model, sites, means, x)
    done = {r["key"]: r for r in v["report"]}
    rows = [{"gate": s.key, "adapter": s.adapter, "channels": s.channels, "fold": done[s.key]["fold"],
             "into": done[s.key]["fold_module"] or "-", "why": s.fold_reason if not done[s.key]["done"] else "",
             "note": s.note} for s in sites]
    ok = v["max_abs_diff"] <= atol * max(1.0, v["max_abs_ref"])
    from ..train import inferred_text

    how = ("--input-shape" if input_shape is not None else "--image-size" if image_size is not None
           else "the model's own crop size" if (preprocessing(spec) or {}).get("crop") else "224, the default")
    inferred = inferred_text({"name": spec, "num_classes": num_classes},
                             model_from=f"--model, weights {weights}" if weights else "--model, its initial weights",
                             images=f"random images {'x'.join(map(str, shape[1:]))}x{shape[0]} ({how}; "
                                    "--image-size N or --input-shape C,H,W to change)")
    return {"model": spec, "input": "x".join(map(str, shape)), "inferred": inferred, "rows": rows, "ok": ok,
            "atol": atol,
            **{k: v[k] for k in ("max_abs_diff", "max_abs_ref", "n_gates", "n_folded", "params_before",
                                 "params_after", "gate_modules_left")}}


def fold_table(model: str, attns: list[str], *, both_variants: list[bool], num_classes: int = 100,
               block: str | None = None, atol: float = 1e-5, progress: bool = True) -> tuple[list[dict[str, Any]], int]:
    """Build ASR(att) (and with ``both``), fold, verify in float64 (every parameter perturbed, BN statistics
    randomised) and float32; returns the rows and the number of failed checks."""
    from tqdm.auto import tqdm

    for attn in attns:
        if attn not in list_attn():
            raise UserError(f"unknown attention {attn!r}; known: {', '.join(list_attn())}")
    plain = count_params(create_model(model, num_classes=num_classes, block=block))
    rows, failed = [], 0
    # one step per phase (build, fold, check in float64, check in float32): a deep model takes minutes per model
    bar = tqdm(total=4 * len(attns) * len(both_variants), desc="fold+verify", unit="step", disable=not progress)
    for attn in attns:
        attn_params = count_params(create_model(model, num_classes=num_classes, attn=attn, block=block))
        for both in both_variants:
            name = f"{attn}{'+both' if both else ''}"
            bar.set_postfix_str(f"{name}: build")
            m = create_model(model, num_classes=num_classes, attn=attn, asr=True, both=both, block=block)
            bar.update()
            bar.set_postfix_str(f"{name}: fold")
            folded = reparameterize(m)
            bar.update()
            bar.set_postfix_str(f"{name}: check in float64")
            row = {"attention": attn, "variant": "asr+both" if both else "asr", "plain": plain,
                   "with attn": attn_params, "asr (train)": count_params(m), "folded": count_params(folded)}
            try:
                row["max|Δ| fp64"] = f"{verify_fold(m, atol=atol, dtype=torch.float64, perturb=0.1):.1e}"
                row["check"] = "ok"
            except FoldError as e:
                row["max|Δ| fp64"], row["check"] = str(e), "FAIL"
                failed += 1
            bar.update()
            bar.set_postfix_str(f"{name}: check in float32")
            diff32, scale32 = verify_fold(m, atol=float("inf"), dtype=torch.float32, perturb=0.1, with_scale=True)
            row["max|Δ| fp32"] = f"{diff32:.1e}"
            # the perturbed deep network's logits can be large: the difference means something only against them
            row["max|logit|"] = f"{scale32:.1e}"
            row["fp32 relative"] = f"{diff32 / max(scale32, 1e-300):.1e}"
            want = attn_params if both else plain
            if count_params(folded) != want:
                row["check"], failed = f"FAIL: {count_params(folded)} params, expected {want}", failed + 1
            rows.append(row)
            bar.update()
    bar.close()
    return rows, failed


def fold_checkpoint(path: str | Path, *, atol: float = 1e-9, save: str | Path | None = None) -> dict[str, Any]:
    """``stripe fold --checkpoint FILE``: load a checkpoint of any format, fold its ASR norms, and check the fold.

    The check runs in float64 with the file's own weights and BN statistics (max |Δ logits| between the
    ASR model and its fold on random inputs, ``FoldError`` above ``atol``); an official ASR file is also
    compared with its ``fused_bn`` (:func:`fold_vs_official`). Returns the numbers and the parameter counts.
    ``save``: the checked fold written there as a stripe checkpoint of the plain model (``stripe.load_model``
    reads it; a file there that stripe did not write is refused before anything is done).
    """
    import copy

    from ..analysis.ablation import _is_stripe_checkpoint
    from .. import fsio
    from ..nn import build_model
    from ..train import fold_vs_official, inferred_text, load_model, save_checkpoint

    if save is not None:
        save = fsio.check_replaceable(save, _is_stripe_checkpoint, option="--save")
    model = check_finite_weights(load_model(path), path)  # a diverged model: say so, do not blame the fold
    cfg, info = model.config, model.load_info
    side = cfg.image_size or 32
    inferred = inferred_text(cfg, model_from=info.summary(),
                             images=f"8 random float64 images {side}x{side}x{cfg.in_chans or 3} (no data set: the "
                                    "check is of the fold's algebra)")
    out: dict[str, Any] = {"summary": info.summary(), "inferred": inferred, "config": cfg,
                           "params_before": count_params(model)}
    if not cfg.asr:
        if save is not None:
            raise UserError(f"--save: {path} holds no ASR norm, so there is no fold to save")
        out.update(params_after=out["params_before"], folded=False, note="no ASR norm: nothing to fold")
        return out
    folded = reparameterize(model).eval()
    out.update(params_after=count_params(folded), folded=True,
               params_expected=count_params(build_model(cfg.folded())))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, cfg.in_chans or 3, cfg.image_size or 32, cfg.image_size or 32, generator=g, dtype=torch.float64)
    m64 = copy.deepcopy(model).double().eval()
    f64 = reparameterize(m64).eval()  # folded in float64: the check is of the algebra, not of fp32 rounding
    with torch.no_grad():
        y, yf = m64(x), f64(x)
    check_finite_outputs(torch.isfinite(y).all(), path)
    diff = (y - yf).abs().max().item()
    out["max_abs_diff_fp64"] = diff
    if not diff <= atol:
        raise FoldError(f"{path}: the fold differs from the ASR model by {diff:.3g} > atol {atol:g}")
    if info.fused:
        out["official"] = fold_vs_official(model)  # the model read above: the file is not read again
    if save is not None:  # only a fold that passed the check is written
        save_checkpoint(save, epoch=info.epoch if info.epoch is not None else 0, model=folded,
                        metrics={"folded_from": str(path), "max_abs_diff_fp64": diff})
        out["saved"] = str(save)
    return out


def fold_report(model: str = "cifar_resnet164", *, attn: str | None = None, all_attns: bool = False,
                both: bool = False, checkpoint: str | Path | None = None, weights: str | Path | None = None,
                num_classes: int | None = None, block: str | None = None, image_size: int | None = None,
                input_shape: Sequence[int] | None = None, atol: float | None = None,
                progress: bool = True, save: str | Path | None = None) -> dict[str, Any]:
    """``stripe fold`` as one call: a checkpoint file (``checkpoint``), another model (``model`` a source name),
    or this package's ``model`` with ASR(``attn``) (``all_attns``: every module, plain ASR and ASR+both).
    Returns a dict with ``kind`` ("checkpoint", "source" or "asr"), ``ok`` and the numbers of that kind;
    ``save`` (with ``checkpoint``) writes the folded model (:func:`fold_checkpoint`)."""
    if checkpoint is not None:
        return {"kind": "checkpoint", "ok": True,
                **fold_checkpoint(checkpoint, atol=1e-9 if atol is None else atol, save=save)}
    if save is not None:
        raise UserError("--save writes the fold of a trained model: give its file with --checkpoint FILE (a model "
                        "built here has random weights; `stripe ablate RUN --save FILE` folds a trained attention "
                        "network's constant attention)")
    if is_source(model):
        if attn or all_attns or both:
            raise UserError(f"{model}: --attn, --all and --both apply to this package's models; another model's "
                            "gates are found by themselves")
        r = source_fold(model, num_classes=num_classes, weights=weights, image_size=image_size,
                        input_shape=input_shape, atol=1e-9 if atol is None else atol)
        return {"kind": "source", **r}
    if not all_attns and attn is None:
        raise UserError("give --attn NAME (one of: " + ", ".join(list_attn()) + ") or --all")
    if weights or input_shape:
        raise UserError("--weights and --input-shape apply to other models (--model timm:NAME, torchvision:NAME …); "
                        "a checkpoint of this package's models folds with --checkpoint FILE")
    atol = 1e-5 if atol is None else atol
    rows, failed = fold_table(model, list_attn() if all_attns else [attn], both_variants=[False, True] if all_attns
                              else [both], num_classes=num_classes or 100, block=block, atol=atol, progress=progress)
    return {"kind": "asr", "ok": not failed, "model": model, "num_classes": num_classes or 100, "atol": atol,
            "rows": rows, "failed": failed}


def text_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain aligned text table of ``rows`` (the first column left-aligned, the others right-aligned)."""
    if not rows:
        return "(empty)"
    columns = columns or list(rows[0])
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def fold_text(r: dict[str, Any]) -> str:
    """The report of :func:`fold_report` as text, for each of its three kinds."""
    if r["kind"] == "checkpoint":
        return _checkpoint_fold_text(r)
    if r["kind"] == "source":
        return _source_fold_text(r)
    return (f"{r['model']}, {r['num_classes']} classes: ASR models folded into plain BN. Every parameter perturbed "
            f"(N(0, 0.1)) and BN statistics randomised; verified in float64 at atol {r['atol']:g} (relative to the "
            f"largest logit); the fp32 columns are the same comparison in float32, where a deep network's own rounding "
            f"shows: max|logit| is the largest logit of the perturbed model, the scale that difference is relative to "
            f"(fp32 relative: their ratio).\n" + text_table(r["rows"]))


def _checkpoint_fold_text(r: dict[str, Any]) -> str:
    """The fold report of a checkpoint file as text."""
    lines = [r["inferred"]]
    if not r["folded"]:
        return "\n".join(lines + [f"{r['note']}; parameters {r['params_before']:,}"])
    lines.append(f"folded into plain BN: parameters {r['params_before']:,} -> {r['params_after']:,} (expected, the "
                 f"folded architecture built anew: {r['params_expected']:,}); max |Δ logits| ASR model vs its "
                 f"fold, float64, the file's own weights and BN statistics: {r['max_abs_diff_fp64']:.1e}")
    if "official" in r:
        o = r["official"]
        lines.append(f"vs the file's fused_bn (the official fold, {o['norms']} norms): max |Δ| weight "
                     f"{o['weight']:.1e}, bias {o['bias']:.1e}, running_mean {o['running_mean']:.1e}, "
                     f"running_var {o['running_var']:.1e}")
    return "\n".join(lines)


def _source_fold_text(r: dict[str, Any]) -> str:
    """The fold report of another model's gates as text."""
    lines = [r["inferred"],
             f"{r['model']}, input {r['input']}: {r['n_gates']} gates found, {r['n_folded']} folded. Checked in "
             f"float64 with perturbed BN statistics: folded vs constant gates max |Δ| {r['max_abs_diff']:.1e} "
             f"(outputs up to {r['max_abs_ref']:.3g}; atol {r['atol']:g} relative): "
             f"{'ok' if r['ok'] else 'FAILED'}. Parameters {r['params_before']:,} -> {r['params_after']:,}; gate "
             f"modules left: {len(r['gate_modules_left'])}.",
             text_table([{**row, "why": row["why"][:70]} for row in r["rows"]],
                        ["gate", "adapter", "channels", "fold", "into", "why"])]
    lines += [f"note: {n}" for n in dict.fromkeys(row["note"] for row in r["rows"] if row["note"])]
    return "\n".join(lines)
