"""`distill=random`: a seeded random subset of real training images, IPC per class, as a PNG ImageFolder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torchvision.transforms import v2

from hald.console import track
from hald.distill.runtime import save_grid
from hald.data.distilled import write_imagefolder
from hald.data.sources import ImageSource
from hald.distill.registry import Cost, register


def select_random(targets: list[int], num_classes: int, ipc: int, seed: int) -> list[int]:
    """IPC indices per class, classes in order; errors if a class has fewer than IPC images."""
    t = torch.tensor(targets)
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        idx = torch.nonzero(t == c).flatten()
        if idx.numel() < ipc:
            raise ValueError(f"class {c} has {idx.numel()} training images, fewer than ipc={ipc}; fix: ipc<={idx.numel()}")
        chosen += idx[torch.randperm(idx.numel(), generator=g)[:ipc]].sort().values.tolist()
    return chosen


def random_real_images(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> int:
    """`random` takes ipc real images of each class."""
    return int(dcfg.get("ipc") or 0)


def random_cost(dcfg: Mapping[str, Any], dataset: Mapping[str, Any], ipc: int) -> Cost:
    return Cost("images copied")


@dataclass
class RandomConfig:
    method: str = "random"
    ipc: int = 10
    seed: int = 0


@register("random", real_images=random_real_images, cost=random_cost, config=RandomConfig)
def distill_random(source: ImageSource, dataset: Mapping[str, Any], ipc: int, seed: int, out_dir: Path,
                   **_: Any) -> dict[str, Any]:
    """Write the subset into out_dir/images/<class:05d>/<k:05d>.png at the dataset's input size."""
    size = int(dataset["input_size"])
    # Real images of any size become input_size squares, like every other method's distilled images.
    fit = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    chosen = select_random(source.targets, int(dataset["num_classes"]), ipc, seed)
    imgs = []
    for i in track(chosen, "random subset"):
        img, _ = source[i]
        imgs.append(img if tuple(img.shape[1:]) == (size, size) else fit(img))
    targets = torch.tensor([source.targets[i] for i in chosen])
    write_imagefolder(Path(out_dir) / "images", torch.stack(imgs), targets)
    by_class = torch.stack(imgs)[targets.argsort(stable=True)]  # rows = classes, as every method's preview
    save_grid(Path(out_dir) / "grid.png", by_class.view(-1, ipc, *by_class.shape[1:]), per_row=ipc)
    return {"method": "random", "ipc": ipc, "seed": seed, "source_indices": chosen, "images_dir": "images",
            "grid": "grid.png"}
