"""CV-DD's prior performance alpha of each pool teacher, which weights its votes (softmax(alpha / T)).

Alpha = the top-1 (%) of a student trained on that teacher's own single-model distilled set, measured on a
held-out part of the TRAIN split that the set was not drawn from; never on the test split (the official
code's test-set leak). Each measurement is a derived run of the stages, cached per teacher as `priors/<key>`.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hald.data.holdout import holdout_views
from hald.data.sources import build_source
from hald.distill import method_of
from hald.models.teachers import Teacher
from hald.pipeline.cache import Context
from hald.pipeline.derived import derive, trained
from hald.pipeline.stages import images_and_labels

log = logging.getLogger("hald")


def prior_config(cfg: DictConfig, member: int) -> DictConfig:
    """The run that measures pool teacher `member`'s prior: its own single-model recover (SRe2L++ with the
    same recipe, `distill.prior.ipc` images per class, drawn from the train split minus the held-out part),
    then the pipeline's relabel and student training (`distill.prior.epochs` and `.schedule`), on one device."""
    p = cfg.distill.prior
    pool = OmegaConf.to_container(cfg.distill.pool, resolve=True)
    single = {**pool, "models": [pool["models"][member]],
              "checkpoints": [pool["checkpoints"][member]] if pool.get("checkpoints") else None}
    d = OmegaConf.to_container(cfg.distill, resolve=True)
    d.pop("prior")
    d.update(pool=single, ipc=int(p.ipc), iterations=int(p.iterations), priors=None,
             holdout={"fraction": float(p.holdout), "seed": int(p.seed)})
    d.update(method_of(d["method"]).single_teacher(d))  # the method's own one-teacher variant
    changes = {"distill": d, "ipc": int(p.ipc), "slc": int(p.slc), "labels.store": None,
               "train.epochs": int(p.epochs), "schedule.preset": str(p.get("schedule") or cfg.schedule.preset)}
    if "label_budget" in cfg:  # priors size their labels by slc, never by a byte budget
        changes["label_budget"] = None
    return derive(cfg, **changes)


def stage_priors(ctx: Context, pool: list[Teacher], relabel_teachers: list[Teacher]) -> list[float]:
    """Alpha of every teacher of the squeezed `distill.pool`, in pool order."""
    cfg = ctx.cfg
    alphas, t0 = [], time.time()
    for i, t in enumerate(pool):
        pcfg = prior_config(cfg, i)
        chain = images_and_labels(Context(pcfg, ctx.cache), relabel_teachers, pool=[t])
        holdout = pcfg.distill.holdout

        def held_out() -> tuple[Any, dict[str, Any]]:
            _, held = holdout_views(build_source(cfg.dataset, "train"), float(holdout.fraction), int(holdout.seed))
            return held, {"measured_on": "train-holdout", "holdout_items": len(held),
                          "holdout_indices": held.base_indices}

        prior = trained(ctx, "priors", pcfg, chain,
                        {"teacher": t.name, "holdout": OmegaConf.to_container(holdout)}, eval_source=held_out)
        log.info("prior of %s: %.2f%% on %d held-out train images", t.name, prior["top1"],
                 prior["holdout_items"])
        alphas.append(float(prior["top1"]))
    ctx.timings["priors"] = time.time() - t0
    log.info("committee priors: %s", dict(zip([t.name for t in pool], alphas)))
    return alphas
