"""The per-iteration augmentation of recover: one draw shared by the whole batch, differentiable.

RandomResizedCrop back to the input size (torchvision's parameter sampler and functional op), a horizontal
flip with probability flip_p (0 on digits: a mirrored digit is another glyph), then a circular roll by
(o1, o2) drawn from [0, jitter] (CV-DD's and SRe2L's range: `random.randint(0, lim)` in SRe2L
recover/data_synthesis.py:62-63). Random numbers come from
the global CPU generator, which recover seeds per unit inside `torch.random.fork_rng`.
"""
from __future__ import annotations

import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF


def jitter_batch(x: torch.Tensor, size: int, scale: tuple[float, float] = (0.08, 1.0), flip_p: float = 0.5,
                 jitter: int = 4) -> torch.Tensor:
    top, left, h, w = RandomResizedCrop.get_params(x, list(scale), [3 / 4, 4 / 3])
    out = TF.resized_crop(x, top, left, h, w, [size, size], antialias=True)
    if flip_p > 0 and torch.rand(()) < flip_p:
        out = out.flip(-1)
    if jitter > 0:
        dy, dx = torch.randint(0, jitter + 1, (2,)).tolist()
        out = torch.roll(out, shifts=(dy, dx), dims=(2, 3))
    return out
