"""Recorded augmentations: sample the crop/flip/CutMix geometry of a relabel pass, and render it.

`render` is the one function that turns stored geometry into pixels. Relabel calls it to make the batch the
teacher labels; the training loader calls it to replay a stored batch. Same function, same inputs, same
pixels: replay is exact by construction (a test checks it by running the teacher again).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.ops import roi_align
from torchvision.transforms import RandomResizedCrop


@dataclass
class Geometry:
    """Augmentation of one stored batch of b images (everything integer pixels, nothing float)."""

    index: torch.Tensor     # int64 [b]  image ids in the distilled set
    box: torch.Tensor       # int16 [b, 4]  RandomResizedCrop box (top, left, height, width) in source pixels
    flip: torch.Tensor      # bool  [b]  horizontal flip after the crop
    mix_perm: torch.Tensor  # int16 [b]  CutMix partner: position in this batch whose patch is pasted in
    mix_box: torch.Tensor   # int16 [4]  CutMix box (y1, x1, y2, x2) in output pixels; empty box = no mix

    def __len__(self) -> int:
        return int(self.index.numel())


def sample_pass(n_images: int, image_hw: tuple[int, int], batch_size: int, out_size: int, seed: int,
                scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                flip_p: float = 0.5, cutmix_alpha: float | None = 1.0) -> list[Geometry]:
    """One relabel pass: a seeded shuffle of all images into batches, with per-image crops and flips and a
    per-batch CutMix. Depends only on its arguments (own RNG stream), never on global RNG state."""
    h, w = image_hw
    dummy = torch.empty(1, h, w)  # get_params only reads the size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        order = torch.randperm(n_images)
        boxes = torch.tensor([RandomResizedCrop.get_params(dummy, list(scale), list(ratio))
                              for _ in range(n_images)], dtype=torch.int16)
        flips = torch.rand(n_images) < flip_p
        batches = []
        for start in range(0, n_images, batch_size):
            sel = order[start:start + batch_size]
            b = sel.numel()
            perm, mix_box = _cutmix_params(b, out_size, cutmix_alpha)
            batches.append(Geometry(index=sel.clone(), box=boxes[sel].clone(), flip=flips[sel].clone(),
                                    mix_perm=perm, mix_box=mix_box))
    return batches


def _cutmix_params(b: int, size: int, alpha: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Partner permutation and box for one batch; lambda ~ Beta(alpha, alpha), box area ~ 1 - lambda.

    Why not timm's rand_bbox: it draws from numpy's global RNG, which a replayable record cannot depend on.
    """
    if not alpha:
        return torch.arange(b, dtype=torch.int16), torch.zeros(4, dtype=torch.int16)
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(size * cut), int(size * cut)
    cy, cx = int(torch.randint(size, ())), int(torch.randint(size, ()))
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, size)
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, size)
    return torch.randperm(b).to(torch.int16), torch.tensor([y1, x1, y2, x2], dtype=torch.int16)


def render(images: torch.Tensor, g: Geometry, out_size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Pixels of a stored batch: crop+resize (bilinear, area-averaged when shrinking), flip, normalise, CutMix.

    images: uint8 [N, C, H, W], the whole distilled set (all images one size). Returns float32 [b, C, S, S].
    Vectorised over the batch: one roi_align call does every per-image crop and resize.
    """
    x = images[g.index.long()].float().div_(255.0)
    b = x.shape[0]
    top, left, hgt, wid = g.box.float().unbind(1)
    rois = torch.stack([torch.arange(b, dtype=torch.float32), left, top, left + wid, top + hgt], dim=1)
    # aligned=True puts sample points at pixel centres (the align_corners=False convention of resize);
    # sampling_ratio=-1 averages ceil(box/out) samples per output pixel, which anti-aliases downscaling.
    x = roi_align(x, rois.to(x.dtype), output_size=(out_size, out_size), spatial_scale=1.0,
                  sampling_ratio=-1, aligned=True)
    flip = g.flip.bool()
    if flip.any():  # in place and only the flipped rows: the renderer runs in every loader worker
        x[flip] = x[flip].flip(-1)
    x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    y1, x1, y2, x2 = (int(v) for v in g.mix_box)
    if y2 > y1 and x2 > x1:
        x[:, :, y1:y2, x1:x2] = x[g.mix_perm.long(), :, y1:y2, x1:x2].clone()
    return x


def render_loop(images: torch.Tensor, g: Geometry, out_size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Reference per-image version of `render` (one crop at a time); used by tests and the benchmark only."""
    rows = []
    for k in range(len(g)):
        one = Geometry(index=g.index[k:k + 1], box=g.box[k:k + 1], flip=g.flip[k:k + 1],
                       mix_perm=torch.zeros(1, dtype=torch.int16), mix_box=torch.zeros(4, dtype=torch.int16))
        rows.append(render(images, one, out_size, mean, std))
    x = torch.cat(rows)
    y1, x1, y2, x2 = (int(v) for v in g.mix_box)
    if y2 > y1 and x2 > x1:
        x[:, :, y1:y2, x1:x2] = x[g.mix_perm.long(), :, y1:y2, x1:x2].clone()
    return x
