"""Recorded augmentations: sample the crop/flip/CutMix geometry of a relabel pass, and render it.

`render` is the one function that turns stored geometry into pixels. Relabel calls it to make the batch the
teacher labels; training calls it to replay a stored batch (in the loader, or on the accelerator after the
batch transfer: train.images_on_device) and to make the hard epochs' fresh crops (`draw_crop`). Same
function, same inputs, same pixels: replay is exact by construction (a test checks it by running the teacher
again).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop

from hald.data.distilled import prefetch, release_pages


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


def draw_crop(image_hw: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3),
              flip_p: float = 0.5) -> tuple[list[int], bool]:
    """One RandomResizedCrop box (top, left, height, width) and flip from the global RNG, with the calls and the
    order of torchvision's v2 RandomResizedCrop + RandomHorizontalFlip: hard epochs draw the crops they drew
    when they used those transforms. The caller seeds it (data.transforms.Reseeded, per item)."""
    h, w = image_hw
    box = RandomResizedCrop.get_params(torch.empty(1, 1, 1).expand(1, h, w), list(scale), list(ratio))
    return list(box), bool(torch.rand(1) < flip_p)


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


def render_layout(images: torch.Tensor) -> torch.Tensor:
    """`images` in the memory layout `render` is fastest on: channels-last (the CPU's uint8 antialiased kernel
    works on interleaved pixels and would otherwise convert every crop; measured 2x on RGB at 224 px). The
    pixels do not depend on the layout; a no-op when the images already have it."""
    return images.contiguous(memory_format=torch.channels_last)


def _resize(crop: torch.Tensor, size: int, uint8_kernel: bool | None = None) -> torch.Tensor:
    """Bilinear resize of one crop [1, C, h, w] to size x size, area-averaged when shrinking (antialias), as
    integer pixel values: uint8 on the CPU, float holding integers elsewhere.

    The CPU has a uint8 antialiased kernel (horizontal pass, rounding, vertical pass, rounding; fixed-point
    weights), several times faster than float. Other devices have only the float kernel: it runs the same two
    passes and rounds after each, which matches the CPU's pixels except ~1.5% of them by 1-2 levels of 255
    (tests/data/test_replay.py measures it), so replay on an accelerator stays within that of the relabel pixels.
    uint8_kernel: None = the CPU's kernel on the CPU (False forces the accelerators' one, for that test).
    """
    h, w = crop.shape[-2:]
    if (h, w) == (size, size):
        return crop
    if crop.device.type == "cpu" if uint8_kernel is None else uint8_kernel:
        return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
    x = crop.float()
    if w != size:  # bilinear weights are non-negative and sum to 1: no clamp needed after rounding
        x = F.interpolate(x, size=(h, size), mode="bilinear", antialias=True).round_()
    if h != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).round_()
    return x


def render(images: torch.Tensor, g: Geometry, out_size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Pixels of a stored batch: crop+resize (bilinear, antialiased), flip, CutMix, normalise.

    images: uint8 [N, C, H, W], the whole distilled set (all images one size), on the device that renders
    (channels-last is fastest: `render_layout`). g: on the host (its integers drive the per-image loop).
    Returns float32 [b, C, S, S] on the images' device, channels-last.
    Per image, the resize writes integer pixels into one batch buffer (uint8 on the CPU); flip and CutMix move
    those integers, and the batch is converted to float and normalised once: the per-image work is the resize
    alone. CutMix before normalising equals CutMix after it (the normalisation is per channel).
    """
    dev, b, c = images.device, len(g), images.shape[1]
    # channels-last, the layout of the resized crops and the one the networks run fastest in (hald/compute.py):
    # every copy below is a straight one and the float batch keeps the layout (the values do not depend on it)
    buf = torch.empty(b, c, out_size, out_size, device=dev, dtype=torch.uint8 if dev.type == "cpu" else torch.float32,
                      memory_format=torch.channels_last)
    prefetch(images, g.index)  # exactly the batch's images from a cold cache, not the disk's read-ahead
    for k, (i, (top, left, h, w), flip) in enumerate(zip(g.index.tolist(), g.box.tolist(), g.flip.tolist())):
        y = _resize(images[i:i + 1, :, top:top + h, left:left + w], out_size)[0]
        buf[k] = y.flip(-1) if flip else y
    release_pages(images)  # the crops are copied out: this process's RSS need not keep the mapped set's pages
    y1, x1, y2, x2 = (int(v) for v in g.mix_box)
    if y2 > y1 and x2 > x1:  # the right side is an indexed copy: partners are read before any is overwritten
        buf[:, :, y1:y2, x1:x2] = buf[g.mix_perm.to(dev, torch.long), :, y1:y2, x1:x2]
    mean, std = mean.to(dev, torch.float32).view(1, -1, 1, 1), std.to(dev, torch.float32).view(1, -1, 1, 1)
    return buf.to(torch.float32).mul_(1.0 / (255.0 * std)).add_(-mean / std)
