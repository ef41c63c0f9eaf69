"""Squeeze: train a teacher on the real train split with Lightning; return its weights and test accuracy.

Resumable: Lightning's last checkpoint is kept in a stable work dir (`<cache>/squeeze/.partial-<key>/`,
written atomically every epoch), so a killed squeeze continues from its last finished epoch. Every epoch's
data is a pure function of (seed, epoch): the shuffle is seeded per epoch and every crop per (seed, epoch,
image), and each step's RNG per (seed, epoch, step, rank), so the resumed teacher equals the uninterrupted
one. Under DDP (`trainer=ddp`) the ranks train data-parallel; `batch_size` stays the global batch.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from hald.data.sources import build_source
from hald.data.transforms import FixedOrder, Reseeded, Transformed, eval_transform, train_transform
from hald.models import build_backbone, save_weights
from hald.seeding import seed_of
from hald.train.resume import FiniteLoss, LastCheckpoint, StepSeed, epoch_to_run

log = logging.getLogger(__name__)


class TeacherModule(L.LightningModule):
    def __init__(self, net: torch.nn.Module, num_classes: int, lr: float, weight_decay: float, epochs: int,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y, label_smoothing=self.hparams.label_smoothing)
        self.log("squeeze/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.top1.update(self.net(x), y)

    def on_test_epoch_end(self) -> None:
        self.log("teacher/top1", self.top1.compute() * 100)
        self.top1.reset()

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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
            trainer_kwargs: Mapping[str, Any], seed: int, work_dir: Path | None = None) -> dict[str, Any]:
    """Train one teacher; writes out_dir/teacher.safetensors; returns manifest fields (incl. test top-1).

    work_dir: where the last checkpoint is kept between runs (resume); None = inside out_dir (no resume)."""
    L.seed_everything(seed, workers=True, verbose=False)
    train = Transformed(build_source(dataset, "train"), train_transform(dataset, tuple(cfg["crop_scale"]),
                                                                        float(cfg["flip_p"])))
    test = Transformed(build_source(dataset, "test"), eval_transform(dataset))
    net = build_backbone(model_name, int(dataset["num_classes"]), int(dataset["channels"]), int(dataset["input_size"]))
    module = TeacherModule(net, int(dataset["num_classes"]), float(cfg["lr"]), float(cfg["weight_decay"]),
                           int(cfg["epochs"]), float(cfg["label_smoothing"]))
    workers = int(cfg["num_workers"])
    work = Path(work_dir) if work_dir is not None else Path(out_dir) / ".work"
    ckpt = LastCheckpoint(work / "last.ckpt")
    kwargs = dict(trainer_kwargs)
    world = int(kwargs.get("devices", 1)) * int(kwargs.get("num_nodes", 1)) if kwargs.get("strategy") == "ddp" else 1
    trainer = L.Trainer(max_epochs=int(cfg["epochs"]), logger=False, enable_model_summary=False,
                        reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0,
                        callbacks=[ckpt, StepSeed(seed), FiniteLoss("teacher", "lower teacher.squeeze.lr")], **kwargs)
    resume = (work / "last.ckpt").is_file()
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
