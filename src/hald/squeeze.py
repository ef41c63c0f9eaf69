"""Squeeze: train a teacher on the real train split with Lightning; return its weights and test accuracy.

Resumable: Lightning's last checkpoint is kept in a stable work dir (`<cache>/squeeze/.partial-<key>/`,
written atomically every epoch), so a killed squeeze continues from its last finished epoch. Every epoch's
data is a pure function of (seed, epoch): the shuffle is seeded per epoch and every crop per (seed, epoch,
image), and each step's RNG per (seed, epoch, step, rank), so the resumed teacher equals the uninterrupted
one. Under DDP (`trainer=ddp`) the ranks train data-parallel; `batch_size` stays the global batch.

Recipe (`teacher.squeeze`; keys absent from a config take the first value, the project's own recipe):
- `optimizer`: adamw | sgd (`momentum`, `nesterov`) | adam (L2 weight decay, CV-DD's CIFAR recipe);
  weight decay on every parameter, as in SRe2L's and CV-DD's squeeze code;
- `schedule`: onecycle (per step) | cosine (per epoch, to 0, after `warmup_epochs` of linear warm-up from
  `warmup_decay` x lr: torchvision's reference recipe that SRe2L's Tiny teacher used);
- `augment`: rrc (RandomResizedCrop(`crop_scale`) + flip) | crop (RandomCrop with `pad` px of zero padding +
  flip, CV-DD's squeeze).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from hald import compute, dist
from hald.console import progress_callbacks
from hald.data.sources import build_source
from hald.data.transforms import (FixedOrder, Reseeded, Transformed, eval_transform, pad_crop_transform,
                                  train_transform)
from hald.models import build_backbone, save_weights
from hald.seeding import seed_of
from hald.train.resume import FiniteLoss, LastCheckpoint, StepSeed, epoch_to_run, usable_checkpoint

log = logging.getLogger(__name__)


class TeacherModule(L.LightningModule):
    def __init__(self, net: torch.nn.Module, num_classes: int, lr: float, weight_decay: float, epochs: int,
                 label_smoothing: float = 0.0, recipe: Mapping[str, Any] | None = None, channels_last: bool = False,
                 compile: bool = False):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "channels_last", "compile"])
        self.channels_last = channels_last  # layout and compilation: how it runs, not what (hald/compute.py)
        self.net = compute.compiled(compute.channels_last(net, channels_last), compile, "squeeze")
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(compute.as_input(x, self.channels_last)), y, label_smoothing=self.hparams.label_smoothing)
        self.log("squeeze/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.top1.update(self.net(compute.as_input(x, self.channels_last)), y)

    def on_test_epoch_end(self) -> None:
        self.log("teacher/top1", self.top1.compute() * 100)
        self.top1.reset()

    def configure_optimizers(self):
        hp = self.hparams
        r = dict(hp.recipe or {})
        opt = teacher_optimizer(self.net.parameters(), r, hp.lr, hp.weight_decay)
        if r.get("schedule", "onecycle") == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr,
                                                        total_steps=self.trainer.estimated_stepping_batches)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        warm, decay = int(r.get("warmup_epochs", 0)), float(r.get("warmup_decay", 0.01))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: warmup_cosine(e, int(hp.epochs), warm, decay))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


OPTIMIZERS, SCHEDULES, AUGMENTS = ("adamw", "sgd", "adam"), ("onecycle", "cosine"), ("rrc", "crop")


def check_recipe(cfg: Mapping[str, Any]) -> None:
    for key, allowed, default in (("optimizer", OPTIMIZERS, "adamw"), ("schedule", SCHEDULES, "onecycle"),
                                  ("augment", AUGMENTS, "rrc")):
        if cfg.get(key, default) not in allowed:
            raise ValueError(f"teacher.squeeze.{key}={cfg.get(key)}; fix: one of {list(allowed)}")


def teacher_optimizer(params, recipe: Mapping[str, Any], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    name = recipe.get("optimizer", "adamw")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(recipe.get("momentum", 0.9)),
                               nesterov=bool(recipe.get("nesterov", False)), weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def warmup_cosine(epoch: int, epochs: int, warmup: int = 0, decay: float = 0.01) -> float:
    """The lr factor of epoch e: linear from `decay` to 1 over `warmup` epochs (torch LinearLR), then cosine
    to 0 over the rest (CosineAnnealingLR, T_max = epochs - warmup), both stepped per epoch."""
    if epoch < warmup:
        return decay + (1.0 - decay) * epoch / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))


def teacher_train_transform(dataset: Mapping[str, Any], cfg: Mapping[str, Any]):
    if cfg.get("augment", "rrc") == "crop":
        return pad_crop_transform(dataset, int(cfg.get("pad", 4)), float(cfg["flip_p"]))
    return train_transform(dataset, tuple(cfg["crop_scale"]), float(cfg["flip_p"]))


class EpochData(L.LightningDataModule):
    """The train loader, rebuilt every epoch from (seed, epoch) alone (nothing to restore on resume)."""

    def __init__(self, train: Dataset, batch_size: int, num_workers: int, seed: int):
        super().__init__()
        self.train, self.batch_size, self.num_workers, self.seed = train, batch_size, num_workers, seed

    def train_dataloader(self) -> DataLoader:
        epoch = epoch_to_run(self.trainer)
        data = Reseeded(self.train, self.seed, epoch)
        return DataLoader(data, batch_size=self.batch_size, sampler=FixedOrder(len(data), seed_of(self.seed, epoch)),
                          num_workers=self.num_workers, drop_last=True)


def squeeze(model_name: str, dataset: Mapping[str, Any], cfg: Mapping[str, Any], out_dir: Path,
            trainer_kwargs: Mapping[str, Any], seed: int, work_dir: Path | None = None,
            channels_last: bool = False, compile: bool = False) -> dict[str, Any]:
    """Train one teacher; writes out_dir/teacher.safetensors; returns manifest fields (incl. test top-1).

    work_dir: where the last checkpoint is kept between runs (resume); None = inside out_dir (no resume)."""
    L.seed_everything(seed, workers=True, verbose=False)
    check_recipe(cfg)
    train = Transformed(build_source(dataset, "train"), teacher_train_transform(dataset, cfg))
    test = Transformed(build_source(dataset, "test"), eval_transform(dataset))
    net = build_backbone(model_name, int(dataset["num_classes"]), int(dataset["channels"]), int(dataset["input_size"]))
    module = TeacherModule(net, int(dataset["num_classes"]), float(cfg["lr"]), float(cfg["weight_decay"]),
                           int(cfg["epochs"]), float(cfg["label_smoothing"]),
                           {k: cfg[k] for k in ("optimizer", "momentum", "nesterov", "schedule", "warmup_epochs",
                                                "warmup_decay") if k in cfg}, channels_last, compile)
    workers = dist.loader_workers(int(cfg["num_workers"]), f"squeeze {model_name}")
    work = Path(work_dir) if work_dir is not None else Path(out_dir) / ".work"
    ckpt = LastCheckpoint(work / "last.ckpt")
    kwargs = dict(trainer_kwargs)
    world = int(kwargs.get("devices", 1)) * int(kwargs.get("num_nodes", 1)) if kwargs.get("strategy") == "ddp" else 1
    steps = cfg.get("max_steps")  # make rehearse: a step or two of the real recipe; None = every epoch
    trainer = L.Trainer(max_epochs=int(cfg["epochs"]), max_steps=-1 if steps is None else int(steps),
                        logger=False, enable_model_summary=False,
                        reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0,
                        callbacks=[ckpt, StepSeed(seed), FiniteLoss("teacher", "lower teacher.squeeze.lr"),
                                   *progress_callbacks(kwargs.get("enable_progress_bar", True), f"squeeze {model_name}")],
                        **kwargs)
    resume = usable_checkpoint(work / "last.ckpt")[0] is not None
    if resume:
        log.info("squeeze %s: resuming from %s", model_name, work / "last.ckpt")
    trainer.fit(module, datamodule=EpochData(train, int(cfg["batch_size"]) // world, workers, seed),
                ckpt_path=str(work / "last.ckpt") if resume else None)
    metrics = trainer.test(module, DataLoader(test, batch_size=512, num_workers=workers), verbose=False)
    top1 = float(metrics[0]["teacher/top1"])
    if trainer.is_global_zero:
        save_weights(net, Path(out_dir) / "teacher.safetensors")
    if work_dir is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    log.info("squeeze %s: test top-1 %.2f%%", model_name, top1)
    return {"model": model_name, "test_top1": top1, "weights_file": "teacher.safetensors", "resumed": resume}
