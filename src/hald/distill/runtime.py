"""What every teacher-driven method needs: per-unit seeds, a Lightning Fabric for the device, the teachers
of the pool in eval mode, and a preview grid of the result."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn

from hald.models import load_teacher
from hald.models.teachers import Teacher


def make_fabric(trainer_kwargs: Mapping[str, Any] | None, devices: int = 1):
    """Devices come from Lightning: the pipeline's accelerator; several devices = DDP processes (spawned)."""
    from lightning.fabric import Fabric

    from hald import dist

    accelerator = (trainer_kwargs or {}).get("accelerator", "auto")
    precision = (trainer_kwargs or {}).get("precision", "32-true")  # compute.recover, resolved (hald/compute.py)
    if dist.active():  # inside the pipeline's DDP world: all of its ranks, or this rank's own device
        if devices > 1:
            return Fabric(accelerator=accelerator, devices=devices, strategy="ddp", precision=precision)
        return Fabric(**dist.device_kwargs(accelerator), precision=precision)
    strategy = "ddp_spawn" if devices > 1 else "auto"
    return Fabric(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision)


def load_pool_teacher(teacher: Teacher, dataset: Mapping[str, Any], device: torch.device) -> nn.Module:
    """A frozen teacher in eval mode (BatchNorm uses running statistics: they are recover's targets)."""
    pretrained = teacher.source if teacher.source.startswith("torchvision") else None  # torchvision:<weights enum>
    net = load_teacher(teacher.name, int(dataset["num_classes"]), int(dataset["channels"]),
                       int(dataset["input_size"]), teacher.weights, pretrained)
    return net.to(device).eval().requires_grad_(False)


def save_grid(path: Path, images: torch.Tensor, per_row: int, max_rows: int = 20, max_cols: int = 20) -> None:
    """A PNG preview: uint8 [classes, ipc, C, H, W] as rows = classes (at most 20 x 20 images)."""
    from torchvision.utils import make_grid, save_image

    shown = images[:max_rows, :max_cols]
    grid = make_grid(shown.flatten(0, 1).float() / 255, nrow=min(per_row, max_cols), padding=1, pad_value=1.0)
    save_image(grid, str(path))


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Torch's intra-op CPU threads set to n for the duration (None: unchanged), restored afterwards."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
