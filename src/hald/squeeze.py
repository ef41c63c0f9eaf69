"""Squeeze: train a teacher on the real train split with Lightning; return its weights and test accuracy."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from hald.data.sources import build_source
from hald.data.transforms import Transformed, eval_transform, train_transform
from hald.models import build_backbone, save_weights

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


def squeeze(model_name: str, dataset: Mapping[str, Any], cfg: Mapping[str, Any], out_dir: Path,
            trainer_kwargs: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Train one teacher; writes out_dir/teacher.safetensors; returns manifest fields (incl. test top-1)."""
    L.seed_everything(seed, workers=True, verbose=False)
    train = Transformed(build_source(dataset, "train"), train_transform(dataset, tuple(cfg["crop_scale"]),
                                                                        float(cfg["flip_p"])))
    test = Transformed(build_source(dataset, "test"), eval_transform(dataset))
    net = build_backbone(model_name, int(dataset["num_classes"]), int(dataset["channels"]), int(dataset["input_size"]))
    module = TeacherModule(net, int(dataset["num_classes"]), float(cfg["lr"]), float(cfg["weight_decay"]),
                           int(cfg["epochs"]), float(cfg["label_smoothing"]))
    workers = int(cfg["num_workers"])
    trainer = L.Trainer(max_epochs=int(cfg["epochs"]), logger=False, enable_checkpointing=False,
                        enable_model_summary=False, **dict(trainer_kwargs))
    trainer.fit(module, DataLoader(train, batch_size=int(cfg["batch_size"]), shuffle=True, num_workers=workers,
                                   drop_last=True, persistent_workers=workers > 0))
    metrics = trainer.test(module, DataLoader(test, batch_size=512, num_workers=workers), verbose=False)
    top1 = float(metrics[0]["teacher/top1"])
    if trainer.is_global_zero:
        save_weights(net, Path(out_dir) / "teacher.safetensors")
    log.info("squeeze %s: test top-1 %.2f%%", model_name, top1)
    return {"model": model_name, "test_top1": top1, "weights_file": "teacher.safetensors"}
