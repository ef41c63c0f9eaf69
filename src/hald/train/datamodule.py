"""The DataModule of student training: distilled images + the label store, phase by phase.

Soft epochs: one DataLoader item = k consecutive stored batches of the epoch's pool (k = soft batch size /
stored batch size), fetched by record id and replayed exactly. Hard epochs: fresh RandomResizedCrop + flip of
the same images (seeded per (seed, epoch, image): a resume repeats them), with class labels (CutMix and label
smoothing happen in the LightningModule, on device).
Pixels come from `data.replay.render` in both phases, made where `train.images_on_device` says: in the loader
(host), or on the training device after the batch transfer (`on_after_batch_transfer`), the uint8 images
uploaded once per rank and the loader yielding only records (ids, geometry, labels) and hard-crop boxes. The
boxes and flips are drawn on the host in both cases, from the same per-item seeded RNG, so the path changes
nothing but where the pixels are made.
The train loader is rebuilt every epoch and reads the phase from the pure schedule, never from a callback.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from hald.data.distilled import DistilledImages
from hald.data.replay import Geometry, draw_crop, render, render_layout
from hald.data.transforms import FixedOrder, Reseeded, Transformed, eval_transform
from hald.labels.store import LabelStore, check_soft_batch
from hald.seeding import seed_of
from hald.train.resume import epoch_to_run
from hald.train.schedule import HARD, SOFT, Schedule, soft_pool

log = logging.getLogger(__name__)
ON_DEVICE = ("auto", True, False)


def render_records(images: torch.Tensor, geometries: Sequence[Geometry], out_size: int, mean, std) -> torch.Tensor:
    """The pixels of consecutive stored batches, concatenated (one soft batch)."""
    return torch.cat([render(images, g, out_size, mean, std) for g in geometries])


class SoftReplayDataset(Dataset):
    """Item i = the stored batches `groups[i]`, replayed: {"x", "target", "index", "phase", "records"}.
    With render_here=False the item has the records' "geometry" instead of "x": the pixels are made on the
    device (HALDDataModule.on_after_batch_transfer)."""

    def __init__(self, store: LabelStore, images: torch.Tensor, groups: list[list[int]], out_size: int, mean, std,
                 render_here: bool = True):
        self.store, self.images, self.groups, self.out_size = store, images, groups, out_size
        self.mean, self.std, self.render_here = torch.tensor(mean), torch.tensor(std), render_here

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict[str, Any]:
        recs = [self.store[r] for r in self.groups[i]]
        geometry = [rec.geometry for rec in recs]
        item = {"target": torch.cat([rec.labels for rec in recs]), "index": torch.cat([g.index for g in geometry]),
                "phase": SOFT, "records": torch.tensor(self.groups[i])}
        if not self.render_here:
            return {**item, "geometry": geometry}
        return {"x": render_records(self.images, geometry, self.out_size, self.mean, self.std), **item}


class HardCropDataset(Dataset):
    """Distilled image i with a fresh RandomResizedCrop box and flip, and its class label: (i, box, flip, y).
    The box is drawn here (under the caller's per-item seed, data.transforms.Reseeded); the pixels are made
    for the whole batch by `HardBatch`, in the loader or on the device."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, scale=(0.08, 1.0), flip_p: float = 0.5):
        self.hw, self.targets = (int(images.shape[2]), int(images.shape[3])), targets
        self.scale, self.flip_p = tuple(scale), float(flip_p)

    def __len__(self) -> int:
        return int(self.targets.numel())

    def __getitem__(self, i: int) -> tuple[int, list[int], bool, int]:
        box, flip = draw_crop(self.hw, self.scale, flip_p=self.flip_p)
        return i, box, flip, int(self.targets[i])


class HardBatch:
    """Collate of the hard loader: HardCropDataset items -> (x, y) rendered here, or, with render_here=False,
    {"geometry", "target", "phase"} for the device. No CutMix here (mix_box empty): the module draws it."""

    def __init__(self, images: torch.Tensor, out_size: int, mean, std, render_here: bool = True):
        self.images, self.out_size, self.render_here = images, out_size, render_here
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, items: list[tuple[int, list[int], bool, int]]):
        idx, boxes, flips, ys = zip(*items)
        b = len(idx)
        g = Geometry(index=torch.tensor(idx), box=torch.tensor(boxes, dtype=torch.int16), flip=torch.tensor(flips),
                     mix_perm=torch.arange(b, dtype=torch.int16), mix_box=torch.zeros(4, dtype=torch.int16))
        y = torch.tensor(ys)
        if not self.render_here:
            return {"geometry": g, "target": y, "phase": HARD}
        return render(self.images, g, self.out_size, self.mean, self.std), y


class HALDDataModule(L.LightningDataModule):
    """Built by `hydra.utils.instantiate(cfg.student.datamodule, distilled=..., store=..., ...)`
    (conf/student/default.yaml): the images and the store come opened and checked (labels.store.open_store_for);
    `eval_source` is what validation and test measure (the test split, or for CV-DD priors a held-out part of
    the train split).

    `images_on_device` (train.images_on_device): auto = render on the training device when it is an
    accelerator and the uint8 images take at most `images_on_device_max_gb`; true = always (on CPU too: the
    same code path, tested equal to the loader's); false = in the loader."""

    def __init__(self, distilled: DistilledImages, store: LabelStore, dataset: Mapping[str, Any],
                 schedule: Schedule, eval_source: Dataset, soft_batch_size: int, hard_batch_size: int,
                 seed: int = 0, num_workers: int = 0, eval_batch_size: int = 256, hard_crop_scale=(0.08, 1.0),
                 hard_flip_p: float = 0.5, images_on_device: bool | str = "auto",
                 images_on_device_max_gb: float = 4.0):
        super().__init__()
        check_soft_batch(soft_batch_size, store.batch_size)
        if images_on_device not in ON_DEVICE:
            raise ValueError(f"train.images_on_device={images_on_device!r}; fix: auto, true or false")
        self.distilled, self.store, self.ds = distilled, store, dict(dataset)
        self.schedule, self.seed, self.num_workers = schedule, seed, num_workers
        self.soft_batch_size, self.hard_batch_size, self.eval_batch_size = soft_batch_size, hard_batch_size, eval_batch_size
        self.hard_crop_scale, self.hard_flip_p = tuple(hard_crop_scale), hard_flip_p
        self.images_on_device, self.images_on_device_max_gb = images_on_device, float(images_on_device_max_gb)
        self.images = render_layout(distilled.images)  # once: every epoch's datasets share it
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
        if self.schedule.phase_at(epoch) == SOFT:
            return DataLoader(self.soft_dataset(epoch), batch_size=None, shuffle=False,
                              num_workers=self.num_workers)
        hard = HardCropDataset(self.images, self.distilled.targets, self.hard_crop_scale, self.hard_flip_p)
        hard = Reseeded(hard, self.seed, epoch)  # fresh crops each epoch, a pure function of (seed, epoch, i)
        collate = HardBatch(self.images, self.ds["input_size"], self.ds["mean"], self.ds["std"],
                            render_here=not self.render_on_device)
        return DataLoader(hard, batch_size=self.hard_batch_size, num_workers=self.num_workers,
                          sampler=FixedOrder(len(hard), seed_of(self.seed, epoch)), collate_fn=collate)

    def soft_dataset(self, epoch: int) -> SoftReplayDataset:
        ids = soft_pool(self.schedule, epoch, self.store.passes, self.store.batches_per_pass, self.seed)
        k = self.soft_batch_size // self.store.batch_size
        groups = [ids[i:i + k] for i in range(0, len(ids), k)]
        return SoftReplayDataset(self.store, self.images, groups, self.ds["input_size"], self.ds["mean"],
                                 self.ds["std"], render_here=not self.render_on_device)

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
        rest = {k: v for k, v in batch.items() if k != "geometry"}
        size = int(self.ds["input_size"])
        # Lightning's precision plugin casts a batch's floats before the transfer (true-half precision); the
        # pixels made here did not exist then, so they get the same cast.
        cast = self.trainer.precision_plugin.convert_input if self.trainer is not None else (lambda x: x)
        if batch["phase"] == SOFT:
            return {"x": cast(render_records(images, batch["geometry"], size, mean, std)), **rest}
        return cast(render(images, batch["geometry"], size, mean, std)), rest["target"]

    def device_images(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The uint8 images (and mean, std) on `device`, uploaded at the first call (once per rank)."""
        key = str(device)
        if key not in self._on_device:
            log.info("train: %.2f GB of uint8 images uploaded to %s; pixels are rendered there",
                     self.images.nbytes / 1e9, device)
            self._on_device[key] = (self.images.to(device), torch.tensor(self.ds["mean"], device=device),
                                    torch.tensor(self.ds["std"], device=device))
        return self._on_device[key]

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
