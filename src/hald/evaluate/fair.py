"""Fair evaluation of a distilled set with soft labels, as DD-Ranking defines it (peers.md §1c).

Accuracy alone mostly measures the knowledge-distillation recipe: random real images trained with the same
soft labels can match a distillation method. So, per training seed, four accuracies (fractions of 1):

    real_hard      the real train set, hard labels          syn_hard       the distilled images, hard labels
    syn_recipe     the distilled images, this run's recipe  random_recipe  a random real subset of the same IPC,
                                                                           the same recipe and label settings
    HLR = real_hard - syn_hard      IOR = syn_recipe - random_recipe
    LRS = (e^a - e^-1) / (e - e^-1) with a = w IOR - (1 - w) HLR

Every training reuses the pipeline's stages with a derived config (as the CV-DD priors do): images through
`stage_distill`, labels through `stage_relabel`, the student through `stage_train`, and the result is cached
as a `fair/<key>` artifact, so a repeated evaluation trains nothing.
"""
from __future__ import annotations

import copy
import logging
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from hald.data.distilled import DistilledImages

log = logging.getLogger("hald")
ROLES = ("real_hard", "syn_hard", "syn_recipe", "random_recipe")


def lrs(hlr: float, ior: float, weight: float = 0.5) -> float:
    """DD-Ranking's label-robust score: a = w IOR - (1 - w) HLR mapped from [-1, 1] onto [0, 1] by exp."""
    a = weight * ior - (1.0 - weight) * hlr
    return (math.exp(a) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def scores(acc: dict[str, float], weight: float = 0.5) -> dict[str, float]:
    """HLR, IOR and LRS from the four accuracies (fractions)."""
    hlr = acc["real_hard"] - acc["syn_hard"]
    ior = acc["syn_recipe"] - acc["random_recipe"]
    return {"hlr": hlr, "ior": ior, "lrs": lrs(hlr, ior, weight)}


def mean_std(rows: list[dict[str, float]], keys: tuple[str, ...]) -> tuple[dict[str, float], dict[str, float]]:
    mean = {k: statistics.mean(r[k] for r in rows) for k in keys}
    std = {k: statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0 for k in keys}
    return mean, std


# -- derived configs ------------------------------------------------------------------------------------------------
def variant(cfg: DictConfig, **changes: Any) -> DictConfig:
    """A copy of the run's config with dotted keys changed, and no loggers, probes or resume: these trainings
    only contribute a number. One device, as the priors' trainings."""
    v = copy.deepcopy(cfg)
    with open_dict(v):
        v.logger = {}
        v.train.resume, v.train.crop_consistency, v.train.grad_sim_every = False, False, 0
        v.trainer.devices, v.trainer.strategy = 1, "auto"
        if "sync_batchnorm" in v.trainer:
            v.trainer.sync_batchnorm = False
        for key, value in changes.items():
            OmegaConf.update(v, key, value, merge=False, force_add=True)
    return v


def hard_labels(cfg: DictConfig, epochs: int) -> dict[str, Any]:
    """Changes that turn a training into DD-Ranking's hard-label one: class labels only, every epoch."""
    h = cfg.evaluate.hard
    return {"schedule.preset": "hard_only", "train.epochs": int(epochs),
            "hard_loss.label_smoothing": float(h.label_smoothing), "hard_loss.cutmix_alpha": float(h.cutmix_alpha),
            "hard_loss.temperature": float(h.temperature)}


def real_images(cfg: DictConfig, seed: int) -> dict[str, Any]:
    """The real train set as a 'distilled' set: every image of each class, balanced to the smallest class (the
    `random` method at that IPC), labelled once (SLI = 1; hard-label training never reads the labels)."""
    from hald.data.sources import build_source

    counts = torch.bincount(torch.tensor(build_source(cfg.dataset, "train").targets))
    n = int(counts.min())
    return {"distill": {"method": "random", "ipc": n, "seed": seed}, "ipc": n, "slc": n, "label_budget": None,
            "labels.store": None}


def random_subset(ipc: int, seed: int) -> dict[str, Any]:
    """A random real subset of the same IPC; the label settings stay the run's, so the store has the same bytes."""
    return {"distill": {"method": "random", "ipc": ipc, "seed": seed}, "ipc": ipc, "labels.store": None}


# -- trainings --------------------------------------------------------------------------------------------------------
def upstream(ctx, cfg: DictConfig, teachers: list[dict[str, Any]]) -> tuple[DistilledImages, Path]:
    """Images and label store of a derived config, through the pipeline's cached stages."""
    from hald.data.distilled import load_distilled
    from hald.data.sources import build_source
    from hald.pipeline import Context, stage_distill, stage_relabel

    dctx = Context(cfg, ctx.cache)
    image_dir, image_key, _ = stage_distill(dctx, teachers)
    images = load_distilled(image_dir, build_source(cfg.dataset, "test").classes, int(cfg.dataset.channels))
    store_path, _ = stage_relabel(dctx, images, image_key, teachers)
    return images, store_path


def trained_top1(ctx, role: str, cfg: DictConfig, images: DistilledImages, store_path: Path) -> float:
    """Test top-1 (%) of a student trained by `cfg` on these images and labels; cached as fair/<key>."""
    from hald import artifacts
    from hald.pipeline import Context, cached, stage_train, training_identity

    training = training_identity(cfg)
    key = artifacts.key_of(images.sha256, str(store_path), training)

    def build(tmp: Path) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".fair-student.") as run_dir:
            res = stage_train(Context(cfg, ctx.cache), images, store_path, Path(run_dir))
        log.info("fair: %s seed %s: top-1 %.2f%%", role, cfg.seed, res["top1"])
        return {"role": role, "top1": res["top1"], "top5": res["top5"], "label_bytes": res["label_bytes"]}

    art = cached(ctx, "fair", key, {"role": role, "training": training}, {"labels": store_path.name}, build)
    return float(art.manifest["top1"])


def evaluate_fair(ctx, teachers: list[dict[str, Any]], images: DistilledImages, store_path: Path,
                  main_top1: float) -> dict[str, Any]:
    """HLR, IOR, LRS per seed of `evaluate.seeds`, with mean and std; accuracies as fractions."""
    cfg = ctx.cfg
    ev = cfg.evaluate
    weight = float(ev.weight)
    real = None
    rows = []
    for seed in [int(s) for s in ev.seeds]:
        acc: dict[str, float] = {}
        # The run's own training is this entry at its own seed; other seeds retrain with the same images and labels.
        acc["syn_recipe"] = main_top1 if seed == int(cfg.seed) else trained_top1(
            ctx, "syn_recipe", variant(cfg, seed=seed), images, store_path)
        acc["syn_hard"] = trained_top1(ctx, "syn_hard", variant(cfg, seed=seed, **hard_labels(cfg, ev.hard.epochs)),
                                       images, store_path)
        rcfg = variant(cfg, **random_subset(images.ipc, seed))
        r_images, r_store = upstream(ctx, rcfg, teachers)
        acc["random_recipe"] = trained_top1(ctx, "random_recipe", variant(rcfg, seed=seed), r_images, r_store)
        if ev.real.top1 is not None:
            acc["real_hard"] = float(ev.real.top1)
        else:
            if real is None:  # one real set (thousands of images): read once
                real = variant(cfg, **real_images(cfg, int(cfg.seed)))
                real_set = upstream(ctx, real, teachers)
            acc["real_hard"] = trained_top1(ctx, "real_hard", variant(real, seed=seed, **hard_labels(cfg, ev.real.epochs)),
                                            *real_set)
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
