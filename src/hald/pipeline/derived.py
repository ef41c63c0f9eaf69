"""Runs of the stages with a derived config: the one way both CV-DD's priors and fair evaluation train extra
students. `derive` changes a copy of the run's config; `trained` trains a student on it through the cached
stages and keeps the result as a `<stage>/<key>` artifact, so repeating an evaluation trains nothing."""
from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from hald import artifacts
from hald.pipeline.cache import Context, cached, training_identity
from hald.pipeline.stages import Made
from hald.schema import validate
from hald.pipeline.student import stage_train

log = logging.getLogger("hald")


def derive(cfg: DictConfig, **changes: Any) -> DictConfig:
    """A copy of the run's config with dotted keys changed (`derive(cfg, **{"train.epochs": 5})`), and no
    loggers, probes or resume: these trainings only contribute a number, on one device. Only existing keys
    can change (a misspelled one is an error, never a new key), and the result passes the schema."""
    v = copy.deepcopy(cfg)
    OmegaConf.set_struct(v, True)
    v.logger = {}
    v.train.resume, v.train.crop_consistency, v.train.grad_sim_every = False, False, 0
    v.trainer.devices, v.trainer.strategy = 1, "auto"
    if "sync_batchnorm" in v.trainer:
        v.trainer.sync_batchnorm = False
    for key, value in changes.items():
        if OmegaConf.select(v, key, default=_ABSENT) is _ABSENT:
            raise KeyError(f"derive: the config has no key '{key}' (a derived run only changes existing keys)")
        OmegaConf.update(v, key, value, merge=False)
    validate(v)
    return v


_ABSENT = object()


def trained(ctx: Context, stage: str, cfg: DictConfig, made: Made, describe: dict[str, Any],
            eval_source: Callable[[], tuple[Any, dict]] | None = None) -> dict[str, Any]:
    """The manifest of a student trained by `cfg` on the images and labels `made` by
    stages.images_and_labels, cached as `<stage>/<key>`
    (`describe` is recorded with it). `eval_source()` gives what it is tested on and the fields that say so
    (default: the test split)."""
    images, store_path = made.images, made.store
    training = training_identity(cfg)
    key = artifacts.key_of(images.sha256, store_path.name, training, describe)  # describe: e.g. the evaluations

    def build(tmp: Path) -> dict[str, Any]:
        source, measured = eval_source() if eval_source else (None, {"measured_on": "test"})
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f".{stage}-student.") as run_dir:
            res = stage_train(Context(cfg, ctx.cache), images, store_path, Path(run_dir), eval_source=source)
        return {**describe, **measured, "top1": res.top1, "top5": res.top5, "label_bytes": res.label_bytes,
                "eval_log": res.eval_log}

    art = cached(ctx, stage, key, {**describe, "training": training}, {"images": made.image_key,
                                                                        "labels": store_path.name}, build)
    return art.manifest
