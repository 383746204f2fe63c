"""The fold report behind ``stripe fold``: the ASR fold of this package's models, checked for each attention."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from ..nn import count_params, create_model, list_attn
from .asr import reparameterize
from .fold import FoldError, verify_fold


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
