"""Callbacks of student training: the phase scheduler and the analysis probes."""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import lightning as L

from hald.evaluate.consistency import crop_consistency
from hald.evaluate.gradsim import gradient_cosine
from hald.train.phases import Phase
from hald.train.schedule import Schedule

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

    def __init__(self, schedule: Schedule, on_phase_switch: str = "reset", eval_every: int = 0,
                 eval_phase_ends: bool = True, eval_offset: int = 0, also_eval: Sequence[int] = ()):
        if on_phase_switch not in ON_SWITCH:
            raise ValueError(f"optimizer.on_phase_switch={on_phase_switch!r}; fix: one of {ON_SWITCH}")
        self.schedule, self.on_phase_switch = schedule, on_phase_switch
        # also_eval: the evaluation protocol's checks (evaluate/protocols.py): evaluating changes no training
        self.evaluated = set(schedule.eval_epochs(eval_every, eval_phase_ends, eval_offset)) | set(also_eval)

    def eval_epoch(self, epoch: int) -> bool:
        return epoch in self.evaluated

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        phase = self.schedule.phase_at(epoch)
        stored = float(pl_module.phases[phase].stored_labels)  # 1 = an epoch on stored soft labels
        if epoch in self.schedule.switches():
            ended = [e for e in getattr(pl_module, "eval_log", []) if e["epoch"] == epoch - 1]
            log.info("epoch %d: phase switch %s -> %s%s", epoch, self.schedule.phase_at(epoch - 1), phase,
                     f" (test top-1 {ended[-1]['top1']:.1f}% at the end of the {ended[-1]['phase']} phase)"
                     if ended else "")
            for lg in getattr(trainer, "loggers", []):  # a marker at the switch (W&B: a point per switch, not a 0/1 curve)
                lg.log_metrics({"phase/switch_epoch": float(epoch), "phase/to_soft": stored},
                               step=trainer.global_step)
            if self.on_phase_switch == "reset":
                for opt in trainer.optimizers:
                    opt.state.clear()  # AdamW re-creates step/moments lazily at the next step
        # Lightning validates when (epoch + 1) % check_val_every_n_epoch == 0; this picks exactly our epochs.
        trainer.check_val_every_n_epoch = 1 if self.eval_epoch(epoch) else epoch + 2
        pl_module.log("train/phase", stored, on_step=False, on_epoch=True, sync_dist=True)


class CropConsistencyProbe(L.Callback):
    """Logs the student's crop consistency (JS divergence and cosine between two crops of each distilled image,
    evaluate/consistency.py) at the end of every phase: HALD's before / after the hard phase, and at the end.

    The probe runs the student in eval mode under no_grad on crops drawn from its own RNG stream, so the
    training run is the same with or without it. `history` is part of the checkpoint (resume keeps it).
    """

    def __init__(self, images, targets, num_classes: int, dataset, schedule: Schedule, pairs: int = 4,
                 seed: int = 0):
        self.images, self.targets, self.num_classes, self.schedule = images, targets, num_classes, schedule
        self.size, self.mean, self.std = int(dataset["input_size"]), list(dataset["mean"]), list(dataset["std"])
        self.pairs, self.seed = pairs, seed
        self.history: list[dict] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch not in self.schedule.phase_ends():
            return
        res = crop_consistency(pl_module.net, self.images, self.targets, self.num_classes, self.size, self.mean,
                               self.std, seed=self.seed, pairs=self.pairs)
        self.history.append({"epoch": epoch, "phase": self.schedule.phase_at(epoch), **res.to_dict()})
        pl_module.log_dict({"consistency/js": res.js, "consistency/cos": res.cos}, on_epoch=True)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


class GradientSimilarity(L.Callback):
    """Every `every` optimizer steps of an epoch on stored batches, the cosine between the gradients of two
    phases' losses on the batch about to be trained on (evaluate/gradsim.py), logged as train/grad_cos;
    `pair` names the phases (default: hard vs soft, HALD's question). Each phase gives its own loss on a stored
    batch (Phase.record_loss): the soft phase against the stored labels, the hard phase against the class labels
    CutMixed with the record's own box and partners; a hard epoch's fresh crops have no teacher label.
    """

    def __init__(self, every: int, phases: Mapping[str, Phase], pair: Sequence[str] = ("hard", "soft")):
        missing = [p for p in pair if p not in phases]
        if len(pair) != 2 or missing:
            raise ValueError(f"train.grad_sim_pair={list(pair)}; fix: two phases of student.phases "
                             f"({sorted(phases)})")
        self.every, self.phases, self.pair = every, phases, tuple(pair)
        self.history: list[dict] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if not self.phases[pl_module.phase].stored_labels or trainer.global_step % self.every:
            return
        a, b = (self.phases[p].record_loss(batch) for p in self.pair)
        cos = gradient_cosine(pl_module.net, batch["x"], a, b)
        self.history.append({"step": trainer.global_step, "epoch": trainer.current_epoch, "cos": round(cos, 6)})
        pl_module.log("train/grad_cos", cos, on_step=True, on_epoch=False, batch_size=batch["x"].shape[0])

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


def analysis_callbacks(cfg, images, phases: Mapping[str, Phase], schedule: Schedule) -> list[L.Callback]:
    """The analysis probes a run's config asks for (train.crop_consistency, train.grad_sim_every)."""
    callbacks: list[L.Callback] = []
    ds, n_classes = cfg.dataset, len(images.classes)
    if cfg.train.get("crop_consistency", False):
        callbacks.append(CropConsistencyProbe(images.images, images.targets, n_classes, ds, schedule,
                                              int(cfg.train.get("consistency_pairs", 4)), int(cfg.seed)))
    if int(cfg.train.get("grad_sim_every", 0) or 0) > 0:
        callbacks.append(GradientSimilarity(int(cfg.train.grad_sim_every), phases,
                                            list(cfg.train.get("grad_sim_pair") or ("hard", "soft"))))
    return callbacks


def analysis_results(callbacks: list[L.Callback]) -> dict[str, list[dict]]:
    """results.json fields of the probes that ran: `consistency` (per phase end), `grad_sim` (per probe)."""
    names = {CropConsistencyProbe: "consistency", GradientSimilarity: "grad_sim"}
    return {names[type(c)]: c.history for c in callbacks if type(c) in names}
