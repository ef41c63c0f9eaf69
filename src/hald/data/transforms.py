"""Transforms for real images (teacher training and evaluation), from torchvision's v2 API."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2


def train_transform(ds: Any, scale: tuple[float, float] = (0.08, 1.0), flip_p: float = 0.5) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(ds["input_size"], scale=tuple(scale), antialias=True),
        v2.RandomHorizontalFlip(flip_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(ds["mean"]), list(ds["std"])),
    ])


def pad_crop_transform(ds: Any, pad: int = 4, flip_p: float = 0.5) -> v2.Compose:
    """RandomCrop(input size, padding=pad, zeros) + flip: the CIFAR-style teacher augmentation of CV-DD's squeeze."""
    return v2.Compose([
        v2.RandomCrop(ds["input_size"], padding=int(pad)),
        v2.RandomHorizontalFlip(flip_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(ds["mean"]), list(ds["std"])),
    ])


def eval_transform(ds: Any) -> v2.Compose:
    """ImageNet-style datasets: Resize(test_resize) + CenterCrop(input); small datasets: images as they are."""
    size = ds["input_size"]
    resize = [v2.Resize(ds["test_resize"], antialias=True), v2.CenterCrop(size)] if ds.get("test_resize") else []
    return v2.Compose([*resize, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(ds["mean"]), list(ds["std"]))])


class Transformed(Dataset):
    """(uint8 image, label) dataset -> (transformed tensor, label)."""

    def __init__(self, base: Dataset, transform: Callable):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, y = self.base[i]
        return self.transform(img), y


class Reseeded(Dataset):
    """Item i of epoch e is drawn under its own seed (seed, epoch, i): random augmentation becomes a pure
    function of what is drawn, the same with any number of loader workers or ranks, in any order, and after
    a resume (no RNG state to restore)."""

    def __init__(self, base: Dataset, seed: int, epoch: int):
        self.base, self.seed, self.epoch = base, int(seed), int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        from hald.seeding import seed_of

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_of(self.seed, self.epoch, i))
            return self.base[i]


class FixedOrder(torch.utils.data.Sampler):
    """A shuffle drawn once from `seed`: iterating again gives the same order (a generator-driven
    RandomSampler would draw a new one each time the loader is iterated)."""

    def __init__(self, n: int, seed: int):
        self.order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
