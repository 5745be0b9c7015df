"""The standard CIFAR augmentation on whole batches: a random 32×32 crop of the image zero-padded
by 4 pixels, and a random horizontal flip with probability 1/2 -- as tensor operations on the
batch's own device, no PIL and no loop over images.

The random draws come from a CPU ``torch.Generator`` and are made on the CPU (``B`` vertical
offsets, then ``B`` horizontal offsets, then ``B`` flips; a few hundred bytes), then moved to the
batch's device: the same generator state gives the same augmented batch on any device. Two models
get identical augmentation by using two generators seeded alike, or by drawing once
(``crop_flip_params``) and applying that draw to each model's copy of the batch (``crop_flip``).

The cost is two passes over the batch: one padded copy (``F.pad``) and one ``gather`` that reads
each output pixel from its source in the padded image (offset and flip folded into one flat index
per image row and column, [B, H·W] int64, shared by the channels). Working memory: the padded
copy, the output, and the index (8 bytes per pixel position: 1 MB for a batch of 128 CIFAR
images, 400 MB if all 50,000 are augmented in one call).
"""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor


class CropFlip(NamedTuple):
    """One batch's draws: ``dy``, ``dx`` the crop's top-left corner in the padded image (0..2p),
    ``flip`` whether the crop is mirrored left to right. CPU int64 / bool tensors of length B."""

    dy: Tensor
    dx: Tensor
    flip: Tensor


def _check(x: Tensor, padding: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip: expected a batch [B, C, H, W], got shape {tuple(x.shape)}")
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise ValueError(f"random_crop_flip: padding must be an integer >= 0, got {padding!r}")


def crop_flip_params(batch: int, generator: torch.Generator, padding: int = 4) -> CropFlip:
    """Draw one batch's offsets and flips from ``generator`` (a CPU generator), in a fixed order:
    ``batch`` vertical offsets, ``batch`` horizontal offsets, then ``batch`` flips, each offset
    uniform in 0..2·padding and each flip with probability 1/2."""
    if generator.device.type != "cpu":
        raise ValueError(f"random_crop_flip: the generator must be a CPU torch.Generator (got one on {generator.device})")
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
    flip = torch.randint(0, 2, (batch,), generator=generator).bool()
    return CropFlip(offsets[0], offsets[1], flip)


def crop_flip(x: Tensor, params: CropFlip, padding: int = 4, fill: Union[int, float] = 0) -> Tensor:
    """Apply drawn offsets and flips to a batch ``x`` [B, C, H, W] of any dtype on any device:
    each output image is the H×W window at (dy, dx) of its image padded by ``padding`` pixels of
    ``fill`` on every side, mirrored left to right where ``flip``. Returns a new tensor."""
    _check(x, padding)
    batch, channels, height, width = x.shape
    if not len(params.dy) == len(params.dx) == len(params.flip) == batch:
        raise ValueError(f"random_crop_flip: {len(params.dy)} draws for a batch of {batch}")
    device = x.device
    dy, dx, flip = (t.to(device, non_blocking=True) for t in params)
    padded = F.pad(x, (padding, padding, padding, padding), value=fill) if padding else x
    padded_width = width + 2 * padding
    # output pixel (i, j) of image b reads padded pixel (i + dy, dx + j), or (i + dy, dx + W-1-j) when flipped
    cols = torch.arange(width, device=device).expand(batch, width)
    cols = torch.where(flip.unsqueeze(1), cols.flip(1), cols) + dx.unsqueeze(1)  # [B, W]
    rows = torch.arange(height, device=device) + dy.unsqueeze(1)  # [B, H]
    index = (rows.unsqueeze(2) * padded_width + cols.unsqueeze(1)).view(batch, 1, height * width)
    flat = padded.reshape(batch, channels, padded.shape[2] * padded_width)  # a view when contiguous
    return flat.gather(2, index.expand(batch, channels, height * width)).view(batch, channels, height, width)


def random_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4, fill: Union[int, float] = 0) -> Tensor:
    """The standard CIFAR augmentation of a batch ``x`` [B, C, H, W] (uint8 or float, any device):
    a random H×W crop of each image padded by ``padding`` pixels of ``fill``, flipped left to right
    with probability 1/2. The draws come from the CPU ``generator``: the same state gives the same
    output, on any device. ``fill`` is the padding's value in ``x``'s units (0: black for raw
    pixels; for standardised inputs pass ``(0 - mean) / std`` to pad with black, or 0 to pad with
    the mean). Returns a new tensor of ``x``'s shape, dtype and device."""
    _check(x, padding)  # before any draw
    return crop_flip(x, crop_flip_params(x.shape[0], generator, padding), padding, fill)


__all__ = ["CropFlip", "crop_flip", "crop_flip_params", "random_crop_flip"]
