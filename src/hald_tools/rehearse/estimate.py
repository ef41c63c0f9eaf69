"""What each stage of a run costs, in model FLOPs and in its own units, read from the composed config.

The rehearsal measures seconds per stage at shrunk counts; the full run's time is those seconds scaled by
the stage's full / rehearsal FLOPs (a stage that mixes work, e.g. CV-DD's RDED init and its recover, scales
in proportion to each part). Forward FLOPs of each model come from PyTorch's FlopCounterMode on one image at
the preset's resolution (convolutions and matmuls, 2 per multiply-add); a training step counts 3x forward.
Data loading, JPEG decoding and fixed start-up costs are not FLOPs: at rehearsal counts they make the
measured rate pessimistic, so the extrapolation errs long.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from hald.data.sources import class_names
from hald.distill import Cost

TRAIN = 3.0  # forward + backward (input and weight gradients) ~ 3 forwards

# The real datasets' sizes (the rehearsal's own come from its stand-ins).
SPLITS = {"tiny_imagenet": (100_000, 10_000), "imagenet1k": (1_281_167, 50_000)}


@functools.lru_cache(maxsize=None)
def forward_flops(name: str, num_classes: int, size: int, torchvision_model: bool = False) -> float:
    """FLOPs of one forward pass of one image."""
    from torch.utils.flop_counter import FlopCounterMode

    if torchvision_model:
        import torchvision

        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    else:
        from hald.models.build import build_backbone

        net = build_backbone(name, num_classes, 3, size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net.eval()(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


@dataclass
class Stage:
    """A stage's work: its natural unit and count, and its FLOPs."""
    unit: str
    units: float = 0.0
    flops: float = 0.0
    parts: list[str] = field(default_factory=list)

    def add(self, units: float, flops: float, part: str | None = None) -> None:
        self.units, self.flops = self.units + units, self.flops + flops
        if part:
            self.parts.append(part)


def _f(cfg: DictConfig, name: str, pretrained: Any) -> float:
    d = cfg.dataset
    return forward_flops(name, int(d.num_classes), int(d.input_size), bool(pretrained))


def _batch_limit(cfg: DictConfig, key: str) -> int | None:
    """Trainer.limit_{train,val,test}_batches as a batch count (None: unset, or a fraction of the batches)."""
    limit = cfg.trainer.get(key)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def _steps(cfg: DictConfig, epochs: int, n: int, batch: int) -> int:
    """Optimiser steps of `epochs` epochs over n items (Trainer.limit_train_batches respected)."""
    limit = _batch_limit(cfg, "limit_train_batches")
    per_epoch = math.ceil(n / batch)
    return epochs * (per_epoch if limit is None else min(per_epoch, limit))


def _schedule(cfg: DictConfig, epochs: int, passes: int, preset: str | None = None):
    """The run's phase schedule, by the pipeline's own builder (pipeline/student.build_schedule)."""
    from hald.pipeline.student import build_schedule

    changes = {"train": {"epochs": epochs}, **({"schedule": {"preset": preset, "segments": None}} if preset else {})}
    return build_schedule(OmegaConf.merge(cfg, changes), passes)


def _evaluations(cfg: DictConfig, epochs: int, passes: int, preset: str | None = None) -> int:
    """Test evaluations during training: the epochs the phase callback validates (Schedule.eval_epochs)."""
    sched = _schedule(cfg, epochs, passes, preset)
    return len(sched.eval_epochs(int(cfg.train.get("eval_every") or 0), bool(cfg.train.get("eval_phase_ends", True)),
                                 int(cfg.train.get("eval_offset") or 0)))


def _tested(cfg: DictConfig, n_test: int, key: str) -> int:
    """Test images one evaluation reads (Trainer.limit_val_batches / limit_test_batches respected)."""
    limit = _batch_limit(cfg, key)
    return n_test if limit is None else min(n_test, limit * int(cfg.train.eval_batch_size))


def _work_flops(cfg: DictConfig, cost: Cost) -> Stage:
    """A method's Cost (distill/registry.py) as a Stage: forwards x model FLOPs (x3 for training passes)."""
    stage = Stage(cost.unit)
    if cost.label:
        stage.parts.append(cost.label)
    for w in cost.work:
        stage.add(w.units, w.images * (TRAIN if w.train else 1.0) * _f(cfg, w.model, w.pretrained), w.label or None)
    return stage


def stage_costs(cfg: DictConfig, n_train: int, n_test: int, ipc: int | None = None,
                only_teachers: list[str] | None = None) -> dict[str, Stage]:
    """Per stage: units and FLOPs of the run `cfg` describes, on a train split of n_train images and a test
    split of n_test. `ipc`: the distilled set's images per class when a folder sets it (distill=folder).
    `only_teachers`: squeeze counts these teachers only (the others were reused from the cache).
    Every count comes from the planner the pipeline itself calls: the teachers it trains (trained_teachers),
    each method's own cost record, the relabel plan (slc or label_budget), the validation epochs."""
    from hald.distill import method_of
    from hald.pipeline.stages import needs_priors, plan_relabel, trained_teachers

    C = int(cfg.dataset.num_classes)
    ipc = int(ipc if ipc is not None else cfg.ipc)
    n_syn = ipc * C
    out: dict[str, Stage] = {}
    t = cfg.teacher
    relabel_f = sum(_f(cfg, m, t.pretrained) for m in t.models)

    # squeeze: every teacher trained here (pretrained or checkpoint teachers are loaded)
    sq = out["squeeze"] = Stage("teacher steps")
    for m in trained_teachers(cfg) if only_teachers is None else [m for m in trained_teachers(cfg)
                                                                    if m in only_teachers]:
        s = t.squeeze
        steps = _steps(cfg, int(s.epochs), n_train, int(s.batch_size))
        if s.get("max_steps") is not None:
            steps = min(steps, int(s.max_steps))
        sq.add(steps, steps * int(s.batch_size) * TRAIN * _f(cfg, m, False) + n_test * _f(cfg, m, False), m)

    # distill: the method's own cost record
    dcfg = OmegaConf.to_container(cfg.distill, resolve=True)
    out["distill"] = _work_flops(cfg, method_of(cfg.distill.method).cost(dcfg, cfg.dataset, ipc))
    if needs_priors(cfg.distill):
        out["priors"] = _priors(cfg, n_train)

    # relabel: the plan relabel will use (slc or label_budget), one teacher forward per image (BSSL: the same)
    try:  # the real class names size the manifest a budget counts; WNID-shaped stand-ins when not on disk
        classes = class_names(cfg.dataset)
    except Exception:  # noqa: BLE001  (a stand-in path in a test, a dataset not downloaded)
        classes = [f"n{c:08d}" for c in range(C)]
    passes = plan_relabel(cfg, n_syn, ipc, classes).sli if cfg.labels.store is None else 0
    out["relabel"] = Stage("soft labels", passes * n_syn, passes * n_syn * relabel_f, [f"{passes} passes"])

    # train (+ its test evaluations) and the final evaluation
    sf = _f(cfg, cfg.model.name, False)
    epochs, batch = int(cfg.train.epochs), int(cfg.train.soft_batch_size)
    steps = _steps(cfg, epochs, n_syn, batch)
    evals = _evaluations(cfg, epochs, max(passes, 1))
    train = out["train"] = Stage("student steps", steps, steps * batch * TRAIN * sf
                                 + evals * _tested(cfg, n_test, "limit_val_batches") * sf,
                                 [f"{epochs} epochs", f"{evals} test evaluations"])
    if cfg.train.get("crop_consistency"):  # two crops per pair and image, at every phase end
        ends = len(_schedule(cfg, epochs, max(passes, 1)).phase_ends())
        probes = ends * n_syn * 2 * int(cfg.train.consistency_pairs)
        train.add(0, probes * sf, f"crop consistency: {probes} crops")
    tested = _tested(cfg, n_test, "limit_test_batches")
    out["evaluate"] = Stage("test images", tested, tested * sf)
    return out


def _priors(cfg: DictConfig, n_train: int) -> Stage:
    """CV-DD's measured priors: per pool teacher, its own one-teacher set (the method's single_teacher
    config, by the same prior_config the pipeline runs), relabelled, and a student trained on it and tested on
    the held-out train images (pipeline/priors.py)."""
    from hald.distill import method_of
    from hald.pipeline.priors import prior_config

    p = cfg.distill.prior
    C = int(cfg.dataset.num_classes)
    stage = Stage("pool teachers measured")
    t = cfg.teacher
    relabel_f = sum(_f(cfg, m, t.pretrained) for m in t.models)
    sf = _f(cfg, cfg.model.name, False)
    held = int(n_train * float(p.holdout))
    for i, m in enumerate(cfg.distill.pool.models):
        pcfg = prior_config(cfg, i)
        d = OmegaConf.to_container(pcfg.distill, resolve=True)
        part = _work_flops(pcfg, method_of(d["method"]).cost(d, cfg.dataset, int(p.ipc)))
        n = int(p.ipc) * C
        passes = int(p.slc) // int(p.ipc)
        steps = _steps(cfg, int(p.epochs), n, int(cfg.train.soft_batch_size))
        evals = _evaluations(pcfg, int(p.epochs), passes)
        flops = (part.flops + passes * n * relabel_f + steps * int(cfg.train.soft_batch_size) * TRAIN * sf
                 + (evals + 1) * held * sf)
        stage.add(1, flops, m)
    return stage
