"""The artifact stages: squeeze (teachers), distill (images), relabel (label store), each cached by content.

Any artifact can be passed in instead of built: teacher.checkpoints, distill=folder distill.path=...,
labels.store=.... Student training, which makes no cached artifact of its own, is in `student.py`.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hald import artifacts, compute, dist
from hald.data.distilled import DistilledImages
from hald.data.image_array import array_beside, open_array, write_array
from hald.data.holdout import holdout_views
from hald.data.sources import build_source, class_names
from hald.distill import method_of
from hald.distill.folder import folder_array
from hald.errors import ConfigError
from hald.labels.budget import Plan, plan_store
from hald.labels.relabel import manifest_reserve, relabel
from hald.labels.store import FORMAT_VERSION, store_bytes
from hald.models.teachers import Committee, Teacher, build_committee, committee_weights
from hald.pipeline.cache import (Context, cached, dataset_identity, device_kwargs, precision,
                                 squeeze_device_kwargs)
from hald.squeeze import squeeze

log = logging.getLogger("hald")


# -- squeeze -----------------------------------------------------------------------------------------------------
def with_precision(prec: str) -> list[dict[str, str]]:
    """The key part of a stage's precision: none for fp32, so the keys from before the choice stay valid."""
    part = compute.key_part(prec)
    return [part] if part else []


def stage_squeeze(ctx: Context) -> list[Teacher]:
    """The pipeline's teacher(s), which relabel: one entry per model of `teacher`."""
    return squeeze_teachers(ctx, ctx.cfg.teacher)


def squeeze_teachers(ctx: Context, tcfg: DictConfig) -> list[Teacher]:
    """One Teacher per model of a teacher config (`teacher`, or a distill method's own `distill.pool`).
    Same model and recipe = same cached teacher."""
    cfg = ctx.cfg
    ds = dataset_identity(cfg.dataset)
    teachers = []
    for i, name in enumerate(tcfg.models):
        if tcfg.checkpoints:
            ck = Path(tcfg.checkpoints[i]).resolve()
            teachers.append(Teacher(name, artifacts.key_of(str(ck), ck.stat().st_size, ck.stat().st_mtime),
                                    str(ck), source="checkpoint"))
            continue
        if tcfg.pretrained:
            teachers.append(Teacher(name, artifacts.key_of(name, tcfg.pretrained), source=str(tcfg.pretrained)))
            continue
        sq, prec = tcfg.squeeze, precision(cfg, "squeeze")
        key = artifacts.key_of(ds, name, sq, cfg.seed, *with_precision(prec))
        work_dir = ctx.cache / "squeeze" / f".partial-{key}"  # last.ckpt between runs (resume)
        art = cached(ctx, "squeeze", key, {"dataset": ds, "model": name, "squeeze": sq, "seed": cfg.seed,
                                           **compute.key_part(prec)}, {},
                     lambda tmp: squeeze(name, cfg.dataset, sq, tmp, {**squeeze_device_kwargs(cfg), "precision": prec},
                                         int(cfg.seed), work_dir, bool(cfg.compute.channels_last),
                                         bool(cfg.compute.compile)), collective=True)
        shutil.rmtree(work_dir, ignore_errors=True)  # the artifact is complete
        teachers.append(Teacher(name, key, str(art.path / "teacher.safetensors"), art.manifest["test_top1"],
                                art.reused, "squeeze"))
    return teachers


def needs_teacher(cfg: DictConfig) -> bool:
    """The pipeline's teacher is made only when something uses it: relabel, CV-DD's prior runs (they
    relabel), or an analysis. A method that distils with a teacher uses its own `distill.pool` (by default
    `${teacher}`: the same cached teacher). A label store passed in with distill=random/folder needs none. A
    teacher given as a checkpoint or pretrained weights costs nothing, and is listed in the summary."""
    ev = cfg.get("evaluate") or {}
    given = bool(cfg.teacher.checkpoints) or bool(cfg.teacher.pretrained)
    return (cfg.labels.store is None or needs_priors(cfg.distill) or given or bool(ev.get("fair"))
            or bool(ev.get("lvsd")))


def trained_teachers(cfg: DictConfig) -> list[str]:
    """The models this run trains (squeeze), in order: the pipeline's teacher (when needed) and the method's
    own pool; a model in both is one cached teacher. The cost estimator counts the same list."""
    names: list[str] = []
    tcfg = cfg.teacher
    if needs_teacher(cfg) and not (tcfg.pretrained or tcfg.checkpoints):
        names += list(tcfg.models)
    pool = cfg.distill.get("pool") if method_of(cfg.distill.method).uses_teacher else None
    if pool is not None and not (pool.get("pretrained") or pool.get("checkpoints")):
        names += [m for m in pool.models if m not in names]
    return names


# -- distill -----------------------------------------------------------------------------------------------------
def needs_priors(dcfg: Any) -> bool:
    """The method weights a committee by measured priors (CV-DD) and this config does not give them."""
    return method_of(dcfg.method).needs_priors(OmegaConf.to_container(dcfg, resolve=True)
                                               if OmegaConf.is_config(dcfg) else dcfg)


def distill_teachers(ctx: Context) -> list[Teacher]:
    """The teachers a method distils with: its `distill.pool` (CV-DD's committee; `${teacher}` by default),
    squeezed like the pipeline's (the same model and recipe is the same cached teacher); none for a method that
    uses no teacher."""
    cfg = ctx.cfg
    if not method_of(cfg.distill.method).uses_teacher:
        return []
    if not cfg.distill.get("pool"):
        raise ConfigError(f"distill={cfg.distill.method} distils with a teacher but distill.pool is empty; fix: "
                          f"distill.pool=${{teacher}} (its default) or a teacher config")
    return squeeze_teachers(ctx, cfg.distill.pool)


def given_images(ctx: Context, images: DistilledImages | None = None) -> tuple[DistilledImages, str]:
    """A `given` method's set (an existing folder): opened and verified (or handed in by pre-flight, which
    opened it already) and keyed by its content, so a changed folder is never taken for the one labelled."""
    method = method_of(ctx.cfg.distill.method)
    images = images or method.build(OmegaConf.to_container(ctx.cfg.distill, resolve=True), ctx.cfg.dataset,
                                    cache=ctx.cache)
    return images, f"{method.name}-{images.sha256[:16]}"


def stage_distill(ctx: Context, pool: list[Teacher], priors: list[float] | None = None) -> tuple[Path, str, bool]:
    """Returns (image folder, key, reused).

    `pool`: the teachers the method distils with (`distill_teachers`); their keys enter the image key.
    `priors` (measured by pipeline/priors.py) become part of the config and key. A `given` method builds
    nothing (`given_images`). Recover keeps finished units in `<cache>/distill/.partial-<key>/` until the
    artifact is complete, so a killed run resumes (hald/units.py).
    """
    cfg = ctx.cfg
    method = method_of(cfg.distill.method)
    dcfg = OmegaConf.to_container(cfg.distill, resolve=True)
    if method.given:
        images, key = given_images(ctx)
        return Path(images.root), key, True
    if method.uses_teacher and not pool:
        raise RuntimeError(f"stage_distill: distill={method.name} needs its pool's teachers (distill_teachers)")
    if method.needs_priors(dcfg):
        if priors is None:
            raise RuntimeError("stage_distill: this committee needs priors (pipeline/priors.py measures them)")
        dcfg["priors"] = list(priors)
    ds = dataset_identity(cfg.dataset)
    prec = precision(cfg, "recover") if method.mixed_precision else compute.FP32  # its teachers' forwards
    dcfg.update(compute.key_part(prec))  # fp32: the keys from before the choice
    key = artifacts.key_of(ds, dcfg, [t.key for t in pool] if method.uses_teacher else [])
    upstream = {t.name: t.key for t in pool} if method.uses_teacher else {}
    work_dir = ctx.cache / "distill" / f".partial-{key}"

    def build(tmp: Path) -> dict[str, Any]:
        source = build_source(cfg.dataset, "train")
        classes = source.classes  # recorded: a set used with other classes is refused
        if dcfg.get("holdout"):  # priors: distil from the train split minus the part that measures them
            source, _ = holdout_views(source, float(dcfg["holdout"]["fraction"]), int(dcfg["holdout"]["seed"]))
        made = method.build(source=source, dataset=cfg.dataset, out_dir=tmp, teachers=pool,
                            trainer_kwargs={**device_kwargs(cfg), "precision": prec,
                                            "channels_last": bool(cfg.compute.channels_last)},
                            work_dir=work_dir, **dcfg)
        if dist.rank() == 0:  # the pixels once more, as the array every process maps (data/image_array.py)
            write_array(tmp, tmp / made["images_dir"], list(classes), int(cfg.dataset.channels))
        return {**made, "classes": list(classes)}

    art = cached(ctx, "distill", key, {"dataset": ds, "distill": dcfg}, upstream, build,
                 collective=method.collective)
    shutil.rmtree(work_dir, ignore_errors=True)  # its units are in the complete artifact now
    return art.path / art.manifest["images_dir"], key, art.reused


# -- relabel -----------------------------------------------------------------------------------------------------
def relabel_config(cfg: DictConfig) -> dict[str, Any]:
    """The labels subtree that determines a store (paths and worker counts excluded), plus the budget."""
    lcfg = OmegaConf.to_container(cfg.labels, resolve=True)
    for k in ("store", "num_workers", "groups_per_forward"):
        lcfg.pop(k, None)
    lcfg["label_budget"] = cfg.get("label_budget")
    return {**lcfg, **compute.key_part(precision(cfg, "relabel"))}  # fp32: the keys from before the choice


def teacher_config(cfg: DictConfig, teachers: list[Teacher] | None = None) -> dict[str, Any]:
    return {"teachers": [t.key for t in teachers] if teachers else [str(m) for m in cfg.teacher.models],
            "weights": cfg.teacher.weights, "scores": OmegaConf.to_container(cfg.teacher, resolve=True).get("scores")}


def teacher_weights(cfg: DictConfig, n: int):
    """The relabel committee's weights: `teacher.weights=equal`, or softmax(score / 10) of `teacher.scores`."""
    if cfg.teacher.weights == "equal":
        return committee_weights(n)
    if cfg.teacher.weights == "score":
        if cfg.teacher.scores is None:
            raise ConfigError("teacher.weights=score needs teacher.scores (one per teacher, e.g. held-out top-1 %); "
                              "fix: teacher.scores=[...] or teacher.weights=equal")
        return committee_weights(n, list(cfg.teacher.scores))
    raise ConfigError(f"teacher.weights={cfg.teacher.weights}; fix: equal or score")


def relabel_committee(cfg: DictConfig, teachers: list[Teacher]) -> Committee:
    return build_committee(teachers, cfg.dataset, teacher_weights(cfg, len(teachers)), cfg.labels.teacher_mode,
                           cfg.teacher.pretrained)


def plan_relabel(cfg: DictConfig, n_images: int, ipc: int, classes: list[str]) -> Plan:
    """Passes and codec for this run (the same planner in preflight and in relabel); a byte budget counts the
    manifest too, measured on the manifest relabel will write."""
    def manifest_bytes(sli: int, codec) -> int:
        extra = {"ipc": ipc, "slc": sli * ipc, "dataset": cfg.dataset.name,
                 "teachers": [{"name": n, "key": "0" * 12, "source": "checkpoint"} for n in cfg.teacher.models]}
        return manifest_reserve(sli, codec, cfg.labels, cfg.dataset, num_images=n_images, ipc=ipc, classes=classes,
                                teacher_mode=cfg.labels.teacher_mode, n_teachers=len(cfg.teacher.models),
                                config={"labels": relabel_config(cfg), "teachers": teacher_config(cfg)}, extra=extra)

    return plan_store(cfg.labels.codec, n_images, ipc, len(classes), int(cfg.labels.batch_size), cfg.get("slc"),
                      cfg.get("label_budget"), manifest_bytes)


def stage_relabel(ctx: Context, images: DistilledImages, image_key: str, teachers: list[Teacher]
                  ) -> tuple[Path, bool]:
    cfg = ctx.cfg
    if cfg.labels.store is not None:
        return Path(cfg.labels.store).expanduser().resolve(), True
    plan = plan_relabel(cfg, len(images), images.ipc, images.classes)
    lcfg, tcfg = relabel_config(cfg), teacher_config(cfg, teachers)
    key = artifacts.key_of(images.sha256, lcfg, tcfg, FORMAT_VERSION)
    work_dir = ctx.cache / "relabel" / f".partial-{key}"  # finished passes between runs (resume)

    def build(tmp: Path) -> dict[str, Any]:
        fields = relabel(images, relabel_committee(cfg, teachers), plan, cfg.labels, cfg.dataset, tmp,
                         {**device_kwargs(cfg), "precision": precision(cfg, "relabel")}, work_dir,
                         channels_last=bool(cfg.compute.channels_last))
        return {"dataset": cfg.dataset.name,
                "teachers": [{"name": t.name, "key": t.key, "source": t.source} for t in teachers],
                **fields}

    art = cached(ctx, "relabel", key, {"labels": lcfg, "teachers": tcfg}, {"images": image_key}, build,
                 collective=True)
    shutil.rmtree(work_dir, ignore_errors=True)  # the artifact is complete
    if plan.budget is not None and store_bytes(art.path) > plan.budget:
        raise RuntimeError(f"label store {art.path} has {store_bytes(art.path)} B, over the budget {plan.budget} B "
                           f"(planner bug: please report)")
    return art.path, art.reused


# -- the chain every (derived) run walks ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Made:
    """What distill -> relabel made (or reused, or were handed): the images and the label store."""
    images: DistilledImages
    image_dir: Path
    image_key: str
    images_reused: bool
    store: Path
    store_reused: bool
    given: bool = False     # the images are a set passed in (no distill artifact, no preview grid)


def images_and_labels(ctx: Context, teachers: list[Teacher], pool: list[Teacher] | None = None,
                      priors: list[float] | None = None, given: DistilledImages | None = None) -> Made:
    """distill -> load -> relabel, through the cache: the one place the chain is written (the run itself, the
    CV-DD priors' single-teacher runs and fair evaluation's reference sets all go through here). `teachers`
    relabel; `pool` distils (default: `distill_teachers`, cached)."""
    cfg = ctx.cfg
    if method_of(cfg.distill.method).given:
        images, image_key = given_images(ctx, given)
        image_dir, images_reused = Path(images.root), True
    else:
        pool = distill_teachers(ctx) if pool is None else pool
        image_dir, image_key, images_reused = stage_distill(ctx, pool, priors)
        images = distilled_images(ctx, image_dir)
    store_path, store_reused = stage_relabel(ctx, images, image_key, teachers)
    return Made(images, image_dir, image_key, images_reused, store_path, store_reused,
                given=method_of(cfg.distill.method).given)


def distilled_images(ctx: Context, image_dir: Path) -> DistilledImages:
    """A distill artifact's images, mapped from its array; an artifact made by an earlier hald (PNGs only) gets
    its array once as a cached derived artifact (distill/folder.py), as a given folder does."""
    classes = class_names(ctx.cfg.dataset)
    if array_beside(image_dir):
        return open_array(image_dir.parent, image_dir, classes)
    log.info("distill: %s has no image array (made by an earlier hald); its PNGs are decoded once into the cache",
             image_dir)
    return folder_array(ctx.cache, image_dir, classes, int(ctx.cfg.dataset.channels))
