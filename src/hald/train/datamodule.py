"""The DataModule of student training: distilled images + the label store, phase by phase.

Soft epochs: one DataLoader item = k consecutive stored batches of the epoch's pool (k = soft batch size /
stored batch size), fetched by record id and replayed exactly. Hard epochs: fresh RandomResizedCrop + flip of
the same images (seeded per (seed, epoch, image): a resume repeats them), with class labels (CutMix and label
smoothing happen in the LightningModule, on device).
The train loader is rebuilt every epoch and reads the phase from the pure schedule, never from a callback.
"""
from __future__ import annotations

from typing import Any, Mapping

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from hald.data.distilled import DistilledImages
from hald.data.replay import render
from hald.data.transforms import FixedOrder, Reseeded, Transformed, eval_transform, train_transform
from hald.labels.store import LabelStore, check_soft_batch
from hald.seeding import seed_of
from hald.train.resume import epoch_to_run
from hald.train.schedule import SOFT, Schedule, soft_pool


class SoftReplayDataset(Dataset):
    """Item i = the stored batches `groups[i]`, replayed: {"x", "target", "phase"}."""

    def __init__(self, store: LabelStore, images: torch.Tensor, groups: list[list[int]], out_size: int, mean, std):
        self.store, self.images, self.groups, self.out_size = store, images, groups, out_size
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict[str, Any]:
        xs, ts, ids = [], [], []
        for r in self.groups[i]:
            rec = self.store[r]
            xs.append(render(self.images, rec.geometry, self.out_size, self.mean, self.std))
            ts.append(rec.labels)
            ids.append(rec.geometry.index)
        return {"x": torch.cat(xs), "target": torch.cat(ts), "index": torch.cat(ids), "phase": SOFT,
                "records": torch.tensor(self.groups[i])}


class HardCropDataset(Dataset):
    """Distilled image i with a fresh RandomResizedCrop + flip, and its class label."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, ds: Mapping[str, Any],
                 scale=(0.08, 1.0), flip_p: float = 0.5):
        self.images, self.targets = images, targets
        self.transform = train_transform(ds, scale, flip_p)

    def __len__(self) -> int:
        return int(self.targets.numel())

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.targets[i])


class HALDDataModule(L.LightningDataModule):
    """Built by `hydra.utils.instantiate(cfg.student.datamodule, distilled=..., store=..., ...)`
    (conf/student/default.yaml): the images and the store come opened and checked (labels.store.open_store_for);
    `eval_source` is what validation and test measure (the test split, or for CV-DD priors a held-out part of
    the train split)."""

    def __init__(self, distilled: DistilledImages, store: LabelStore, dataset: Mapping[str, Any],
                 schedule: Schedule, eval_source: Dataset, soft_batch_size: int, hard_batch_size: int,
                 seed: int = 0, num_workers: int = 0, eval_batch_size: int = 256, hard_crop_scale=(0.08, 1.0),
                 hard_flip_p: float = 0.5):
        super().__init__()
        check_soft_batch(soft_batch_size, store.batch_size)
        self.distilled, self.store, self.ds = distilled, store, dict(dataset)
        self.schedule, self.seed, self.num_workers = schedule, seed, num_workers
        self.soft_batch_size, self.hard_batch_size, self.eval_batch_size = soft_batch_size, hard_batch_size, eval_batch_size
        self.hard_crop_scale, self.hard_flip_p = tuple(hard_crop_scale), hard_flip_p
        self.test_set = Transformed(eval_source, eval_transform(self.ds))

    @property
    def current_epoch(self) -> int:
        """The epoch the loader being built is for (right after a resume too: train/resume.epoch_to_run)."""
        return epoch_to_run(self.trainer)

    # -- loaders ------------------------------------------------------------------------------------------
    def train_dataloader(self, epoch: int | None = None) -> DataLoader:
        epoch = self.current_epoch if epoch is None else epoch
        if self.schedule.phase_at(epoch) == SOFT:
            return DataLoader(self.soft_dataset(epoch), batch_size=None, shuffle=False,
                              num_workers=self.num_workers)
        hard = HardCropDataset(self.distilled.images, self.distilled.targets, self.ds, self.hard_crop_scale,
                               self.hard_flip_p)
        hard = Reseeded(hard, self.seed, epoch)  # fresh crops each epoch, a pure function of (seed, epoch, i)
        return DataLoader(hard, batch_size=self.hard_batch_size, num_workers=self.num_workers,
                          sampler=FixedOrder(len(hard), seed_of(self.seed, epoch)))

    def soft_dataset(self, epoch: int) -> SoftReplayDataset:
        ids = soft_pool(self.schedule, epoch, self.store.passes, self.store.batches_per_pass, self.seed)
        k = self.soft_batch_size // self.store.batch_size
        groups = [ids[i:i + k] for i in range(0, len(ids), k)]
        return SoftReplayDataset(self.store, self.distilled.images, groups, self.ds["input_size"],
                                 self.ds["mean"], self.ds["std"])

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
