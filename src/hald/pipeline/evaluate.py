"""The evaluate stage's extras, after the run's own training (conf/evaluate): fair metrics and LVSD."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hald.artifacts import write_json_atomic
from hald.evaluate.lvsd import lvsd
from hald.pipeline.cache import Context
from hald.pipeline.fair import evaluate_fair
from hald.models.teachers import Teacher
from hald.pipeline.stages import Made, relabel_committee
from hald.pipeline.student import TrainResult

log = logging.getLogger("hald")


def stage_evaluate(ctx: Context, teachers: list[Teacher], made: Made, result: TrainResult,
                   out_dir: Path) -> dict[str, Any]:
    """Summary fields to add: `fair` (evaluate=fair), `lvsd` (evaluate.lvsd=true; full result in lvsd.json)."""
    ev = ctx.cfg.get("evaluate") or {}
    extra: dict[str, Any] = {}
    if ev.get("fair"):
        extra["fair"] = evaluate_fair(ctx, teachers, made, {"top1": result.top1_protocol["top1"], "lr": result.lr})
    if ev.get("lvsd"):
        committee = relabel_committee(ctx.cfg, teachers)
        committee.mode = "eval"  # a per-image crop distribution: BSSL labels also depend on the batch
        images = made.images
        manifest = json.loads((made.store / "manifest.json").read_text())
        res = lvsd(committee, images.images, images.targets, manifest, crops=int(ev.get("lvsd_crops", 64)),
                   seed=int(ctx.cfg.seed))
        write_json_atomic(out_dir / "lvsd.json", res.to_dict())
        extra["lvsd"] = res.headline()
        log.info("LVSD: mean Tr(Sigma) %.3g, drift Tr/SLI %.3g at SLI %d, slope %.3f (theory -1)", res.trace_mean,
                 res.drift_at_sli, res.sli, res.slope)
    return extra
