"""`distill=rded` (RDED, Sun et al., CVPR 2024): real crops the teacher finds most typical, stitched together.

For class c, as RDED's own code does it (LINs-lab/RDED synthesize/main.py
`init_images`, synthesize/utils.py `MultiRandomCrop`, `selector`, `pad`, `mix_images`):
1. up to `mipc` real training images of c (seeded);
2. `num_crops` RandomResizedCrops of each, at the tile size t = input / factor, aspect ratio 1, area scale
   `crop_scale`, from the image at its own resolution;
3. the teacher (eval mode) scores each crop normalised and zero-padded (in normalised space, centred) to the
   full input size, by cross-entropy to c; each image keeps its lowest-CE crop;
4. images are ranked by that CE and the first ipc * factor^2 crops are kept;
5. distilled image i of the class gets, in tile k (row-major, k = row * factor + col), the ranked crop
   k * ipc + i: every image holds one crop of each rank band, the best crops spread over all images.
`factor: auto` = 1 at 64 px and below (RDED's CIFAR and Tiny-ImageNet scripts, scripts/*tinyimagenet*,
scripts/cifar*), 2 above (its ImageNet-scale scripts).

This replaced the project's earlier version (crops at the full input size with aspect ratio in [3/4, 4/3],
scored at that size, consecutive groups of factor^2 ranked crops resized into one image), which measured worse
on mnist5k (docs/fidelity.md, "RDED: the earlier version measured") and was removed.

No optimisation. The same selection initialises SRe2L++ / CV-DD recover (`init: rded`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from hald.console import track
from hald.data.distilled import write_imagefolder
from hald.data.sources import ImageSource
from hald.distill.pixels import normalize
from hald.distill.registry import Cost, Work, register
from hald.distill.runtime import load_pool_teacher, make_fabric, save_grid
from hald.seeding import seed_of
from hald.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_factor(factor: int | str, input_size: int) -> int:
    f = (1 if input_size <= 64 else 2) if factor == "auto" else int(factor)
    if f < 1 or input_size % f:
        raise ConfigError(f"distill factor={factor}: the input size {input_size} must split into factor x factor "
                          f"equal tiles; fix: factor=auto, 1, or a divisor of {input_size}")
    return f


def random_crops(image: torch.Tensor, num_crops: int, size: int, scale: Sequence[float],
                 ratio: Sequence[float] = (1.0, 1.0)) -> torch.Tensor:
    """[num_crops, C, size, size] floats in [0, 1] from one uint8 image (global RNG: seed it outside); RDED's
    `MultiRandomCrop` draws squares (ratio 1)."""
    x = image.float() / 255
    return torch.stack([TF.resized_crop(x, *RandomResizedCrop.get_params(x, list(scale), list(ratio)),
                                        [size, size], antialias=True) for _ in range(num_crops)])


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad [N, C, t, t] centred to [N, C, size, size] (RDED's `pad`: the extra row/column goes to the
    bottom/right when size - t is odd)."""
    dv, dh = size - x.shape[-2], size - x.shape[-1]
    return F.pad(x, (dh // 2, dh - dh // 2, dv // 2, dv - dv // 2))


@torch.no_grad()
def best_crops(teacher: nn.Module, crops: torch.Tensor, label: int, dataset: Mapping[str, Any],
               batch_size: int = 256, score_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """crops [N, K, C, s, s] in [0, 1] -> (each image's lowest-CE crop [N, C, s, s], that CE [N]).

    score_size: each crop is normalised, then zero-padded to this size before the teacher sees it (RDED's
    scoring of a tile at the full input size); None = scored as it is."""
    n, k = crops.shape[:2]
    device = next(teacher.parameters()).device
    flat = crops.flatten(0, 1)

    def view(b: torch.Tensor) -> torch.Tensor:
        x = normalize(b.to(device), dataset)
        return pad_to(x, score_size) if score_size and score_size != x.shape[-1] else x

    ce = torch.cat([F.cross_entropy(teacher(view(b)).float(), torch.full((len(b),), label, device=device),
                                    reduction="none").cpu() for b in flat.split(batch_size)]).view(n, k)
    best, which = ce.min(dim=1)
    return crops[torch.arange(n), which], best


def stitch(tiles: torch.Tensor, factor: int, size: int) -> torch.Tensor:
    """[M * factor^2, C, s, s] ranked crops -> [M, C, size, size], as RDED's `mix_images`: image i, tile k
    (row k // f, col k % f) = ranked crop k * M + i. Tiles not of side size / factor are resized to it."""
    t = size // factor
    if tiles.shape[-1] != t:
        tiles = TF.resize(tiles, [t, t], antialias=True)
    m, c = tiles.shape[0] // factor ** 2, tiles.shape[1]
    grid = tiles.view(factor * factor, m, c, t, t).transpose(0, 1)
    grid = grid.reshape(m, factor, factor, c, t, t).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(m, c, size, size)


def select_class(source: ImageSource, teacher: nn.Module, label: int, dataset: Mapping[str, Any], ipc: int,
                 seed: int, factor: int, mipc: int, num_crops: int, crop_scale: Sequence[float],
                 batch_size: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """uint8 [ipc, C, H, W] images of one class and what was chosen (source indices and scores)."""
    size = int(dataset["input_size"])
    idx = np.flatnonzero(np.asarray(source.targets) == label)
    need = ipc * factor ** 2
    if len(idx) < need:
        raise ConfigError(f"class {label} has {len(idx)} training images, RDED needs ipc * factor^2 = {need}; "
                          f"fix: a smaller ipc or distill factor")
    rng = np.random.default_rng([seed, label])
    idx = np.sort(rng.choice(idx, min(mipc, len(idx)), replace=False)) if len(idx) > mipc else idx
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of(seed, label))
        # tile-sized square crops of each image at its own resolution, scored zero-padded to the input size
        crops = torch.stack([random_crops(source[int(i)][0], num_crops, size // factor, crop_scale) for i in idx])
    best, ce = best_crops(teacher, crops, label, dataset, batch_size, score_size=size)
    order = torch.argsort(ce, stable=True)[:need]
    images = stitch(best[order], factor, size)
    # Provenance in train-split indices, also when the source is a view (priors' held-out exclusion).
    to_train = getattr(source, "base_indices", None)
    chosen = [int(idx[j]) if to_train is None else int(to_train[idx[j]]) for j in order]
    return images.mul(255).round().clamp(0, 255).to(torch.uint8), {
        "class": label, "train_indices": chosen, "ce": [round(float(ce[j]), 5) for j in order]}


def rded_images(source: ImageSource, dataset: Mapping[str, Any], teacher: nn.Module, ipc: int, seed: int,
                factor: int | str = "auto", mipc: int = 300, num_crops: int = 5,
                crop_scale: Sequence[float] = (0.08, 1.0), batch_size: int = 256, progress: bool = True
                ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """uint8 [classes, ipc, C, H, W] and one record per class."""
    f = resolve_factor(factor, int(dataset["input_size"]))
    classes = range(int(dataset["num_classes"]))
    out, records = [], []
    for c in (track(classes, "rded: scoring crops") if progress else classes):
        imgs, rec = select_class(source, teacher, c, dataset, ipc, seed, f, mipc, num_crops, crop_scale, batch_size)
        out.append(imgs)
        records.append(rec)
    return torch.stack(out), records


def check_rded(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> None:
    resolve_factor(dcfg.get("factor", "auto"), int(dataset["input_size"]))
    if int(dcfg.get("num_crops", 1)) < 1 or int(dcfg.get("mipc", 1)) < 1:
        raise ConfigError(f"distill.num_crops={dcfg.get('num_crops')}, mipc={dcfg.get('mipc')}: both must be >= 1; "
                          f"fix: positive values")


def rded_real_images(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> int:
    """RDED tiles ipc * factor^2 crops of distinct real images per class."""
    return int(dcfg.get("ipc") or 0) * resolve_factor(dcfg.get("factor", "auto"), int(dataset["input_size"])) ** 2


def rded_work(dcfg: Mapping[str, Any], dataset: Mapping[str, Any], teacher: Mapping[str, Any], counted: bool
              ) -> Work:
    """The teacher forwards of an RDED selection: num_crops crops of mipc real images per class (`counted`:
    they are the stage's units)."""
    crops = int(dataset["num_classes"]) * int(dcfg.get("mipc", 300)) * int(dcfg.get("num_crops", 5))
    return Work(str(teacher["models"][0]), crops, pretrained=teacher.get("pretrained"),
                units=crops if counted else 0, label="RDED scoring" if counted else f"RDED init: {crops} crops scored")


def rded_cost(dcfg: Mapping[str, Any], dataset: Mapping[str, Any], ipc: int) -> Cost:
    return Cost("crops scored", (rded_work(dcfg, dataset, dcfg["pool"], counted=True),))


@dataclass
class RdedConfig:
    method: str = "rded"
    pool: Any = None
    ipc: int = 10
    seed: int = 0
    factor: Any = "auto"
    mipc: int = 300
    num_crops: int = 5
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    batch_size: int = 256
    holdout: Any = None


@register("rded", uses_teacher=True, check=check_rded, real_images=rded_real_images, cost=rded_cost,
          config=RdedConfig)
def distill_rded(source: ImageSource, dataset: Mapping[str, Any], out_dir: Path, teachers: list[dict[str, Any]],
                 ipc: int, seed: int, factor: int | str = "auto", mipc: int = 300, num_crops: int = 5,
                 crop_scale: Sequence[float] = (0.08, 1.0), batch_size: int = 256,
                 trainer_kwargs: Mapping[str, Any] | None = None, **_: Any) -> dict[str, Any]:
    fabric = make_fabric(trainer_kwargs)
    teacher = load_pool_teacher(teachers[0], dataset, fabric.device)
    images, records = rded_images(source, dataset, teacher, ipc, seed, factor, mipc, num_crops, crop_scale,
                                  batch_size, progress=bool((trainer_kwargs or {}).get("enable_progress_bar", True)))
    k = images.shape[0]
    write_imagefolder(Path(out_dir) / "images", images.flatten(0, 1), torch.arange(k).repeat_interleave(ipc))
    save_grid(Path(out_dir) / "grid.png", images, per_row=ipc)
    return {"method": "rded", "ipc": ipc, "seed": seed, "teachers": [{"name": teachers[0].name,
                                                                       "key": teachers[0].key}],
            "factor": resolve_factor(factor, int(dataset["input_size"])), "mipc": mipc, "num_crops": num_crops,
            "selection": records, "images_dir": "images", "grid": "grid.png"}
