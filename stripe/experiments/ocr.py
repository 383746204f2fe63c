"""A real pretrained model, offline: PaddleOCR's text-direction classifier (MobileNetV3-small, 9 Hardsigmoid
SE gates) from the ``rapidocr-onnxruntime`` wheel, converted with onnx2torch, recorded on real images
(matplotlib's sample images: a text logo and two photographs, cropped, upright and rotated 180 degrees),
folded exactly; its stripe index per gate and what folding costs in agreement (:func:`ocr_study`,
``stripe bench gates --ocr``).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..gates import fold_constants, replace_with_constants, verify_posthoc_fold
from ..nn import count_params
from ..nn.sources import MissingDependency, load_onnx
from ..record import Recorder

CLS_FILE = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
CLS_LABELS = ("0", "180")
CLS_SHAPE = (3, 48, 192)


def _package_dir(name: str) -> Path:
    """An installed package's folder, found without importing it (rapidocr_onnxruntime imports cv2 on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"the optional package {name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def ppocr_cls_path() -> Path:
    """The PP-OCR mobile v2.0 direction classifier shipped in the rapidocr-onnxruntime wheel."""
    path = _package_dir("rapidocr_onnxruntime") / "models" / CLS_FILE
    if not path.is_file():
        raise MissingDependency(f"{CLS_FILE} not found in {path.parent}")
    return path


def load_ppocr_cls(*, logits: bool = False) -> nn.Module:
    """The PP-OCR text-direction classifier as an eval GraphModule (``onnx:PATH``); ``logits=True`` returns
    the input of its final softmax (what a float64 comparison needs: probabilities saturate)."""
    for pkg in ("onnx", "onnx2torch"):
        _package_dir(pkg)
    gm = load_onnx(ppocr_cls_path())
    if logits:
        soft = [n for n in gm.graph.nodes
                if n.op == "call_module" and "Softmax" in type(gm.get_submodule(n.target)).__name__]
        if not soft:
            raise UserError(f"{CLS_FILE}: no softmax to cut")
        out = next(n for n in gm.graph.nodes if n.op == "output")
        out.args = (soft[-1].args[0],)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        gm.delete_all_unused_submodules()
    return gm


def paddle_cls_preprocess(img: Tensor) -> Tensor:
    """uint8 [3, H, W] -> float [3, 48, 192] as PaddleOCR's classifier does: resize to height 48 keeping the
    ratio (width <= 192), x / 255, (x - 0.5) / 0.5, right-pad with 0."""
    c, h, w = CLS_SHAPE
    rw = min(w, int(math.ceil(h * img.shape[2] / img.shape[1])))
    x = F.interpolate(img[None].float(), size=(h, rw), mode="bilinear", align_corners=False)[0]  # [3, 48, rw]
    out = torch.zeros(c, h, w)
    out[:, :, :rw] = (x / 255.0 - 0.5) / 0.5
    return out


def _read_rgb(path: Path) -> Tensor:
    """uint8 [3, H, W]; transparency composited on white, gray repeated."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)  # [H, W, 4]
    rgb, alpha = rgba[..., :3], rgba[..., 3:] / 255.0
    out = np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()  # [H, W, 3] -> [3, H, W]


def sample_images() -> dict[str, Tensor]:
    """Real images on disk: matplotlib's ``mpl-data/sample_data`` (``logo2.png`` is a line of text)."""
    folder = _package_dir("matplotlib") / "mpl-data" / "sample_data"
    found = {p.name: _read_rgb(p) for p in sorted(folder.glob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg")}
    if not found:
        raise MissingDependency(f"no sample images in {folder}")
    return found


def text_direction_set(images: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[str]]:
    """Crops of each image (the whole image, then windows of 3 heights x ratios 4:1/3:1/2:1), each upright
    (label 0) and rotated 180 degrees (label 1): x [N, 3, 48, 192], labels [N], names."""
    xs, ys, names = [], [], []
    for name, img in images.items():
        _, h, w = img.shape
        crops = [(0, 0, h, w)]
        for ch in (h, (3 * h) // 4, h // 2):
            for ratio in (4, 3, 2):
                cw = min(w, ratio * ch)
                for x0 in range(0, w - cw + 1, max(cw // 2, 1)):
                    for y0 in sorted({0, (h - ch) // 2, h - ch}):
                        crops.append((y0, x0, ch, cw))
        for y0, x0, ch, cw in dict.fromkeys(crops):
            c = img[:, y0:y0 + ch, x0:x0 + cw]
            for label, cc in ((0, c), (1, c.flip(1, 2))):
                xs.append(paddle_cls_preprocess(cc))
                ys.append(label)
                names.append(f"{name}[{y0}:{y0 + ch},{x0}:{x0 + cw}]{'/rot180' if label else ''}")
    return torch.stack(xs), torch.tensor(ys), names


def _batched(model: nn.Module, x: Tensor, batch: int) -> Tensor:
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def ocr_study(batch: int = 64) -> dict[str, Any]:
    """Gates of the PP-OCR direction classifier found by ``taps="auto"``, recorded on real images, the stripe
    index per gate (after and before), every gate folded with its mean, the fold checked in float64, and the
    agreement of the folded model's predictions with the unfolded (dynamic-gate) ones."""
    model = load_ppocr_cls()
    imgs = sample_images()
    x, y, names = text_direction_set(imgs)
    with Recorder(model, "auto", example=x[:2]) as rec:
        p = _batched(model, x, batch)
    stats, sites = rec.stats(), rec.gates
    means = {s.key: torch.from_numpy(stats[(s.key, "after")].mean_).float() for s in sites}
    folded, report = fold_constants(model, sites, means)
    pf = _batched(folded, x, batch)
    pc = _batched(replace_with_constants(model, sites, means), x, batch)
    logits_model = load_ppocr_cls(logits=True)
    v_random = verify_posthoc_fold(logits_model, sites, means, x[:8])
    v_real = verify_posthoc_fold(logits_model, sites, means, x[:8], randomize=False)
    source = [n.split("[")[0] for n in names]
    agree = (pf.argmax(1) == p.argmax(1))
    whole = {names[i]: {"label": CLS_LABELS[int(y[i])], "p_unfolded": [round(float(v), 4) for v in p[i]],
                        "p_folded": [round(float(v), 4) for v in pf[i]]}
             for i in range(len(names)) if f"[0:{imgs[source[i]].shape[1]},0:{imgs[source[i]].shape[2]}]" in names[i]}
    per_source = {}
    for s in dict.fromkeys(source):
        idx = torch.tensor([i for i, t in enumerate(source) if t == s])
        per_source[s] = {"n": len(idx), "agree": float(agree[idx].float().mean()),
                         "acc_unfolded": float((p[idx].argmax(1) == y[idx]).float().mean()),
                         "acc_folded": float((pf[idx].argmax(1) == y[idx]).float().mean())}
    return {
        "model": f"onnx:{ppocr_cls_path()}", "n_images": len(x),
        "gates": [{"key": s.key, "owner": s.qualname, "adapter": s.adapter, "channels": s.channels, "fold": s.fold,
                   "fold_module": s.fold_module, "S_after": stats[(s.key, "after")].stripe_index(),
                   "S_before": stats[(s.key, "before")].stripe_index(),
                   "after_min": float(stats[(s.key, "after")].min_.min()),
                   "after_max": float(stats[(s.key, "after")].max_.max())} for s in sites],
        "agree_folded_vs_unfolded": float(agree.float().mean()),
        "agree_folded_vs_constant": float((pf.argmax(1) == pc.argmax(1)).float().mean()),
        "max_prob_diff_folded_vs_constant_f32": float((pf - pc).abs().max()),
        "max_prob_diff_folded_vs_unfolded": float((pf - p).abs().max()),
        "acc_unfolded": float((p.argmax(1) == y).float().mean()),
        "acc_folded": float((pf.argmax(1) == y).float().mean()),
        "per_source": per_source, "whole_images": whole, "fold_report": report,
        "f64_random_bn": {k: v_random[k] for k in ("max_abs_diff", "max_abs_ref", "n_folded")},
        "f64_real_bn": {k: v_real[k] for k in ("max_abs_diff", "max_abs_ref", "n_folded")},
        "params_before": count_params(model), "params_after": count_params(folded),
        "buffers_before": sum(b.numel() for b in model.buffers()),
        "buffers_after": sum(b.numel() for b in folded.buffers()),
        "modules_before": len(list(model.modules())), "modules_after": len(list(folded.modules())),
    }


def ocr_markdown(o: dict[str, Any]) -> str:
    """The OCR study's per-gate table and summary as Markdown."""
    lines = ["| gate (owner node) | C | fold -> module | stripe index after | stripe index before | after range |",
             "|---|---:|---|---:|---:|---|"]
    for g in o["gates"]:
        lines.append(f"| {g['key']} | {g['channels']} | {g['fold']} -> {g['fold_module']} | {g['S_after']:.3f} | "
                     f"{g['S_before']:.3f} | [{g['after_min']:.2f}, {g['after_max']:.2f}] |")
    lines += ["", f"{o['n_images']} real inputs; folded (all {sum(r['done'] for r in o['fold_report'])} gates) vs "
              f"unfolded argmax agreement {100 * o['agree_folded_vs_unfolded']:.1f}% (max probability change "
              f"{o['max_prob_diff_folded_vs_unfolded']:.2f}); folded vs constant gates: agreement "
              f"{100 * o['agree_folded_vs_constant']:.1f}%, max probability difference "
              f"{o['max_prob_diff_folded_vs_constant_f32']:.1e} (float32); float64 check "
              f"{o['f64_real_bn']['max_abs_diff']:.1e} (real BN statistics), {o['f64_random_bn']['max_abs_diff']:.1e} "
              f"(perturbed, logits up to {o['f64_random_bn']['max_abs_ref']:.3g}); parameters {o['params_before']:,} "
              f"-> {o['params_after']:,}; direction accuracy {100 * o['acc_unfolded']:.1f}% -> "
              f"{100 * o['acc_folded']:.1f}%."]
    return "\n".join(lines) + "\n"
