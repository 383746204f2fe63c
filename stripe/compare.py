"""The paper's comparison: baseline, +att, +ASR(att), +ASR(att)+att, over seeds, as one table."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import fsio
from .train import TrainConfig, read_metrics, read_run, train


def variant_label(attn: str | None, asr: bool = False, both: bool = False) -> str:
    """The paper's name of a variant: 'baseline', '+SE', '+ASR(SE)' or '+ASR(SE)+SE'."""
    if not attn or (isinstance(attn, float) and attn != attn):  # None, '' or NaN from a table
        return "baseline"
    a = str(attn).upper()
    if not asr:
        return f"+{a}"
    return f"+ASR({a})+{a}" if both else f"+ASR({a})"


def config_label(model: dict[str, Any]) -> str:
    """:func:`variant_label` of a model config dict."""
    return variant_label(model.get("attn"), bool(model.get("asr")), bool(model.get("both")))


def variant_rank(label: str) -> tuple[int, str]:
    """Sort key of the paper's order: baseline, +att, +ASR(att), +ASR(att)+att."""
    if label == "baseline":
        return 0, label
    if label.startswith("+ASR("):
        return (3 if ")+" in label else 2), label
    return 1, label


def slug(text: str) -> str:
    """A file-name-safe form of a variant label: '+ASR(SE)+SE' -> 'plus_asr_se_plus_se'."""
    text = text.replace("+", "_plus_").replace("(", "_").replace(")", "_").lower()
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_") or "x"


def variants(attn: str) -> dict[str, dict[str, Any]]:
    """Label -> config overrides of the four variants, in the paper's order."""
    overrides = [dict(attn=None, asr=False, both=False), dict(attn=attn, asr=False, both=False),
                 dict(attn=attn, asr=True, both=False), dict(attn=attn, asr=True, both=True)]
    return {variant_label(**o): o for o in overrides}


def run_dir_of(out: Path, label: str, seed: int) -> Path:
    """Where one variant/seed run lives under a comparison folder (its config.json is the truth)."""
    return out / "runs" / f"{slug(label)}_seed{seed}"


def run_comparison(base: TrainConfig, attn: str, seeds: list[int], out: str | Path, *, device: str | None = "auto",
                   progress: bool = True, resume: bool = True, data=None) -> pd.DataFrame:
    """Train every variant x seed under ``out`` (finished runs are kept, partial ones resumed) and
    write ``results.csv`` and ``results.md``; returns the results table."""
    from tqdm.auto import tqdm

    out = Path(out)
    jobs = [(label, over, seed) for label, over in variants(attn).items() for seed in seeds]
    for label, over, seed in tqdm(jobs, desc="compare", unit="run", disable=not progress):
        cfg = replace(base, seed=seed, **over)
        run = run_dir_of(out, label, seed)
        if progress:
            tqdm.write(f"== {label}, seed {seed} -> {run}")
        train(cfg, run, resume=resume, device=device, progress=progress, data=data)
    table = results_table(out, attn, seeds)
    fsio.write_text(out / "results.csv", table.to_csv(index=False))
    fsio.write_text(out / "results.md", results_markdown(table, base))
    return table


def results_table(out: str | Path, attn: str, seeds: list[int]) -> pd.DataFrame:
    """One row per variant: deployed parameters, final-epoch and best-epoch top-1 (mean, std), img/s."""
    rows = []
    for label, over in variants(attn).items():
        finals, bests, speeds, params = [], [], [], None
        for seed in seeds:
            run = run_dir_of(Path(out), label, seed)
            info, m = read_run(run), read_metrics(run)
            trained = m[m["epoch"] >= 1]
            if trained.empty:
                continue
            params = info["params"]["deployed"]
            finals.append(float(trained["test_acc"].iloc[-1]))
            bests.append(float(trained["test_acc"].max()))
            speeds.append(float(trained["images_per_s"].median()))
        s = lambda v: pd.Series(v, dtype=float)
        rows.append({"variant": label, "attn": over["attn"] or "", "asr": over["asr"], "both": over["both"],
                     "seeds": len(finals), "params_deployed": params,
                     "final_top1_mean": s(finals).mean(), "final_top1_std": s(finals).std(ddof=1),
                     "best_top1_mean": s(bests).mean(), "best_top1_std": s(bests).std(ddof=1),
                     "train_images_per_s": s(speeds).mean()})
    return pd.DataFrame(rows)


def results_markdown(table: pd.DataFrame, base: TrainConfig) -> str:
    """The results table as Markdown, every column labelled with what it is."""
    pm = lambda m, sd: f"{m:.2f} ± {sd:.2f}" if pd.notna(sd) else (f"{m:.2f}" if pd.notna(m) else "n/a")
    lines = [
        f"{base.model} on {base.dataset}"
        + (f", train subset {base.train_subset}" if base.train_subset else "")
        + (f", test subset {base.test_subset}" if base.test_subset else "")
        + f", {base.epochs} epochs, batch {base.batch_size}, lr {base.lr} (x{base.gamma} at "
        + ", ".join(str(int(m * base.epochs)) for m in base.milestones) + "), seeds per variant as listed.",
        "",
        "| variant | deployed params | final-epoch top-1 % (mean ± std) | best-epoch top-1 % (mean ± std; "
        "best epoch picked on the test set) | seeds | train img/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in table.itertuples():
        params = f"{r.params_deployed / 1e6:.3f} M" if pd.notna(r.params_deployed) else "n/a"
        lines.append(f"| {r.variant} | {params} | {pm(r.final_top1_mean, r.final_top1_std)} | "
                     f"{pm(r.best_top1_mean, r.best_top1_std)} | {r.seeds} | {r.train_images_per_s:.0f} |")
    return "\n".join(lines) + "\n"
