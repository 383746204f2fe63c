"""A device-side loader: the data set moved to the device once; shuffling, sharding, augmentation
(4-pixel zero-pad random crop + horizontal flip) and normalisation happen there, with every random
number drawn from a CPU generator seeded from ``(seed, epoch)`` so batches are bit-identical across
devices and processes.

Optionally (keyword arguments, all off by default) a model's own evaluation preprocessing runs
there too: gray-to-RGB (``channels``), resize of the shorter side (``resize``, ``interpolation``),
center crop (``crop``) and normalisation with the model's ``mean``/``std`` instead of the data
set's (see :func:`stripe.nn.preprocessing`). Resizing works on floats in [0, 1] (not on 8-bit
images as PIL does), with antialiasing when shrinking.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .imageset import ImageSet


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed derived from (seed, epoch), stable across processes and versions."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, epoch & 0xFFFFFFFFFFFFFFFF]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class Loader:
    """Batches of normalised (optionally augmented) images, produced on `device` from a device-resident copy."""

    PAD = 4

    def __init__(self, ds: ImageSet, batch_size: int, *, train: bool, device: str | torch.device = "cpu",
                 seed: int = 0, shuffle: bool | None = None, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False, resize: int | None = None, crop: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 interpolation: str = "bilinear", channels: int | None = None) -> None:
        """Move `ds` to `device` once (zero-padded by 4 if augmenting) and fix the per-rank batch layout.

        ``resize`` (shorter side, aspect kept), ``crop`` (center), ``mean``/``std`` (replacing the data
        set's) and ``channels`` (3: gray images repeated to RGB) apply a model's preprocessing after
        augmentation; left at their defaults, batches are exactly what they were without them.
        """
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        if len(ds) == 0:
            raise UserError(f"{ds.name} {ds.split} is empty")
        self.ds = ds
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.augment = self.drop_last = self.train  # a training loader augments and keeps whole batches only
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        self.channels_last = bool(channels_last)
        self.epoch = 0

        n, c, h, w = ds.images.shape
        self._n, self._c, self._h, self._w = int(n), int(c), int(h), int(w)
        if self.augment:
            p = self.PAD
            padded = torch.zeros((n, c, h + 2 * p, w + 2 * p), dtype=torch.uint8, device=self.device)
            padded[:, :, p:p + h, p:p + w] = ds.images.to(self.device)  # [N, C, H+8, W+8]
            self._images = padded
        else:
            self._images = ds.images.to(self.device)  # [N, C, H, W]
        self._labels = ds.labels.to(self.device)
        self._mean = torch.tensor(ds.mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._std = torch.tensor(ds.std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._prep = self._check_preprocess(resize, crop, mean, std, interpolation, channels)

        # Per-rank sample count: drop_last truncates the global order to whole batches on every rank.
        if self.drop_last:
            per_rank = (n // (self.world_size * self.batch_size)) * self.batch_size
            self._total = per_rank * self.world_size
        else:
            self._total = n
            per_rank = len(range(self.rank, n, self.world_size))
        self.num_samples = per_rank
        self._num_batches = (per_rank // self.batch_size if self.drop_last
                             else -(-per_rank // self.batch_size))

    def _check_preprocess(self, resize: int | None, crop: int | None, mean: Sequence[float] | None,
                          std: Sequence[float] | None, interpolation: str, channels: int | None) -> dict | None:
        """The checked preprocessing (None when every option is at its default)."""
        if resize is None and crop is None and mean is None and std is None and channels is None:
            if interpolation not in INTERPOLATIONS:
                raise UserError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
            return None
        c, h, w = self._c, self._h, self._w
        if channels not in (None, c) and not (c == 1 and channels == 3):
            raise UserError(f"channels={channels}: {self.ds.name} images have {c} channel(s); only gray -> 3 converts")
        out_c = channels or c
        if interpolation not in INTERPOLATIONS:
            raise UserError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
        for name, v in (("resize", resize), ("crop", crop)):
            if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
                raise UserError(f"{name} must be a positive number of pixels, got {v!r}")
        if resize is not None:
            short = min(h, w)
            h, w = (resize, int(resize * w / short)) if h <= w else (int(resize * h / short), resize)
        size = (h, w)
        if crop is not None:
            if crop > min(h, w):
                raise UserError(f"crop {crop} is larger than the {h}x{w} images it would cut from")
            h = w = crop
        ds_mean = tuple(self.ds.mean) * (out_c // c)
        ds_std = tuple(self.ds.std) * (out_c // c)
        mean = tuple(float(v) for v in (mean if mean is not None else ds_mean))
        std = tuple(float(v) for v in (std if std is not None else ds_std))
        if len(mean) != out_c or len(std) != out_c or min(std) <= 0:
            raise UserError(f"mean/std need {out_c} values (std > 0), got {mean} / {std}")
        self._h_out, self._w_out = h, w
        return {"channels": out_c, "size": size, "crop": crop, "interpolation": interpolation,
                "mean": torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, out_c, 1, 1),
                "std": torch.tensor(std, dtype=torch.float32, device=self.device).view(1, out_c, 1, 1)}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the batches this loader yields."""
        if self._prep is None:
            return self._c, self._h, self._w
        return self._prep["channels"], self._h_out, self._w_out

    def _preprocess(self, x8: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> float [B, C', H', W'] with the model's preprocessing."""
        p = self._prep
        x = x8.float().div_(255.0)
        if p["channels"] != x.shape[1]:
            x = x.expand(-1, p["channels"], -1, -1)  # gray -> RGB
        if p["size"] != tuple(x.shape[2:]):
            mode = p["interpolation"]
            shrink = p["size"][0] < x.shape[2] or p["size"][1] < x.shape[3]
            x = F.interpolate(x, size=p["size"], mode=mode, align_corners=False if mode != "nearest" else None,
                              antialias=shrink and mode != "nearest")
            if mode == "bicubic":
                x = x.clamp_(0.0, 1.0)  # as on 8-bit images
        if p["crop"] is not None:
            c, (h, w) = p["crop"], x.shape[2:]
            top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
            x = x[:, :, top:top + c, left:left + c]  # [B, C, crop, crop]
        return (x - p["mean"]) / p["std"]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (seed, epoch) stream drives shuffling and augmentation."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self._num_batches

    def order(self) -> list[int]:
        """The data set indices in the order this rank yields them in the current epoch."""
        return self._plan()[0].tolist()

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This rank's sample order and (if augmenting) crop offsets and flip flags, drawn on the CPU."""
        g = torch.Generator(device="cpu")
        g.manual_seed(_epoch_seed(self.seed, self.epoch))
        n = self._n
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        offsets = flips = None
        if self.augment:  # one draw per global position, so every rank and device sees the same numbers
            offsets = torch.randint(0, 2 * self.PAD + 1, (n, 2), generator=g)  # [N, (dy, dx)]
            flips = torch.randint(0, 2, (n,), generator=g).bool()
        pos = torch.arange(self._total)[self.rank::self.world_size]
        mine = order[pos]
        if self.augment:
            offsets, flips = offsets[pos], flips[pos]
        return mine, offsets, flips

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Copy a CPU tensor to the loader's device without blocking the host on CUDA."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _crop_flip(self, idx: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Gather random crops (mirrored where asked) of the padded images as uint8 [B, C, H, W]."""
        c, h, w = self._c, self._h, self._w
        wp = w + 2 * self.PAD
        b = idx.shape[0]
        dev = idx.device
        ar_h = torch.arange(h, device=dev)
        ar_w = torch.arange(w, device=dev)
        rows = offsets[:, 0:1] + ar_h  # [B, H]
        cols = offsets[:, 1:2] + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)  # [B, W], mirrored if flipped
        spatial = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)  # [B, C, H*W]
        picked = self._images.index_select(0, idx).view(b, c, -1)  # [B, C, (H+8)*(W+8)]
        return picked.gather(2, spatial).view(b, c, h, w)  # [B, C, H*W] -> [B, C, H, W]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x float32 [B, C, H, W] normalised, y int64 [B]) on the device for the current epoch."""
        order, offsets, flips = self._plan()
        order_d = self._to_device(order)
        if self.augment:
            offsets_d, flips_d = self._to_device(offsets), self._to_device(flips)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        bs = self.batch_size
        for b in range(self._num_batches):
            sl = slice(b * bs, (b + 1) * bs)
            idx = order_d[sl]
            if self.augment:
                x8 = self._crop_flip(idx, offsets_d[sl], flips_d[sl])  # [B, C, H, W]
            else:
                x8 = self._images.index_select(0, idx)  # [B, C, H, W]
            if self.channels_last:  # convert while still uint8 (4x less to move than float32)
                x8 = x8.contiguous(memory_format=torch.channels_last)
            if self._prep is None:
                x = x8.float().div_(255.0).sub_(self._mean).div_(self._std)
            else:
                x = self._preprocess(x8)
            yield x.contiguous(memory_format=fmt), self._labels.index_select(0, idx)
