"""The student LightningModule: each epoch's phase (train/phases.py, named by the schedule) computes the loss."""
from __future__ import annotations

import math
from typing import Any, Mapping

import lightning as L
import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from hald import compute
from hald.train.phases import Phase
from hald.train.schedule import Schedule


def cosine_eta(epoch: int, total: int, eta: float) -> float:
    """HALD's per-epoch factor f(e) = 0.5 (1 + cos(pi e / (E eta))); eta=2 ends near 0.5, eta=1 near 0."""
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch, total) / (total * eta)))


def step_factor(epoch: int, total: int, step_size: int | None, gamma: float) -> float:
    """StepLR's factor gamma^(e // step_size); step_size None = total // 2 + 1 (DD-Ranking's earlier copy,
    dd_ranking/utils/train_and_eval.py: its 0.2.0 asserts that a step size is given)."""
    return float(gamma) ** (epoch // int(step_size or total // 2 + 1))


class StudentModule(L.LightningModule):
    def __init__(self, net: nn.Module, num_classes: int, schedule: Schedule, phases: Mapping[str, Phase], lr: float,
                 eta: float = 2.0, weight_decay: float = 0.01, betas=(0.9, 0.999),
                 micro_batch_size: int | None = None, optimizer: str = "adamw", momentum: float = 0.9,
                 lr_schedule: str = "cosine", step_size: int | None = None, gamma: float = 0.1,
                 channels_last: bool = False, compile: bool = False):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "schedule", "phases", "channels_last", "compile"])
        # Layout and compilation change how the arithmetic runs, not what is trained (hald/compute.py)
        self.channels_last = channels_last
        self.net = compute.compiled(compute.channels_last(net, channels_last), compile, "student")
        self.schedule, self.phases = schedule, dict(phases)
        self.epoch_paths: dict[int, set[str]] = {}  # which phase's loss ran in each epoch (audited by tests)
        k = min(5, num_classes)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=k, average="micro")
        self.test_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_top5 = MulticlassAccuracy(num_classes, top_k=k, average="micro")
        self.val_best = MaxMetric()
        self.eval_log: list[dict] = []  # test accuracy at every evaluated epoch (phase ends included)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(compute.as_input(x, self.channels_last))

    @property
    def phase(self) -> str:
        """The name of this epoch's phase: the schedule's, the one place the phase lives."""
        return self.schedule.phase_at(self.current_epoch)

    def micro_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training logits of x, in forwards of `micro_batch_size` images (train.micro_batch_size; None = one).

        CV-DD's validation (validate/train_fkd.py: --gradient-accumulation-steps 2) steps once per batch of 16
        after two backward passes of 8, each loss divided by 2, so the student's BatchNorm normalises over 8.
        Here each micro-batch is its own forward (its own BN statistics and running-stat update) and the loss
        of the concatenated logits is the batch mean: its gradient is the mean of the micro-batches' gradients,
        one optimizer step per loader item. Why inside the step and not Lightning's accumulate_grad_batches: a
        soft batch is one loader item (whole stored batches, their CutMix partners inside them), and
        accumulation over loader items would need the loader to cut stored batches apart and would change what
        a step is for the schedule, the per-step seeds and the gradient probe. No memory is saved (all graphs
        live until backward): the option is about BN statistics, not memory."""
        m = self.hparams.get("micro_batch_size")
        if not m or len(x) <= int(m):
            return self(x)
        return torch.cat([self(part) for part in x.split(int(m))])

    # -- training -----------------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        name = self.phase
        loss, bs = self.phases[name].training_loss(self, batch)  # a phase refuses a batch that is not its own
        self.epoch_paths.setdefault(self.current_epoch, set()).add(name)
        self.log(f"train/loss_{name}", loss, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        if hp.get("optimizer", "adamw") == "sgd":  # DD-Ranking's default: weight decay on every parameter
            opt = torch.optim.SGD(self.net.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:  # weight decay on >=2-D weights only: biases and norm affines are not decayed (timm's grouping)
            groups = param_groups_weight_decay(self.net, weight_decay=hp.weight_decay)
            opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        # Both schedules as a per-epoch LambdaLR: resume realigns it to the epoch (train/resume.StepSeed)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: self.lr_factor(e))  # a lambda: not pickled
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def lr_factor(self, epoch: int) -> float:
        hp, total = self.hparams, self.schedule.total_epochs
        if hp.get("lr_schedule", "cosine") == "step":  # StepLR: x gamma every step_size epochs
            return step_factor(epoch, total, hp.get("step_size"), hp.get("gamma", 0.1))
        return cosine_eta(epoch, total, hp.eta)

    # -- evaluation on the real test split -------------------------------------------------------------------
    def _update(self, batch, top1: MulticlassAccuracy, top5: MulticlassAccuracy) -> None:
        x, y = batch
        # Accuracy is measured in fp32 whatever the training precision (compute.student): the number belongs to
        # the weights, and the exported student evaluated anywhere in fp32 gives it again.
        with torch.autocast(x.device.type, enabled=False):
            logits = self(x.float())
        top1.update(logits, y)
        top5.update(logits, y)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._update(batch, self.val_top1, self.val_top5)

    def on_validation_epoch_end(self) -> None:
        top1, top5 = self.val_top1.compute() * 100, self.val_top5.compute() * 100
        self.val_best.update(top1)
        # compute() already reduced over ranks; sync_dist only tells Lightning the values agree on every rank.
        self.log_dict({"val/top1": top1, "val/top5": top5, "val/top1_best": self.val_best.compute()}, sync_dist=True)
        self.eval_log.append({"epoch": self.current_epoch, "phase": self.phase, "top1": round(float(top1), 2),
                              "top5": round(float(top5), 2)})
        self.val_top1.reset()
        self.val_top5.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        self._update(batch, self.test_top1, self.test_top5)

    def on_test_epoch_end(self) -> None:
        # torchmetrics' compute() reduces over DDP ranks, so every rank reports the global accuracy.
        self.log_dict({"test/top1": self.test_top1.compute() * 100, "test/top5": self.test_top5.compute() * 100},
                      sync_dist=True)
        self.test_top1.reset()
        self.test_top5.reset()
