"""The pipeline: the only place stages meet. squeeze -> distill -> relabel -> train -> evaluate.

    cache.py      the content-keyed artifact cache and its DDP protocol
    preflight.py  every input checked before any work
    stages.py     squeeze, distill, relabel (cached artifacts) and the distill -> relabel chain
    student.py    student training and test
    derived.py    runs of the stages with a derived config (priors.py: CV-DD's priors; fair.py: DD-Ranking)
    evaluate.py   the evaluate stage's extras
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hald import artifacts, dist
from hald.plugins import load_plugins
from hald.evaluate.protocols import Protocol
from hald.evaluate.summary import compute_row, print_summary
from hald.pipeline.cache import Context, compute_settings
from hald.pipeline.evaluate import stage_evaluate
from hald.pipeline.preflight import adopt_store, preflight, resolve_class_count
from hald.pipeline.priors import stage_priors
from hald.pipeline.stages import (Made, distill_teachers, images_and_labels, needs_priors, needs_teacher,
                                  stage_squeeze)
from hald.pipeline.student import check_resume_config, stage_train
from hald.pipeline.tracking import log_run_end

log = logging.getLogger("hald")


def run(cfg: DictConfig, out_dir: Path | None = None) -> dict[str, Any]:
    """The whole trip; returns (and writes as results.json) the run's summary."""
    load_plugins(cfg.get("plugins"))  # a user's own methods, codecs, datasets, phases, losses
    cfg = resolve_class_count(cfg)  # dataset.num_classes: null = the class folders found
    checked = preflight(cfg)  # every input checked, nothing built, nothing changed
    cfg = adopt_store(cfg, checked.store)  # a passed-in store's label settings: its manifest is the truth
    out_dir = out_dir or output_dir(cfg)
    check_resume_config(cfg, out_dir)  # train.resume=true continues only the same run
    arithmetic = compute_settings(cfg)  # each stage's precision on this accelerator (a bad one stops here)
    if dist.wants_ddp(cfg.trainer):  # every stage in the DDP world: ranks > 0 re-run this script (dist.py)
        dist.launch(cfg.trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg, Path(cfg.paths.cache_dir).expanduser().resolve())
    log.info("compute: %s", compute_row(arithmetic))
    teachers = stage_squeeze(ctx) if needs_teacher(cfg) else []
    pool = distill_teachers(ctx)  # the teachers the method distils with (its own committee, or `teacher`'s)
    priors = stage_priors(ctx, pool, teachers) if needs_priors(cfg.distill) else None
    made = images_and_labels(ctx, teachers, pool, priors, checked.images)
    preview = distilled_preview(made, out_dir)
    lineage = {"teachers": {t.name: t.key for t in teachers}, "images": made.image_key}
    result = stage_train(ctx, made.images, made.store, out_dir, preview=preview, lineage=lineage)
    extra = stage_evaluate(ctx, teachers, made, result, out_dir)
    summary = {
        "protocol": protocol_card(cfg, result, extra.get("fair")),
        "dataset": cfg.dataset.name, "student": cfg.model.name, "teachers": [t.summary() for t in teachers],
        "distill": cfg.distill.method, "images": str(made.image_dir), "images_reused": made.images_reused,
        "labels_reused": made.store_reused, "timings_s": {k: round(v, 1) for k, v in ctx.timings.items()},
        "output_dir": str(out_dir), "compute": arithmetic, **result.summary(), **extra,
    }
    if dist.rank() == 0:
        artifacts.write_json_atomic(out_dir / "results.json", summary)
        print_summary(summary)
        log_run_end(summary)
    return summary


def protocol_card(cfg: DictConfig, result: Any, fair: dict[str, Any] | None) -> dict[str, Any]:
    """What the run's numbers were measured under (evaluate/protocols.py); the real-data accuracy behind HLR
    when fair metrics ran."""
    real = {"top1": round(100 * fair["mean"]["real_hard"], 2), "source": fair["real"]} if fair else None
    return Protocol.of(cfg.evaluate.protocol).card(cfg, result.lr, real)


def output_dir(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.paths.output_dir)


def distilled_preview(made: Made, out_dir: Path) -> Path | None:
    """The distill stage's image grid, copied into the run dir (W&B logs it); none for a set passed in."""
    grid = made.image_dir.parent / "grid.png"
    if made.given or not grid.is_file():
        return None
    shutil.copy2(grid, out_dir / "distilled_grid.png")
    return grid
