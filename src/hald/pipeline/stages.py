"""The artifact stages: squeeze (teachers), distill (images), relabel (label store), each cached by content.

Any artifact can be passed in instead of built: teacher.checkpoints, distill=folder distill.path=...,
labels.store=.... Student training, which makes no cached artifact of its own, is in `student.py`.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hald import artifacts
from hald.data.distilled import DistilledImages, load_distilled
from hald.data.holdout import holdout_views
from hald.data.sources import build_source, class_names
from hald.distill import COLLECTIVE, METHODS
from hald.errors import ConfigError
from hald.labels.budget import Plan, plan_store
from hald.labels.relabel import manifest_reserve, relabel
from hald.labels.store import FORMAT_VERSION, store_bytes
from hald.models.teachers import Committee, build_committee, committee_weights
from hald.pipeline.cache import Context, cached, dataset_identity, device_kwargs, squeeze_device_kwargs
from hald.squeeze import squeeze

log = logging.getLogger("hald")


# -- squeeze -----------------------------------------------------------------------------------------------------
def stage_squeeze(ctx: Context) -> list[dict[str, Any]]:
    """The pipeline's teacher(s), which relabel: one entry per model of `teacher`."""
    return squeeze_teachers(ctx, ctx.cfg.teacher)


def squeeze_teachers(ctx: Context, tcfg: DictConfig) -> list[dict[str, Any]]:
    """One entry per model of a teacher config (`teacher`, or a distill method's own `distill.pool`):
    {name, key, weights (path or None), top1, reused, source}. Same model and recipe = same cached teacher."""
    cfg = ctx.cfg
    ds = dataset_identity(cfg.dataset)
    teachers = []
    for i, name in enumerate(tcfg.models):
        if tcfg.checkpoints:
            ck = Path(tcfg.checkpoints[i]).resolve()
            teachers.append({"name": name, "key": artifacts.key_of(str(ck), ck.stat().st_size, ck.stat().st_mtime),
                             "weights": str(ck), "top1": None, "reused": True, "source": "checkpoint"})
            continue
        if tcfg.pretrained:
            teachers.append({"name": name, "key": artifacts.key_of(name, tcfg.pretrained), "weights": None,
                             "top1": None, "reused": True, "source": tcfg.pretrained})
            continue
        sq = tcfg.squeeze
        key = artifacts.key_of(ds, name, sq, cfg.seed)
        work_dir = ctx.cache / "squeeze" / f".partial-{key}"  # last.ckpt between runs (resume)
        art = cached(ctx, "squeeze", key, {"dataset": ds, "model": name, "squeeze": sq, "seed": cfg.seed}, {},
                     lambda tmp: squeeze(name, cfg.dataset, sq, tmp, squeeze_device_kwargs(cfg), int(cfg.seed),
                                         work_dir), collective=True)
        shutil.rmtree(work_dir, ignore_errors=True)  # the artifact is complete
        teachers.append({"name": name, "key": key, "weights": str(art.path / "teacher.safetensors"),
                         "top1": art.manifest["test_top1"], "reused": art.reused, "source": "squeeze"})
    return teachers


def needs_teacher(cfg: DictConfig) -> bool:
    """The pipeline's teacher is made only when something uses it: relabel, a method that distils with it
    (a method with its own `distill.pool` squeezes that instead), CV-DD's prior runs (they relabel), or an
    analysis. A label store passed in with distill=random/folder needs none. A teacher given as a checkpoint or
    pretrained weights costs nothing, and is listed in the summary."""
    ev = cfg.get("evaluate") or {}
    distils_with_it = (cfg.distill.method != "folder" and bool(cfg.distill.get("uses_teacher"))
                       and not cfg.distill.get("pool"))
    priors = bool(cfg.distill.get("pool")) and needs_priors(cfg.distill)
    given = bool(cfg.teacher.checkpoints) or bool(cfg.teacher.pretrained)
    return (cfg.labels.store is None or distils_with_it or priors or given or bool(ev.get("fair"))
            or bool(ev.get("lvsd")))


# -- distill -----------------------------------------------------------------------------------------------------
def needs_priors(dcfg: Any) -> bool:
    """CV-DD committees weighted by softmax(alpha / T) need each pool teacher's prior alpha."""
    committee = dcfg.get("committee") or {}
    return (dcfg.get("priors") is None and committee.get("weights", "prior") == "prior"
            and int(committee.get("size", 1)) > 1)


def stage_distill(ctx: Context, teachers: list[dict[str, Any]], priors: list[float] | None = None
                  ) -> tuple[Path, str, bool]:
    """Returns (image folder, key, reused).

    A method with its own `distill.pool` (CV-DD's committee) gets those teachers, squeezed like the pipeline's
    (the same model and recipe is the same cached teacher); otherwise the pipeline's. `priors` (measured by
    pipeline/priors.py) become part of the config and key. Recover keeps finished units in
    `<cache>/distill/.partial-<key>/` until the artifact is complete, so a killed run resumes (hald/units.py).
    """
    cfg = ctx.cfg
    if cfg.distill.method == "folder":
        return Path(cfg.distill.path).expanduser().resolve(), "folder", True
    if cfg.distill.method not in METHODS:
        raise ConfigError(f"unknown distill method '{cfg.distill.method}'; fix: distill=one of "
                          f"{sorted(METHODS) + ['folder']}")
    ds = dataset_identity(cfg.dataset)
    dcfg = OmegaConf.to_container(cfg.distill, resolve=True)
    if dcfg.get("pool"):
        teachers = squeeze_teachers(ctx, cfg.distill.pool)
    if dcfg.get("pool") and needs_priors(dcfg):
        if priors is None:
            raise RuntimeError("stage_distill: this committee needs priors (pipeline/priors.py measures them)")
        dcfg["priors"] = list(priors)
    key = artifacts.key_of(ds, dcfg, [t["key"] for t in teachers] if dcfg.get("uses_teacher") else [])
    upstream = {t["name"]: t["key"] for t in teachers} if dcfg.get("uses_teacher") else {}
    work_dir = ctx.cache / "distill" / f".partial-{key}"

    def build(tmp: Path) -> dict[str, Any]:
        source = build_source(cfg.dataset, "train")
        classes = source.classes  # recorded: a set used with other classes is refused
        if dcfg.get("holdout"):  # priors: distil from the train split minus the part that measures them
            source, _ = holdout_views(source, float(dcfg["holdout"]["fraction"]), int(dcfg["holdout"]["seed"]))
        made = METHODS[cfg.distill.method](source=source, dataset=cfg.dataset, out_dir=tmp, teachers=teachers,
                                           trainer_kwargs=device_kwargs(cfg), work_dir=work_dir, **dcfg)
        return {**made, "classes": list(classes)}

    art = cached(ctx, "distill", key, {"dataset": ds, "distill": dcfg}, upstream, build,
                 collective=cfg.distill.method in COLLECTIVE)
    shutil.rmtree(work_dir, ignore_errors=True)  # its units are in the complete artifact now
    return art.path / art.manifest["images_dir"], key, art.reused


# -- relabel -----------------------------------------------------------------------------------------------------
def relabel_config(cfg: DictConfig) -> dict[str, Any]:
    """The labels subtree that determines a store (paths and worker counts excluded), plus the budget."""
    lcfg = OmegaConf.to_container(cfg.labels, resolve=True)
    for k in ("store", "num_workers", "groups_per_forward"):
        lcfg.pop(k, None)
    lcfg["label_budget"] = cfg.get("label_budget")
    return lcfg


def teacher_config(cfg: DictConfig, teachers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"teachers": [t["key"] for t in teachers] if teachers else [str(m) for m in cfg.teacher.models],
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


def relabel_committee(cfg: DictConfig, teachers: list[dict[str, Any]]) -> Committee:
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


def stage_relabel(ctx: Context, images: DistilledImages, image_key: str, teachers: list[dict[str, Any]]
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
                         device_kwargs(cfg), work_dir)
        return {"dataset": cfg.dataset.name,
                "teachers": [{"name": t["name"], "key": t["key"], "source": t["source"]} for t in teachers],
                **fields}

    art = cached(ctx, "relabel", key, {"labels": lcfg, "teachers": tcfg}, {"images": image_key}, build,
                 collective=True)
    shutil.rmtree(work_dir, ignore_errors=True)  # the artifact is complete
    if plan.budget is not None and store_bytes(art.path) > plan.budget:
        raise RuntimeError(f"label store {art.path} has {store_bytes(art.path)} B, over the budget {plan.budget} B "
                           f"(planner bug: please report)")
    return art.path, art.reused


# -- the chain every (derived) run walks ---------------------------------------------------------------------------
def images_and_labels(ctx: Context, teachers: list[dict[str, Any]], priors: list[float] | None = None,
                      folder_images: DistilledImages | None = None) -> dict[str, Any]:
    """distill -> load -> relabel, through the cache: the one place the chain is written (the run itself, the
    CV-DD priors' single-teacher runs and fair evaluation's reference sets all go through here)."""
    cfg = ctx.cfg
    image_dir, image_key, images_reused = stage_distill(ctx, teachers, priors)
    images = folder_images or load_distilled(image_dir, class_names(cfg.dataset), int(cfg.dataset.channels))
    store_path, store_reused = stage_relabel(ctx, images, image_key, teachers)
    return {"images": images, "image_dir": image_dir, "image_key": image_key, "images_reused": images_reused,
            "store": store_path, "store_reused": store_reused}
