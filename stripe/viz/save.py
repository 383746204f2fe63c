"""How figures and tables are written: :func:`save_figure` writes ``<name>.png`` and ``<name>.pdf`` atomically at
exactly ``figsize x DPI`` pixels (no tight bounding box: constrained layout keeps titles and labels inside the
canvas); the PNG is a 256-colour palette image (small enough to commit). :func:`md_number` formats a number for a
Markdown table."""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from ..errors import UserError
from ..fsio import atomic_write
from .style import DPI

__all__ = ["FORMATS", "md_number", "save_figure"]


#: file formats every figure is written in (``stripe figures --formats png`` for PNG alone)
FORMATS: tuple[str, ...] = ("png", "pdf")


def save_figure(fig: Figure, out_dir: str | os.PathLike[str], name: str,
                formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``<name>.png`` (256-colour palette) and ``<name>.pdf`` (or ``formats``) into out_dir atomically
    (figsize x DPI pixels)."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise UserError(f"figure name must be a plain file stem, got {name!r}")
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad or not formats:
        raise UserError(f"figure formats must be among png, pdf, svg; got {list(formats)}")
    out = Path(out_dir)
    written = []
    for fmt in formats:
        if fmt == "png":
            written.append(atomic_write(out / f"{name}.png", lambda f: _write_palette_png(fig, f)))
            continue
        meta = {"CreationDate": None} if fmt == "pdf" else {}
        written.append(
            atomic_write(out / f"{name}.{fmt}",
                         lambda f, fmt=fmt, meta=meta: fig.savefig(f, format=fmt, dpi=DPI, metadata=meta))  # fmt: skip
        )
    return written


def _write_palette_png(fig: Figure, f: Any) -> None:
    """Render ``fig`` at :data:`DPI` and write it as a 256-colour palette PNG: a third of the full-colour
    file's size for these flat-coloured plots and the same drawing to the eye (antialiased edges and colour
    maps take their nearest palette colour: within a few of 255 levels, tested)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    buf.seek(0)
    with Image.open(buf) as im:
        im.load()
        rgba = im.convert("RGBA")
    opaque = rgba.getextrema()[3][0] == 255
    if opaque:
        pal = rgba.convert("RGB").quantize(256)
    else:  # only the fast octree quantiser keeps an alpha channel
        pal = rgba.quantize(256, method=Image.Quantize.FASTOCTREE)
    pal.save(f, format="PNG", optimize=True, dpi=(DPI, DPI))


def md_number(x: Any, fmt: str) -> str:
    """A number for a Markdown cell, '—' when missing."""
    return "—" if x is None or pd.isna(x) else format(float(x), fmt)
