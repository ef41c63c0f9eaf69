"""Fair evaluation (evaluate=fair): DD-Ranking's trainings per seed, each a derived run of the stages
(pipeline/derived.py) cached as `fair/<key>`, under the evaluation protocol (evaluate/protocols.py: which
optimizer, LRs, augmentation and accuracy rule); the scores themselves are evaluate/fair.py's pure arithmetic."""
from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from hald.data.sources import build_source
from hald.evaluate.fair import ROLES, ars, mean_std, scores
from hald.evaluate.protocols import CACHED_SOURCE, Protocol, cached_real
from hald.pipeline.cache import Context
from hald.pipeline.derived import derive, trained
from hald.models.teachers import Teacher
from hald.pipeline.stages import Made, images_and_labels
from hald.pipeline.student import resolve_lr

log = logging.getLogger("hald")
WHOLE_IMAGES = [1.0, 1.0]  # RandomResizedCrop at scale 1 and ratio 1: the whole image


def hard_labels(cfg: DictConfig, epochs: int) -> dict[str, Any]:
    """Changes that turn a training into DD-Ranking's hard-label one: class labels only, every epoch (on whole
    images, unflipped, when the protocol trains hard labels without augmentation)."""
    h, p = cfg.evaluate.hard, Protocol.of(cfg.evaluate.protocol)
    out = {"schedule.preset": "hard_only", "train.epochs": int(epochs),
           "hard_loss.label_smoothing": float(h.label_smoothing), "hard_loss.cutmix_alpha": float(h.cutmix_alpha),
           "hard_loss.temperature": float(h.temperature)}
    if not p.hard_augment:
        out.update({"hard_loss.crop_scale": WHOLE_IMAGES, "hard_loss.flip_p": 0.0})
    if p.batch_size:
        out["train.hard_batch_size"] = int(p.batch_size)
    return out


def without_augmentation() -> dict[str, Any]:
    """ARS's 'no augmentation' recipe: soft labels of whole, unflipped, unmixed images (a relabel of its own),
    and a hard phase on whole images without CutMix."""
    return {"labels.crop_scale": WHOLE_IMAGES, "labels.crop_ratio": WHOLE_IMAGES, "labels.flip_p": 0.0,
            "labels.cutmix_alpha": 0.0, "hard_loss.crop_scale": WHOLE_IMAGES, "hard_loss.flip_p": 0.0,
            "hard_loss.cutmix_alpha": 0.0}


def protocol_optimizer(cfg: DictConfig) -> dict[str, Any]:
    """The protocol's optimizer.* values, as derive() changes."""
    return {f"optimizer.{k}": v for k, v in Protocol.of(cfg.evaluate.protocol).optimizer.items()}


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


def top1(ctx: Context, role: str, cfg: DictConfig, made: Made) -> dict[str, Any]:
    """A student trained by `cfg` on these images and labels (cached), at each LR the protocol gives the role:
    {"top1": % under the protocol's accuracy rule, at the best LR (ties: the smaller), "lr", "by_lr"}."""
    p = Protocol.of(cfg.evaluate.protocol)
    run_lr = resolve_lr(cfg, int(cfg.ipc))[0]
    searched = p.lrs_for(role, run_lr)
    by_lr: dict[str, float] = {}
    best: tuple[float, float] | None = None
    for lr in searched:
        run = derive(cfg, **{"optimizer.lr": lr}) if len(searched) > 1 else cfg  # one LR: the config's own
        res = trained(ctx, "fair", run, made, {"role": role, "checks": p.check_epochs(int(run.train.epochs))})
        acc = p.top1(res.get("eval_log") or [], res["top1"], int(run.train.epochs))["top1"]
        by_lr[f"{lr:g}"] = acc
        if best is None or acc > best[0]:  # strict: DD-Ranking keeps the first (smaller) LR of a tie
            best = (acc, lr)
    log.info("fair: %s seed %s: top-1 %.2f%% (lr %g%s)", role, cfg.seed, best[0], best[1],
             f" of {len(by_lr)} searched" if len(by_lr) > 1 else "")
    return {"top1": best[0], "lr": best[1], "by_lr": by_lr}


def chain(ctx: Context, cfg: DictConfig, teachers: list[Teacher]) -> Made:
    return images_and_labels(Context(cfg, ctx.cache), teachers)


def real_accuracy(ctx: Context, teachers: list[Teacher], seed: int, p: Protocol, state: dict) -> dict[str, Any]:
    """The real train set's hard-label accuracy (%): given (evaluate.real.top1), DD-Ranking's cache (protocol
    real=cached, when it has this dataset and student), or a full-data training (the same per seed as for
    the other roles: DD-Ranking trains it per round when it trains it)."""
    cfg = ctx.cfg
    ev = cfg.evaluate
    if ev.real.top1 is not None:
        return {"top1": float(ev.real.top1), "source": "given (evaluate.real.top1)"}
    cached = cached_real(str(cfg.dataset.name), str(cfg.model.name)) if p.real == "cached" else None
    if cached is not None:
        return {"top1": cached, "source": f"{CACHED_SOURCE}, {cfg.dataset.name} / ResNet-18-BN"}
    if "cfg" not in state:  # one real set (thousands of images): read and labelled once
        state["cfg"] = derive(cfg, **real_images(cfg, int(cfg.seed)))
        state["made"] = chain(ctx, state["cfg"], teachers)
    real = state["cfg"]
    changes = {**hard_labels(cfg, ev.real.epochs), **({"optimizer.lr": p.real_lr} if p.real_lr else {})}
    res = top1(ctx, "real_hard", derive(real, seed=seed, **changes), state["made"])
    return {**res, "source": f"trained: {real.ipc} images per class, {int(ev.real.epochs)} epochs"}


def evaluate_fair(ctx: Context, teachers: list[Teacher], made: Made, main: dict[str, Any]) -> dict[str, Any]:
    """HLR, IOR, LRS (and ARS under protocols that ask for it) per seed of the protocol, with mean and std;
    accuracies as fractions. `main`: the run's own training ({"top1": % under the protocol's rule}), which is
    the syn_recipe entry at its own seed when the protocol trains with the run's optimizer and LR."""
    cfg = ctx.cfg
    ev, p = cfg.evaluate, Protocol.of(cfg.evaluate.protocol)
    weight = float(ev.weight)
    base = derive(cfg, **protocol_optimizer(cfg))
    run_is_entry = not p.optimizer and "syn_recipe" not in p.search
    state: dict[str, Any] = {}
    rows, detail = [], []
    for seed in p.seeds:
        got: dict[str, dict[str, Any]] = {}
        at_seed = derive(base, seed=seed)
        got["syn_recipe"] = {"top1": main["top1"], "lr": main["lr"], "by_lr": {}} \
            if run_is_entry and seed == int(cfg.seed) else top1(ctx, "syn_recipe", at_seed, made)
        got["syn_hard"] = top1(ctx, "syn_hard", derive(at_seed, **hard_labels(cfg, ev.hard.epochs)), made)
        rcfg = derive(base, **random_subset(made.images.ipc, seed))
        got["random_recipe"] = top1(ctx, "random_recipe", derive(rcfg, seed=seed), chain(ctx, rcfg, teachers))
        real = real_accuracy(ctx, teachers, seed, p, state)
        got["real_hard"] = real
        if p.ars:
            plain = derive(at_seed, **without_augmentation())
            got["syn_noaug"] = top1(ctx, "syn_noaug", plain, chain(ctx, derive(plain, seed=int(cfg.seed)),
                                                                                 teachers))
            rplain = derive(rcfg, **without_augmentation())
            got["random_noaug"] = top1(ctx, "random_noaug", derive(rplain, seed=seed), chain(ctx, rplain, teachers))
        frac = {k: v["top1"] / 100.0 for k, v in got.items()}
        row = {"seed": seed, **frac, **scores(frac, weight)}
        if p.ars:
            row["ars"] = ars(frac["syn_recipe"], frac["random_recipe"], frac["syn_noaug"], frac["random_noaug"],
                             p.ars_gamma)
        rows.append(row)
        detail.append({"seed": seed, **{k: {x: v[x] for x in ("lr", "by_lr") if x in v} for k, v in got.items()}})
    keys = (*ROLES, "hlr", "ior", "lrs", *(("syn_noaug", "random_noaug", "ars") if p.ars else ()))
    mean, std = mean_std(rows, keys, p.std_ddof)
    out = {"seeds": [r["seed"] for r in rows], "weight": weight, "per_seed": rows, "lrs_chosen": detail,
           "mean": mean, "std": std, "real": real["source"], "protocol": p.name}
    log.info("fair (%s): HLR %.4f ± %.4f  IOR %.4f ± %.4f  LRS %.4f ± %.4f%s", p.name, mean["hlr"], std["hlr"],
             mean["ior"], std["ior"], mean["lrs"], std["lrs"],
             f"  ARS {mean['ars']:.4f} ± {std['ars']:.4f}" if p.ars else "")
    return out
