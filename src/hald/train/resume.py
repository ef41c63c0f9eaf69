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
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from hald.artifacts import write_error
from hald.errors import DivergedError
from hald.seeding import seed_of
from hald.train.identity import STATE_KEY

log = logging.getLogger(__name__)


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
            # Written next to the target and renamed: Lightning writes the file in place, so a full disk on
            # the run dir (NFS, Lustre, tmpfs) left a truncated last.ckpt that every rerun then crashed on.
            path = Path(self.path)
            tmp = path.with_name(f".{path.name}.tmp")
            try:
                trainer.save_checkpoint(tmp, weights_only=False)  # every rank calls it; rank 0 writes
                if trainer.is_global_zero:
                    os.replace(tmp, path)
            except BaseException as e:
                err = write_error(e, path)  # a full disk: torch.save's zip writer hides the OSError
                if trainer.is_global_zero:
                    tmp.unlink(missing_ok=True)
                if err is not None:
                    raise err from e
                raise
            trainer.strategy.barrier()


def checkpoint_epoch(path: Path | str) -> int:
    """The last finished epoch a Lightning checkpoint holds; raises if the file is truncated or unreadable
    (memory-mapped, so only the index is read)."""
    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True)["epoch"])


def usable_checkpoint(path: Path | str) -> tuple[str | None, int | None]:
    """(path, its last finished epoch) to resume from, or (None, None). A truncated or unreadable checkpoint
    is set aside as `<name>.unreadable` with one warning line, and the run starts over from its last good
    state (none here: a checkpoint is only replaced once the new one is complete)."""
    from hald import dist

    path = Path(path)
    state: tuple[str | None, int | None] = (None, None)
    if dist.rank() == 0 and path.is_file():
        try:
            state = (str(path), checkpoint_epoch(path))
        except Exception as e:  # noqa: BLE001  (zip, pickle, EOF: any unreadable file)
            aside = path.with_name(path.name + ".unreadable")
            os.replace(path, aside)
            log.warning("checkpoint %s is unreadable (%s): set aside as %s; starting without it", path,
                        " ".join(str(e).split())[:120], aside.name)
    return dist.broadcast(state)


class RunState(L.Callback):
    """Saves and restores `eval_log`, `epoch_paths` and `val_best` of the module, and saves the run's identity
    (train/identity.py: what this is a checkpoint of). Plain types only: the checkpoint loads with torch's
    weights_only=True."""

    def __init__(self, identity: dict[str, Any] | None = None):
        self.identity = identity

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        best = pl_module.val_best.compute() if pl_module.eval_log else None
        checkpoint[STATE_KEY] = {
            "eval_log": [dict(e) for e in pl_module.eval_log],
            "epoch_paths": {int(e): sorted(p) for e, p in pl_module.epoch_paths.items()},
            "val_best": None if best is None else float(best),
            "identity": self.identity,
        }
        log.debug("checkpoint after epoch %d", trainer.current_epoch)

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
