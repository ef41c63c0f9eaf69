"""Fair evaluation (evaluate=fair): DD-Ranking's four trainings per seed, each a derived run of the stages
(pipeline/derived.py) cached as `fair/<key>`; the scores themselves are evaluate/fair.py's pure arithmetic."""
from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from hald.data.sources import build_source
from hald.evaluate.fair import ROLES, mean_std, scores
from hald.pipeline.cache import Context
from hald.pipeline.derived import derive, trained
from hald.models.teachers import Teacher
from hald.pipeline.stages import Made, images_and_labels

log = logging.getLogger("hald")


def hard_labels(cfg: DictConfig, epochs: int) -> dict[str, Any]:
    """Changes that turn a training into DD-Ranking's hard-label one: class labels only, every epoch."""
    h = cfg.evaluate.hard
    return {"schedule.preset": "hard_only", "train.epochs": int(epochs),
            "hard_loss.label_smoothing": float(h.label_smoothing), "hard_loss.cutmix_alpha": float(h.cutmix_alpha),
            "hard_loss.temperature": float(h.temperature)}


def real_images(cfg: DictConfig, seed: int) -> dict[str, Any]:
    """The real train set as a 'distilled' set: every image of each class, balanced to the smallest class (the
    `random` method at that IPC), labelled once (SLI = 1; hard-label training never reads the labels)."""
    counts = torch.bincount(torch.tensor(build_source(cfg.dataset, "train").targets))
    n = int(counts.min())
    return {"distill": {"method": "random", "ipc": n, "seed": seed}, "ipc": n, "slc": n, "label_budget": None,
            "labels.store": None}


def random_subset(ipc: int, seed: int) -> dict[str, Any]:
    """A random real subset of the same IPC; the label settings stay the run's, so the store has the same bytes."""
    return {"distill": {"method": "random", "ipc": ipc, "seed": seed}, "ipc": ipc, "labels.store": None}


def top1(ctx: Context, role: str, cfg: DictConfig, made: Made) -> float:
    """Test top-1 (%) of a student trained by `cfg` on these images and labels (cached)."""
    res = trained(ctx, "fair", cfg, made, {"role": role})
    log.info("fair: %s seed %s: top-1 %.2f%%", role, cfg.seed, res["top1"])
    return float(res["top1"])


def chain(ctx: Context, cfg: DictConfig, teachers: list[Teacher]) -> Made:
    return images_and_labels(Context(cfg, ctx.cache), teachers)


def evaluate_fair(ctx: Context, teachers: list[Teacher], made: Made, main_top1: float
                  ) -> dict[str, Any]:
    """HLR, IOR, LRS per seed of `evaluate.seeds`, with mean and std; accuracies as fractions."""
    cfg = ctx.cfg
    ev = cfg.evaluate
    weight = float(ev.weight)
    real = None
    rows = []
    for seed in [int(s) for s in ev.seeds]:
        acc: dict[str, float] = {}
        # The run's own training is this entry at its own seed; other seeds retrain with the same images and labels.
        acc["syn_recipe"] = main_top1 if seed == int(cfg.seed) else top1(
            ctx, "syn_recipe", derive(cfg, seed=seed), made)
        acc["syn_hard"] = top1(ctx, "syn_hard", derive(cfg, seed=seed, **hard_labels(cfg, ev.hard.epochs)), made)
        rcfg = derive(cfg, **random_subset(made.images.ipc, seed))
        acc["random_recipe"] = top1(ctx, "random_recipe", derive(rcfg, seed=seed), chain(ctx, rcfg, teachers))
        if ev.real.top1 is not None:
            acc["real_hard"] = float(ev.real.top1)
        else:
            if real is None:  # one real set (thousands of images): read once
                real = derive(cfg, **real_images(cfg, int(cfg.seed)))
                real_set = chain(ctx, real, teachers)
            acc["real_hard"] = top1(ctx, "real_hard", derive(real, seed=seed, **hard_labels(cfg, ev.real.epochs)),
                                    real_set)
        frac = {k: v / 100.0 for k, v in acc.items()}
        rows.append({"seed": seed, **frac, **scores(frac, weight)})
    keys = (*ROLES, "hlr", "ior", "lrs")
    mean, std = mean_std(rows, keys)
    out = {"seeds": [r["seed"] for r in rows], "weight": weight, "per_seed": rows, "mean": mean, "std": std,
           "real": "given (evaluate.real.top1)" if ev.real.top1 is not None else
           f"trained: {real.ipc} images per class, {int(ev.real.epochs)} epochs"}
    log.info("fair: HLR %.4f ± %.4f  IOR %.4f ± %.4f  LRS %.4f ± %.4f", mean["hlr"], std["hlr"], mean["ior"],
             std["ior"], mean["lrs"], std["lrs"])
    return out
