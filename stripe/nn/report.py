"""Reports on models: parameter counts per attention module, and the ASR fold checked for each."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from .asr import FoldError, reparameterize, verify_fold
from .registry import list_attn
from .resnet import create_model
from .utils import count_params


def param_table(models: list[str], *, num_classes: int = 100, block: str | None = None) -> list[dict[str, Any]]:
    """One row per model: its block type and parameters (millions) plain and with each attention module."""
    rows = []
    for name in models:
        plain = create_model(name, num_classes=num_classes, block=block)
        row = {"model": name, "block": plain.config.block, "plain": f"{count_params(plain) / 1e6:.3f}M"}
        for attn in list_attn():
            m = create_model(name, num_classes=num_classes, attn=attn, block=block)
            row[attn] = f"{count_params(m) / 1e6:.3f}M"
        rows.append(row)
    return rows


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
            row["max|Δ| fp32"] = f"{verify_fold(m, atol=float('inf'), dtype=torch.float32, perturb=0.1):.1e}"
            want = attn_params if both else plain
            if count_params(folded) != want:
                row["check"], failed = f"FAIL: {count_params(folded)} params, expected {want}", failed + 1
            rows.append(row)
            bar.update()
    bar.close()
    return rows, failed
