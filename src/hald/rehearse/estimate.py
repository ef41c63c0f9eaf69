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


def _phase_ends(cfg: DictConfig, epochs: int, passes: int) -> set[int]:
    """The last epoch of every phase (train/callbacks.py evaluates there, and logs crop consistency)."""
    from hald.train.schedule import make_schedule

    s = cfg.schedule
    sched = make_schedule(s.preset, epochs, float(s.soft_fraction), int(s.block or passes))
    return {e - 1 for e in sched.switches()} | {epochs - 1}


def _evaluations(cfg: DictConfig, epochs: int, passes: int) -> int:
    """Test evaluations during training: epochs 0, every, 2 every, ..., every phase end and the last."""
    every = cfg.train.get("eval_every")
    every_n = {e for e in range(epochs) if every and e % int(every) == 0}
    return len(every_n | _phase_ends(cfg, epochs, passes))


def _tested(cfg: DictConfig, n_test: int, key: str) -> int:
    """Test images one evaluation reads (Trainer.limit_val_batches / limit_test_batches respected)."""
    limit = _batch_limit(cfg, key)
    return n_test if limit is None else min(n_test, limit * int(cfg.train.eval_batch_size))


def stage_costs(cfg: DictConfig, n_train: int, n_test: int, ipc: int | None = None,
                only_teachers: list[str] | None = None) -> dict[str, Stage]:
    """Per stage: units and FLOPs of the run `cfg` describes, on a train split of n_train images and a test
    split of n_test. `ipc`: the distilled set's images per class when a folder sets it (distill=folder).
    `only_teachers`: squeeze counts these teachers only (the others were reused from the cache)."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    C, size = int(cfg.dataset.num_classes), int(cfg.dataset.input_size)
    ipc = int(ipc if ipc is not None else cfg.ipc)
    n_syn = ipc * C
    out: dict[str, Stage] = {}
    t = cfg.teacher
    relabel_f = sum(_f(cfg, m, t.pretrained) for m in t.models)

    # squeeze: every teacher trained here (pretrained or checkpoint teachers are loaded)
    sq = out["squeeze"] = Stage("teacher steps")
    d = cfg.distill
    trained = [] if (t.pretrained or t.checkpoints) else list(t.models)
    pool = d.get("pool")
    if d.method == "cvdd" and pool is not None and not (pool.get("pretrained") or pool.get("checkpoints")):
        trained += [m for m in pool.models if m not in trained]  # shared names are one cached teacher
    for m in trained if only_teachers is None else [m for m in trained if m in only_teachers]:
        s = t.squeeze
        steps = _steps(cfg, int(s.epochs), n_train, int(s.batch_size))
        if s.get("max_steps") is not None:
            steps = min(steps, int(s.max_steps))
        sq.add(steps, steps * int(s.batch_size) * TRAIN * _f(cfg, m, False) + n_test * _f(cfg, m, False), m)

    # distill
    ds = out["distill"] = Stage({"rded": "crops scored", "folder": "images read"}.get(d.method, "unit iterations"))
    if d.method == "rded":
        crops = C * int(d.mipc) * int(d.num_crops)
        ds.add(crops, crops * _f(cfg, t.models[0], t.pretrained), "RDED scoring")
    elif d.method in ("sre2l", "sre2lpp", "cvdd"):
        _recover(cfg, ds, ipc)
    if d.method == "cvdd" and d.get("priors") is None:
        out["priors"] = _priors(cfg, n_train)

    # relabel: SLI passes over the distilled images, one teacher forward per image (BSSL: the same FLOPs)
    passes = int(cfg.slc) // ipc
    out["relabel"] = Stage("soft labels", passes * n_syn, passes * n_syn * relabel_f, [f"{passes} passes"])

    # train (+ its test evaluations) and the final evaluation
    sf = _f(cfg, cfg.model.name, False)
    epochs, batch = int(cfg.train.epochs), int(cfg.train.soft_batch_size)
    steps = _steps(cfg, epochs, n_syn, batch)
    evals = _evaluations(cfg, epochs, passes)
    train = out["train"] = Stage("student steps", steps, steps * batch * TRAIN * sf
                                 + evals * _tested(cfg, n_test, "limit_val_batches") * sf,
                                 [f"{epochs} epochs", f"{evals} test evaluations"])
    if cfg.train.get("crop_consistency"):  # two crops per pair and image, at every phase end
        probes = len(_phase_ends(cfg, epochs, passes)) * n_syn * 2 * int(cfg.train.consistency_pairs)
        train.add(0, probes * sf, f"crop consistency: {probes} crops")
    tested = _tested(cfg, n_test, "limit_test_batches")
    out["evaluate"] = Stage("test images", tested, tested * sf)
    return out


def _recover(cfg: DictConfig, stage: Stage, ipc: int, members: list[str] | None = None,
             iterations: int | None = None) -> None:
    """SRe2L / SRe2L++ / CV-DD recover: units (IPC index, class chunk) x iterations x the unit's voters."""
    from hald.distill.recover import committee_schedule

    d, C = cfg.distill, int(cfg.dataset.num_classes)
    pool = d.get("pool") or cfg.teacher
    names = list(members or pool.models)
    pretrained = pool.get("pretrained")
    chunk = int(d.class_chunk)
    chunks = math.ceil(C / chunk)
    committee = OmegaConf.to_container(d.committee) if members is None else None
    schedule = committee_schedule(names, committee, int(cfg.seed), [0.0] * len(names))  # members only
    iters = int(iterations if iterations is not None else d.iterations)
    units = [(i, k) for i in range(ipc) for k in range(chunks)]
    cap = d.get("units_run")
    run = units if cap is None else units[:int(cap)]
    for i, k in run:
        voters = sum(_f(cfg, names[m], pretrained) for m in schedule.members(i))
        images = min(chunk, C - k * chunk)
        stage.add(iters, iters * images * TRAIN * voters)
    stage.parts.append(f"{len(run)} of {len(units)} units x {iters} iterations")
    if d.get("init") == "rded":
        r = d.rded
        crops = C * int(r.mipc) * int(r.num_crops)
        stage.add(0, crops * _f(cfg, names[0], pretrained), f"RDED init: {crops} crops scored")


def _priors(cfg: DictConfig, n_train: int) -> Stage:
    """CV-DD's measured priors: per pool teacher, its own SRe2L++ set, relabelled, and a student trained on it
    and tested on the held-out train images (pipeline/priors.py)."""
    p, d = cfg.distill.prior, cfg.distill
    C = int(cfg.dataset.num_classes)
    stage = Stage("pool teachers measured")
    t = cfg.teacher
    relabel_f = sum(_f(cfg, m, t.pretrained) for m in t.models)
    sf = _f(cfg, cfg.model.name, False)
    held = int(n_train * float(p.holdout))
    for m in d.pool.models:
        part = Stage("")
        _recover(cfg, part, int(p.ipc), members=[m], iterations=int(p.iterations))
        n = int(p.ipc) * C
        passes = int(p.slc) // int(p.ipc)
        steps = _steps(cfg, int(p.epochs), n, int(cfg.train.soft_batch_size))
        pcfg = OmegaConf.merge(cfg, {"schedule": {"preset": str(p.get("schedule") or cfg.schedule.preset)}})
        evals = _evaluations(pcfg, int(p.epochs), passes)
        flops = (part.flops + passes * n * relabel_f + steps * int(cfg.train.soft_batch_size) * TRAIN * sf
                 + (evals + 1) * held * sf)
        stage.add(1, flops, m)
    return stage
