"""Callbacks of student training: the phase scheduler."""
from __future__ import annotations

import logging

import lightning as L

from hald.train.schedule import SOFT, Schedule

log = logging.getLogger(__name__)
ON_SWITCH = ("keep", "reset")


class PhaseScheduler(L.Callback):
    """Sets the loss phase of each epoch from the pure schedule, logs it, handles switches.

    - `on_phase_switch=reset` gives AdamW fresh moments at each switch: the soft KL (T=20, no T^2) and the
      hard CE differ in gradient scale by ~T^2, and moments carried over turn the first steps after a switch
      into huge updates. `keep` is the paper's behaviour.
    - Validation (test accuracy) runs every `eval_every` epochs, on the last epoch of every phase (so the
      accuracy at each switch is logged) and on the final epoch.
    Stateless: everything derives from trainer.current_epoch, so resume needs nothing extra.
    """

    def __init__(self, schedule: Schedule, on_phase_switch: str = "reset", eval_every: int = 0):
        if on_phase_switch not in ON_SWITCH:
            raise ValueError(f"optimizer.on_phase_switch={on_phase_switch!r}; fix: one of {ON_SWITCH}")
        self.schedule, self.on_phase_switch, self.eval_every = schedule, on_phase_switch, eval_every
        self.history: list[tuple[int, str]] = []

    def eval_epoch(self, epoch: int) -> bool:
        last = self.schedule.total_epochs - 1
        return (epoch == last or (epoch + 1) in self.schedule.switches()
                or (self.eval_every > 0 and (epoch + 1) % self.eval_every == 0))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        phase = self.schedule.phase_at(epoch)
        pl_module.phase = phase
        self.history.append((epoch, phase))
        if epoch in self.schedule.switches():
            log.info("epoch %d: phase switch %s -> %s", epoch, self.schedule.phase_at(epoch - 1), phase)
            if self.on_phase_switch == "reset":
                for opt in trainer.optimizers:
                    opt.state.clear()  # AdamW re-creates step/moments lazily at the next step
        # Lightning validates when (epoch + 1) % check_val_every_n_epoch == 0; this picks exactly our epochs.
        trainer.check_val_every_n_epoch = 1 if self.eval_epoch(epoch) else epoch + 2
        pl_module.log("train/phase", float(phase == SOFT), on_step=False, on_epoch=True, sync_dist=True)
