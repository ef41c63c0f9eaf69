"""The DataModule of student training: distilled images + the label store, phase by phase.

Each epoch's loader is its phase's (train/phases.py: soft epochs replay stored batches by record id, hard
epochs crop afresh), rebuilt every epoch from the pure schedule, never from a callback.
Pixels come from `data.replay.render`, made where `train.images_on_device` says: in the loader (host), or on
the training device after the batch transfer (`on_after_batch_transfer`, the phase's `render`), the uint8
images uploaded once per rank and the loader yielding only records (ids, geometry, labels) and crop boxes.
The boxes and flips are drawn on the host in both cases, from the same per-item seeded RNG, so the path changes
nothing but where the pixels are made.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from hald import dist
from hald.data.distilled import DistilledImages, release_pages
from hald.data.replay import render_layout
from hald.data.transforms import Transformed, eval_transform
from hald.labels.store import LabelStore
from hald.train.phases import Phase, TrainData, bind_phases
from hald.train.resume import epoch_to_run
from hald.train.schedule import Schedule

log = logging.getLogger(__name__)
ON_DEVICE = ("auto", True, False)


class HALDDataModule(L.LightningDataModule):
    """Built by `hydra.utils.instantiate(cfg.student.datamodule, distilled=..., store=..., ...)`
    (conf/student/default.yaml): the images and the store come opened and checked (labels.store.open_store_for);
    `eval_source` is what validation and test measure (the test split, or for CV-DD priors a held-out part of
    the train split).

    `images_on_device` (train.images_on_device): auto = render on the training device when it is an
    accelerator and the uint8 images take at most `images_on_device_max_gb`; true = always (on CPU too: the
    same code path, tested equal to the loader's); false = in the loader."""

    def __init__(self, distilled: DistilledImages, store: LabelStore, dataset: Mapping[str, Any],
                 schedule: Schedule, phases: Mapping[str, Phase], eval_source: Dataset, seed: int = 0,
                 num_workers: int = 0, eval_batch_size: int = 256, images_on_device: bool | str = "auto",
                 images_on_device_max_gb: float = 4.0):
        super().__init__()
        num_workers = dist.loader_workers(num_workers, "student")
        if images_on_device not in ON_DEVICE:
            raise ValueError(f"train.images_on_device={images_on_device!r}; fix: auto, true or false")
        self.distilled, self.store, self.ds = distilled, store, dict(dataset)
        self.schedule, self.seed, self.num_workers, self.eval_batch_size = schedule, seed, num_workers, eval_batch_size
        self.images_on_device, self.images_on_device_max_gb = images_on_device, float(images_on_device_max_gb)
        self.images = render_layout(distilled.images)  # once: every epoch's datasets share it
        self.data = TrainData(distilled, self.images, store, schedule, int(self.ds["input_size"]),
                              list(self.ds["mean"]), list(self.ds["std"]), len(distilled.classes), seed, num_workers)
        self.phases = bind_phases(phases, self.data)
        self.loader_phase: Phase | None = None  # the phase of the train loader built last
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # uploaded once per device
        self.test_set = Transformed(eval_source, eval_transform(self.ds))

    @property
    def current_epoch(self) -> int:
        """The epoch the loader being built is for (right after a resume too: train/resume.epoch_to_run)."""
        return epoch_to_run(self.trainer)

    @property
    def render_on_device(self) -> bool:
        """Whether pixels are made on the training device after the batch transfer (see the class doc)."""
        if self.images_on_device != "auto":
            return bool(self.images_on_device)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        return device.type != "cpu" and self.images.nbytes <= self.images_on_device_max_gb * 1e9

    # -- loaders ------------------------------------------------------------------------------------------
    def train_dataloader(self, epoch: int | None = None) -> DataLoader:
        epoch = self.current_epoch if epoch is None else epoch
        self.loader_phase = self.phases[self.schedule.phase_at(epoch)]  # renders the batches of this loader
        return self.loader_phase.loader(epoch, render_here=not self.render_on_device)

    # -- rendering on the device ------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if not (isinstance(batch, dict) and "geometry" in batch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        rest = {k: v for k, v in batch.items() if k != "geometry"}
        # The geometry stays on the host: render's per-image loop reads its integers (no device sync).
        return {**super().transfer_batch_to_device(rest, device, dataloader_idx), "geometry": batch["geometry"]}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not (isinstance(batch, dict) and "geometry" in batch):
            return batch  # pixels made in the loader, and every evaluation batch
        images, mean, std = self.device_images(batch["target"].device)
        # Lightning's precision plugin casts a batch's floats before the transfer (true-half precision); the
        # pixels made here did not exist then, so they get the same cast.
        cast = self.trainer.precision_plugin.convert_input if self.trainer is not None else (lambda x: x)
        return cast(self.loader_phase.render(batch, images, mean, std))

    def device_images(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The uint8 images (and mean, std) on `device`, uploaded at the first call (once per rank)."""
        key = str(device)
        if key not in self._on_device:
            log.info("train: %.2f GB of uint8 images uploaded to %s; pixels are rendered there",
                     self.images.nbytes / 1e9, device)
            self._on_device[key] = (self.images.to(device), torch.tensor(self.ds["mean"], device=device),
                                    torch.tensor(self.ds["std"], device=device))
            if device.type != "cpu":  # a copy now lives there: the host's mapped pages need not stay in RSS
                release_pages(self.images)
        return self._on_device[key]

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
