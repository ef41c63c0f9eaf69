"""Phase kinds: what one kind of training epoch feeds the student and what it minimises.

A phase owns its loader (built fresh every epoch by the DataModule), where its pixels are made (in the loader,
or on the training device after the batch transfer), and its loss (injected from config: `student.phases`
in conf/student/default.yaml, each a `_target_` with its loss as another `_target_`). The schedule names
which phase each epoch is (`Schedule.phase_at`); the DataModule and the LightningModule ask it and delegate,
so the phase lives in one place.

- `SoftReplay`: stored batches of the label store, replayed exactly (data/replay.render), against the
  teacher's stored soft labels (default loss: KL at the labels' T).
- `HardCrops`: fresh RandomResizedCrop + flip of the distilled images (seeded per (seed, epoch, image), so a
  resume repeats them), class labels CutMixed on the device and smoothed (HALD's hard phase; CE).

A new kind subclasses `Phase` (a file of your own, listed in `plugins`) and is named in `student.phases`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from hald.data.distilled import DistilledImages
from hald.data.replay import Geometry, draw_crop, render
from hald.data.transforms import FixedOrder, Reseeded
from hald.evaluate.gradsim import replayed_hard_targets
from hald.labels.store import LabelStore, check_soft_batch
from hald.seeding import seed_of
from hald.train.losses import cutmix_smoothed_targets
from hald.train.schedule import Schedule, soft_pool

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, target) -> scalar


@dataclass
class TrainData:
    """What every phase's loader may read: the distilled images (uint8, render layout), their class labels,
    the label store, the dataset's size and normalisation, the schedule and the run's seed."""
    distilled: DistilledImages
    images: torch.Tensor
    store: LabelStore
    schedule: Schedule
    input_size: int
    mean: Sequence[float]
    std: Sequence[float]
    num_classes: int
    seed: int = 0
    num_workers: int = 0

    @property
    def targets(self) -> torch.Tensor:
        return self.distilled.targets


class Phase:
    """The base of a phase kind. `stored_labels`: whether its batches are stored records (the gradient probe
    and the `train/phase` curve read it)."""
    stored_labels = False

    def __init__(self, loss: Loss):
        self.loss = loss
        self.name = ""

    def bind(self, name: str, data: TrainData) -> None:
        """Called once before training: the phase's key in `student.phases` and the run's data (checks go here)."""
        self.name, self.data = name, data

    def loader(self, epoch: int, render_here: bool) -> DataLoader:
        """The train loader of `epoch`; with render_here=False its items carry "geometry" instead of pixels."""
        raise NotImplementedError

    def render(self, batch: dict[str, Any], images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> Any:
        """Pixels of a batch that came without them (rendering on the device): the batch the loss takes."""
        raise NotImplementedError

    def training_loss(self, module, batch: Any) -> tuple[torch.Tensor, int]:
        """(loss, batch size) of one training batch; `module.micro_forward` gives the student's logits."""
        raise NotImplementedError

    def record_loss(self, batch: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        """This phase's loss on a replayed stored batch (the gradient probe's pair of losses)."""
        raise NotImplementedError(f"phase {self.name!r} has no loss on stored batches")


def _wrong_batch(phase: Phase, expected: str, module) -> RuntimeError:
    return RuntimeError(f"phase {phase.name!r} got a batch that is not {expected} in epoch {module.current_epoch}: "
                        f"the loader and the schedule disagree")


# -- soft: stored batches replayed ---------------------------------------------------------------------------------
def render_records(images: torch.Tensor, geometries: Sequence[Geometry], out_size: int, mean, std) -> torch.Tensor:
    """The pixels of consecutive stored batches, concatenated (one soft batch; one stored batch as rendered:
    `torch.cat` would copy it)."""
    parts = [render(images, g, out_size, mean, std) for g in geometries]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class SoftReplayDataset(Dataset):
    """Item i = the stored batches `groups[i]`, replayed: {"x", "target", "index", "records"}.
    With render_here=False the item has the records' "geometry" instead of "x": the pixels are made on the
    device (SoftReplay.render)."""

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
                "records": torch.tensor(self.groups[i])}
        if not self.render_here:
            return {**item, "geometry": geometry}
        return {"x": render_records(self.images, geometry, self.out_size, self.mean, self.std), **item}


class SoftReplay(Phase):
    """Soft epochs: one loader item = k consecutive stored batches of the epoch's pool (k = batch_size / the
    store's batch size), fetched by record id; which batches an epoch replays is `schedule.pool`'s rule
    (train/schedule.soft_pool)."""
    stored_labels = True

    def __init__(self, loss: Loss, batch_size: int):
        super().__init__(loss)
        self.batch_size = int(batch_size)

    def bind(self, name: str, data: TrainData) -> None:
        check_soft_batch(self.batch_size, data.store.batch_size)
        super().bind(name, data)

    def dataset(self, epoch: int, render_here: bool = True) -> SoftReplayDataset:
        d = self.data
        ids = soft_pool(d.schedule, epoch, d.store.passes, d.store.batches_per_pass, d.seed, phase=self.name)
        k = self.batch_size // d.store.batch_size
        groups = [ids[i:i + k] for i in range(0, len(ids), k)]
        return SoftReplayDataset(d.store, d.images, groups, d.input_size, d.mean, d.std, render_here=render_here)

    def loader(self, epoch: int, render_here: bool) -> DataLoader:
        return DataLoader(self.dataset(epoch, render_here), batch_size=None, shuffle=False,
                          num_workers=self.data.num_workers)

    def render(self, batch, images, mean, std):
        rest = {k: v for k, v in batch.items() if k != "geometry"}
        return {"x": render_records(images, batch["geometry"], self.data.input_size, mean, std), **rest}

    def training_loss(self, module, batch):
        if not isinstance(batch, dict) or "target" not in batch:
            raise _wrong_batch(self, "a replayed stored batch", module)
        return self.loss(module.micro_forward(batch["x"]), batch["target"]), int(batch["x"].shape[0])

    def record_loss(self, batch):
        return lambda logits: self.loss(logits, batch["target"])


# -- hard: fresh crops, class labels ------------------------------------------------------------------------------
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
    {"geometry", "target"} for the device. No CutMix here (mix_box empty): the phase draws it on the device."""

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
            return {"geometry": g, "target": y}
        return render(self.images, g, self.out_size, self.mean, self.std), y


class HardCrops(Phase):
    """Hard epochs: fresh crops of the images with their class labels; CutMix (alpha) and label smoothing
    (eps) on the device, t = (1 - eps) * mixed onehot + eps / C, then the injected loss (default: CE)."""

    def __init__(self, loss: Loss, batch_size: int, crop_scale: Sequence[float] = (0.08, 1.0), flip_p: float = 0.5,
                 cutmix_alpha: float = 1.0, label_smoothing: float = 0.8):
        super().__init__(loss)
        self.batch_size, self.crop_scale, self.flip_p = int(batch_size), tuple(crop_scale), float(flip_p)
        self.cutmix_alpha, self.label_smoothing = float(cutmix_alpha), float(label_smoothing)

    def loader(self, epoch: int, render_here: bool) -> DataLoader:
        d = self.data
        hard = HardCropDataset(d.images, d.targets, self.crop_scale, self.flip_p)
        hard = Reseeded(hard, d.seed, epoch)  # fresh crops each epoch, a pure function of (seed, epoch, i)
        collate = HardBatch(d.images, d.input_size, d.mean, d.std, render_here=render_here)
        return DataLoader(hard, batch_size=self.batch_size, num_workers=d.num_workers,
                          sampler=FixedOrder(len(hard), seed_of(d.seed, epoch)), collate_fn=collate)

    def render(self, batch, images, mean, std):
        return render(images, batch["geometry"], self.data.input_size, mean, std), batch["target"]

    def training_loss(self, module, batch):
        if not isinstance(batch, (tuple, list)):
            raise _wrong_batch(self, "a batch of crops and class labels", module)
        x, y = batch
        x, t = cutmix_smoothed_targets(x, y, self.data.num_classes, self.cutmix_alpha, self.label_smoothing)
        return self.loss(module.micro_forward(x), t), int(x.shape[0])

    def record_loss(self, batch):
        """The hard target of a stored batch: its class labels CutMixed with the record's own box and
        partners, then smoothed (evaluate/gradsim.replayed_hard_targets)."""
        d = self.data
        geometries = [d.store[int(r)].geometry for r in batch["records"]]
        hard = replayed_hard_targets(d.targets[batch["index"].cpu()], geometries, d.num_classes,
                                     self.label_smoothing, d.input_size).to(batch["x"].device)
        return lambda logits: self.loss(logits, hard)


def bind_phases(phases: Mapping[str, Phase], data: TrainData) -> dict[str, Phase]:
    """Every phase of `student.phases`, bound to the run's data; a schedule may only name these."""
    for name, phase in phases.items():
        if not isinstance(phase, Phase):
            raise TypeError(f"student.phases.{name} is a {type(phase).__name__}, not a hald.train.phases.Phase")
        phase.bind(name, data)
    unknown = {p for p, _ in data.schedule.segments} - set(phases)
    if unknown:
        raise ValueError(f"the schedule names phase(s) {sorted(unknown)} that student.phases does not define "
                         f"(it has {sorted(phases)})")
    return dict(phases)


def standard_phases(soft_batch_size: int, hard_batch_size: int, temperature: float = 20.0, t2: bool = True,
                    hard_temperature: float = 1.0, crop_scale: Sequence[float] = (0.08, 1.0), flip_p: float = 0.5,
                    cutmix_alpha: float = 1.0, label_smoothing: float = 0.8) -> dict[str, Phase]:
    """HALD's two phases built in code (benchmarks, tests); a run builds them from conf/student."""
    from hald.train.losses import SoftKL, SoftTargetCE

    return {"soft": SoftReplay(SoftKL(temperature, t2), soft_batch_size),
            "hard": HardCrops(SoftTargetCE(hard_temperature, t2), hard_batch_size, crop_scale, flip_p, cutmix_alpha,
                              label_smoothing)}
