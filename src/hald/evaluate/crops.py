"""A model's predictions on random crops of every distilled image, one crop per image per view.

The crops come from the relabel pass sampler (`data/replay.py`: `sample_pass` draws the RandomResizedCrop box
and flip, `render` turns them into pixels), so an analysis sees exactly the crop distribution the stored labels
were drawn from. CutMix is left out: these analyses are about one image's crops, not about mixed pairs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from hald.data.replay import render, sample_pass


@torch.no_grad()
def crop_probs(net: nn.Module, images: torch.Tensor, out_size: int, mean: Sequence[float], std: Sequence[float],
               seed: int, temperature: float = 1.0, scale: Sequence[float] = (0.08, 1.0),
               ratio: Sequence[float] = (3 / 4, 4 / 3), flip_p: float = 0.0, batch_size: int = 256) -> torch.Tensor:
    """softmax(net(crop) / T) for one random crop of each image: float32 [N, C] on the CPU, in image order.

    `seed` picks the crops (its own RNG stream: the caller's global RNG is untouched, so probing a model during
    training changes nothing in the training run). `net` is used as it is (its train/eval mode included).
    """
    device = next(iter(net.parameters()), torch.empty(0)).device
    n = images.shape[0]
    passes = sample_pass(n, (int(images.shape[2]), int(images.shape[3])), batch_size, out_size, seed,
                         scale=tuple(scale), ratio=tuple(ratio), flip_p=flip_p, cutmix_alpha=None)
    m, s = torch.tensor(list(mean), dtype=torch.float32), torch.tensor(list(std), dtype=torch.float32)
    out = None
    for g in passes:
        x = render(images, g, out_size, m, s).to(device)
        p = torch.softmax(net(x).float() / temperature, dim=1).cpu()
        if out is None:
            out = torch.empty(n, p.shape[1])
        out[g.index.long()] = p  # sample_pass shuffles the images into batches: put rows back in image order
    return out


def crop_probs_many(net: nn.Module, images: torch.Tensor, crops: int, seed: int, **kwargs) -> torch.Tensor:
    """`crops` independent views (seeds seed, seed + 1, ...): float32 [N, crops, C]."""
    return torch.stack([crop_probs(net, images, seed=seed + k, **kwargs) for k in range(crops)], dim=1)
