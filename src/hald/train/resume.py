"""What makes a killed training run resumable to the same result, and a diverged one stop cleanly.

- `StepSeed`: the global RNG (CutMix boxes and lambdas, dropout) is seeded before every training step from
  (seed, epoch, batch index, rank). Together with data that is a pure function of the epoch (the soft pool
  order, `data.transforms.Reseeded` crops, per-epoch shuffles), a run resumed from an end-of-epoch
  checkpoint repeats exactly what the uninterrupted run did; nothing depends on RNG state that Lightning's
  checkpoint does not hold.
- `LastCheckpoint`: `last.ckpt` after every N epochs and after the final one, written atomically (Lightning
  saves through an fsspec transaction: a kill leaves the previous checkpoint or the new one, never half).
- `RunState`: the student's bookkeeping (accuracy at every evaluated epoch, the per-epoch phase audit, the
  best validation accuracy) travels in the checkpoint, so results.json after a resume is complete.
- `FiniteLoss`: a NaN or infinite loss on any rank stops training with a one-line cause and fix; the last
  checkpoint (written before the bad step) stays valid.
"""
from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from hald.errors import DivergedError
from hald.seeding import seed_of

log = logging.getLogger(__name__)
STATE_KEY = "hald_run_state"


def epoch_to_run(trainer: L.Trainer | None) -> int:
    """The epoch a train loader being built now is for. `trainer.current_epoch` counts completed epochs, and
    when Lightning resumes from an end-of-epoch checkpoint it builds the first loader before counting the
    saved epoch as completed, so current_epoch is one behind there; the processed count is right always."""
    if trainer is None:
        return 0
    return int(trainer.fit_loop.epoch_progress.current.processed)


class StepSeed(L.Callback):
    """Also realigns per-epoch LambdaLR schedules to the epoch at every epoch start: Lightning resuming from an
    end-of-epoch checkpoint skips that epoch's scheduler step (the state was saved before it), which would
    shift the learning rate by one epoch after a resume."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            if config.interval == "epoch" and isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                sched.last_epoch = epoch
                for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                    group["lr"] = base * fn(epoch)
                sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        torch.manual_seed(seed_of(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))


class LastCheckpoint(Checkpoint):
    """A `Checkpoint` subclass: Lightning calls it at epoch end after the other callbacks and after the epoch is
    counted as processed (like ModelCheckpoint), so a resume completes that epoch's end (the per-epoch lr step)
    instead of skipping it."""

    def __init__(self, path, every: int = 1):
        self.path, self.every = str(path), max(1, int(every))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every == 0 or epoch + 1 >= (trainer.max_epochs or 0):
            trainer.save_checkpoint(self.path)  # every rank calls it; rank 0 writes


class RunState(L.Callback):
    """Saves and restores `eval_log`, `epoch_paths` and `val_best` of the module (plain types only: the
    checkpoint loads with torch's weights_only=True)."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        best = pl_module.val_best.compute() if pl_module.eval_log else None
        checkpoint[STATE_KEY] = {
            "eval_log": [dict(e) for e in pl_module.eval_log],
            "epoch_paths": {int(e): sorted(p) for e, p in pl_module.epoch_paths.items()},
            "val_best": None if best is None else float(best),
        }
        log.info("checkpoint after epoch %d", trainer.current_epoch)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None:
            return
        pl_module.eval_log[:] = [dict(e) for e in state["eval_log"]]
        pl_module.epoch_paths.clear()
        pl_module.epoch_paths.update({int(e): set(p) for e, p in state["epoch_paths"].items()})
        pl_module.val_best.reset()
        if state["val_best"] is not None:
            pl_module.val_best.update(torch.tensor(state["val_best"]))


class FiniteLoss(L.Callback):
    def __init__(self, what: str = "student", fix: str = "lower optimizer.lr (or check the label store)"):
        self.what, self.fix = what, fix

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):  # every rank stops together
            phase = getattr(pl_module, "phase", "")
            raise DivergedError(f"{self.what} loss is not finite at epoch {trainer.current_epoch} step {batch_idx}"
                                f"{f' ({phase} phase)' if phase else ''}; the last checkpoint is from before it; "
                                f"fix: {self.fix}")
