"""RDED as LINs-lab/RDED's code does it: square tile-sized crops, tiles scored zero-padded to the input size,
ranks interleaved across the stitched images, factor 1 up to 64 px."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from hald.data.sources.base import ArraySource
from hald.distill.rded import pad_to, resolve_factor, select_class


class Recorder(nn.Module):
    """Logit of class 0 = 10 x the mean of the input; records every input it sees."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([10 * self.w * m, torch.zeros_like(m)], 1)


def _levels(n=16, size=16):
    """Class-0 images of uniform brightness 10 (j + 1), shuffled; class 1 black."""
    level = np.random.default_rng(3).permutation(n)
    imgs = np.concatenate([np.zeros((n, 1, size, size), np.uint8) + (10 * (level + 1))[:, None, None, None]
                           .astype(np.uint8), np.zeros((n, 1, size, size), np.uint8)])
    return ArraySource("toy", "train", ["0", "1"], [0] * n + [1] * n, imgs), level


@pytest.mark.parametrize("size, factor", [(32, 1), (64, 1), (128, 2), (224, 2)])
def test_factor_auto_follows_rdeds_scripts(size, factor):
    assert resolve_factor("auto", size) == factor  # CIFAR / Tiny: 1; ImageNet-scale: 2


def test_tiles_are_scored_zero_padded_to_the_input_size_and_ranks_interleave():
    ds = {"num_classes": 2, "channels": 1, "input_size": 16, "mean": [0.5], "std": [0.25]}
    src, level = _levels()
    teacher = Recorder()
    images, rec = select_class(src, teacher, 0, ds, ipc=2, seed=0, factor=2, mipc=16, num_crops=3,
                               crop_scale=(0.2, 1.0), batch_size=64)
    seen = torch.cat(teacher.seen)
    assert seen.shape[1:] == (1, 16, 16)  # every tile (8 px) went in at the full 16 px
    border = torch.ones(16, 16, dtype=torch.bool)
    border[4:12, 4:12] = False
    assert torch.all(seen[:, 0][:, border] == 0)  # zeros in normalised space around the centred tile
    assert not torch.all(seen[:, 0, 4:12, 4:12] == 0)
    # ranks: ipc * factor^2 = 8 brightest images, brightest first; tile k of image i = ranked crop k * ipc + i
    ranked = (10 * (np.sort(level)[::-1][:8] + 1)).tolist()
    assert rec["train_indices"] == np.argsort(-level)[:8].tolist()
    tiles = [[int(images[i, 0, r * 8, c * 8]) for r in range(2) for c in range(2)] for i in range(2)]
    assert tiles == [[ranked[k * 2 + i] for k in range(4)] for i in range(2)]


def test_crops_are_square_at_tile_size(monkeypatch):
    from torchvision.transforms import RandomResizedCrop

    ds = {"num_classes": 2, "channels": 1, "input_size": 16, "mean": [0.0], "std": [1.0]}
    g = np.random.default_rng(0)
    imgs = (g.random((8, 1, 40, 24)) * 255).astype(np.uint8)  # non-square source images
    src = ArraySource("toy", "train", ["0", "1"], [0] * 4 + [1] * 4, imgs)
    boxes, real = [], RandomResizedCrop.get_params
    monkeypatch.setattr(RandomResizedCrop, "get_params",
                        staticmethod(lambda img, scale, ratio: boxes.append(real(img, scale, ratio)) or boxes[-1]))
    teacher = Recorder()
    select_class(src, teacher, 0, ds, ipc=1, seed=0, factor=2, mipc=4, num_crops=3, crop_scale=(0.08, 1.0),
                 batch_size=64)
    assert len(boxes) == 12 and all(h == w for _, _, h, w in boxes)  # aspect ratio 1
    x = torch.cat(teacher.seen)[:, 0]
    assert x.shape == (12, 16, 16) and torch.all(x[:, :4] == 0) and torch.all(x[:, :, 12:] == 0)


def test_pad_to_centres_with_the_extra_row_at_the_bottom():
    x = torch.ones(1, 1, 3, 3)
    y = pad_to(x, 6)
    assert y.shape == (1, 1, 6, 6) and y[0, 0, 1:4, 1:4].sum() == 9 and y.sum() == 9
