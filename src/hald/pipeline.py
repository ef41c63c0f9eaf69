"""The pipeline: the only place stages meet. squeeze -> distill -> relabel -> train -> evaluate.

Each artifact stage is cached under paths.cache_dir/<stage>/<key>, where key hashes exactly the config and
upstream keys that determine it; a complete artifact is reused (the log says "reused"), so a sweep over slc
trains the teacher and makes the images once. Any artifact can be passed in instead: teacher.checkpoints,
distill=folder distill.path=..., labels.store=....
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from hald import artifacts, dist
from hald.data.datamodule import HALDDataModule, check_soft_batch, open_store_for
from hald.data.distilled import DistilledImages, load_distilled
from hald.data.holdout import holdout_views
from hald.data.sources import build_source, check_source
from hald.errors import ConfigError
from hald.labels.budget import LabelBudgetError, Plan, plan_passes, plan_store
from hald.labels.codecs import Codec
from hald.labels.relabel import groups_per_forward, relabel, store_fields
from hald.labels.store import FORMAT_VERSION, store_bytes
from hald.models import build_backbone, load_teacher
from hald.models.teachers import Committee, committee_weights
from hald.train.callbacks import ON_SWITCH, PhaseScheduler, analysis_callbacks, analysis_results
from hald.train.hyper import paper_lr_eta
from hald.train.module import StudentModule
from hald.train.resume import FiniteLoss, LastCheckpoint, RunState, StepSeed
from hald.train.schedule import make_schedule

log = logging.getLogger("hald")
TOP_LEVEL_KEYS = {"dataset", "model", "teacher", "distill", "labels", "schedule", "train", "soft_loss", "hard_loss",
                  "optimizer", "trainer", "logger", "paths", "seed", "ipc", "slc", "label_budget", "task_name", "tags", "hydra",
                  "experiment", "local", "evaluate"}


@dataclass
class Artifact:
    stage: str
    key: str
    path: Path
    manifest: dict[str, Any]
    reused: bool


@dataclass
class Context:
    cfg: DictConfig
    cache: Path
    timings: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)


def dataset_identity(ds: DictConfig) -> dict[str, Any]:
    """What determines the data: every dataset key except the download switch; roots made absolute."""
    d = OmegaConf.to_container(ds, resolve=True)
    d.pop("download", None)
    if d.get("root"):
        d["root"] = str(Path(d["root"]).expanduser().resolve())
    return d


def cached(ctx: Context, stage: str, key: str, config: Any, upstream: dict[str, str],
           build: Callable[[Path], dict[str, Any]], collective: bool = False) -> Artifact:
    """Reuse the complete artifact `<cache>/<stage>/<key>` or build it.

    In a DDP world (hald/dist.py) every rank takes rank 0's decision; a `collective` build runs on every rank
    (each writes only its own units; the non-zero ranks build into a scratch dir), any other build on rank 0
    alone. Rank 0 alone writes the manifest and renames the artifact into place; a failure on any rank stops
    every rank with nothing half-written."""
    path = ctx.cache / stage / key
    t0 = time.time()
    if dist.broadcast(artifacts.is_complete(path)):
        log.info("%s: reused %s", stage, path)
        return Artifact(stage, key, path, artifacts.read_manifest(path), reused=True)
    log.info("%s: building %s", stage, path)
    artifacts.check_writable(path.parent)

    def run_build(tmp: Path) -> dict[str, Any] | None:
        fields, error = None, None
        if collective or dist.rank() == 0:
            try:
                with (contextlib.nullcontext() if collective else dist.local_only()):
                    fields = build(tmp)
            except BaseException as e:  # noqa: BLE001  (re-raised below, on every rank)
                error = e
        if dist.any_rank(error is not None):
            raise error if error is not None else RuntimeError(f"{stage}: another rank failed building {path}")
        return fields

    if dist.rank() == 0:
        with artifacts.building(path) as tmp:
            fields = run_build(tmp)
            artifacts.finish(tmp, stage, key, config, upstream, world_size=dist.world(), **fields)
    else:
        artifacts.remove_stale(path.parent, key)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{key}.rank.{artifacts.owner()}.") as tmp:
            run_build(Path(tmp))
    dist.barrier()  # the artifact is in place for every rank
    ctx.timings[stage] = ctx.timings.get(stage, 0.0) + time.time() - t0  # several teachers: their sum
    return Artifact(stage, key, path, artifacts.read_manifest(path), reused=False)


def device_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Single-device trainer settings for work one process does (relabel passes, recover units, scoring):
    the accelerator from the trainer config, this rank's own device under DDP."""
    return {**dist.device_kwargs(cfg.trainer.get("accelerator", "auto")),
            "enable_progress_bar": cfg.trainer.get("enable_progress_bar", True)}


def squeeze_device_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Teacher training: data-parallel over the DDP world when there is one, else one device."""
    if not dist.active():
        return device_kwargs(cfg)
    return {"accelerator": cfg.trainer.get("accelerator", "auto"), "devices": cfg.trainer.devices,
            "num_nodes": int(cfg.trainer.get("num_nodes", 1)), "strategy": "ddp",
            "enable_progress_bar": cfg.trainer.get("enable_progress_bar", True)}


# -- pre-flight: every bad input stops here, before any stage runs ---------------------------------------------
def preflight(cfg: DictConfig) -> DistilledImages | None:
    """Check everything that can be checked before work starts; returns the images of distill=folder."""
    unknown = sorted(set(cfg.keys()) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; fix: remove them (see conf/config.yaml for the keys)")
    check_source(cfg.dataset)
    if cfg.optimizer.on_phase_switch not in ON_SWITCH:
        raise ConfigError(f"optimizer.on_phase_switch={cfg.optimizer.on_phase_switch}; fix: one of {ON_SWITCH}")
    try:
        make_schedule(cfg.schedule.preset, int(cfg.train.epochs), float(cfg.schedule.soft_fraction))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    images = None
    if cfg.distill.method == "folder":
        if OmegaConf.is_missing(cfg.distill, "path") or not cfg.distill.get("path"):
            raise ConfigError("distill=folder needs distill.path; fix: distill.path=/path/to/distilled/images")
        images = load_distilled(Path(cfg.distill.path).expanduser(), build_source(cfg.dataset, "test").classes,
                                int(cfg.dataset.channels))
    if cfg.labels.store is None:
        check_soft_batch(int(cfg.train.soft_batch_size), int(cfg.labels.batch_size))
        try:
            groups_per_forward(cfg.labels.get("groups_per_forward", "auto"), "cpu")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        ipc = images.ipc if images is not None else int(cfg.ipc)
        c = int(cfg.dataset.num_classes or len(build_source(cfg.dataset, "test").classes))
        try:  # the same planner relabel will use, on the image count it will see
            plan_relabel(cfg, n_images=len(images) if images is not None else ipc * c, ipc=ipc, num_classes=c)
        except LabelBudgetError:
            raise
        except ValueError as e:  # codec parameters
            raise ConfigError(str(e)) from None
    check_teachers(cfg.teacher, "teacher", cfg.dataset)
    if dist.wants_ddp(cfg.trainer):
        world = int(cfg.trainer.devices) * int(cfg.trainer.get("num_nodes", 1))
        if int(cfg.teacher.squeeze.batch_size) % world:
            raise ConfigError(f"teacher.squeeze.batch_size={cfg.teacher.squeeze.batch_size} is the global batch and "
                              f"must split evenly over {world} DDP processes; fix: a multiple of {world}")
    if cfg.distill.method != "folder":
        from hald.distill import check_method

        check_method(OmegaConf.to_container(cfg.distill, resolve=True), cfg.dataset)
    if cfg.distill.get("pool"):
        check_teachers(cfg.distill.pool, "distill.pool", cfg.dataset)
    if cfg.distill.get("pool") and needs_priors(cfg.distill):
        prior = cfg.distill.get("prior")
        if prior is None:
            raise ConfigError("committee weights softmax(alpha/T) need priors: give distill.priors=[...] or the "
                              "distill.prior settings that measure them; fix: distill=cvdd defaults")
        plan_passes(int(prior.slc), int(prior.ipc))
    return images


def check_teachers(tcfg: DictConfig, where: str, dataset: DictConfig | None = None) -> None:
    for ck in tcfg.checkpoints or []:
        if not Path(ck).is_file():
            raise ConfigError(f"teacher checkpoint '{ck}' does not exist; fix: {where}.checkpoints=[existing files]")
    if tcfg.checkpoints and len(tcfg.checkpoints) != len(tcfg.models):
        raise ConfigError(f"{len(tcfg.checkpoints)} teacher checkpoints for {len(tcfg.models)} "
                          f"teacher models; fix: one checkpoint per entry of {where}.models")
    if dataset is not None:
        from hald.models.build import check_checkpoint

        for name, ck in zip(tcfg.models, tcfg.checkpoints or []):
            check_checkpoint(name, Path(ck), dataset, where)


# -- stages ------------------------------------------------------------------------------------------------------
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
        from hald.squeeze import squeeze

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


def needs_priors(dcfg: Any) -> bool:
    """CV-DD committees weighted by softmax(alpha / T) need each pool teacher's prior alpha."""
    committee = dcfg.get("committee") or {}
    return (dcfg.get("priors") is None and committee.get("weights", "prior") == "prior"
            and int(committee.get("size", 1)) > 1)


def stage_distill(ctx: Context, teachers: list[dict[str, Any]]) -> tuple[Path, str, bool]:
    """Returns (image folder, key, reused).

    A method with its own `distill.pool` (CV-DD's committee) gets those teachers, squeezed like the pipeline's
    (the same model and recipe is the same cached teacher); otherwise the pipeline's. Measured priors become
    part of the config and key. Recover keeps finished units in `<cache>/distill/.partial-<key>/` until the
    artifact is complete, so a killed run resumes (hald/units.py).
    """
    cfg = ctx.cfg
    if cfg.distill.method == "folder":
        return Path(cfg.distill.path).expanduser().resolve(), "folder", True
    from hald.distill import COLLECTIVE, METHODS

    if cfg.distill.method not in METHODS:
        raise ConfigError(f"unknown distill method '{cfg.distill.method}'; fix: distill=one of "
                          f"{sorted(METHODS) + ['folder']}")
    ds = dataset_identity(cfg.dataset)
    dcfg = OmegaConf.to_container(cfg.distill, resolve=True)
    relabel_teachers = teachers
    if dcfg.get("pool"):
        teachers = squeeze_teachers(ctx, cfg.distill.pool)
    if dcfg.get("pool") and needs_priors(dcfg):
        dcfg["priors"] = stage_priors(ctx, teachers, relabel_teachers)
    key = artifacts.key_of(ds, dcfg, [t["key"] for t in teachers] if dcfg.get("uses_teacher") else [])
    upstream = {t["name"]: t["key"] for t in teachers} if dcfg.get("uses_teacher") else {}
    work_dir = ctx.cache / "distill" / f".partial-{key}"
    source = build_source(cfg.dataset, "train")
    classes = source.classes  # recorded: a set used with other classes is refused (train's, so priors never open test)
    if dcfg.get("holdout"):  # priors: distil from the train split minus the part that measures them
        source, _ = holdout_views(source, float(dcfg["holdout"]["fraction"]), int(dcfg["holdout"]["seed"]))
    art = cached(ctx, "distill", key, {"dataset": ds, "distill": dcfg}, upstream,
                 lambda tmp: {**METHODS[cfg.distill.method](source=source, dataset=cfg.dataset, out_dir=tmp,
                                                            teachers=teachers, trainer_kwargs=device_kwargs(cfg),
                                                            work_dir=work_dir, **dcfg), "classes": list(classes)},
                 collective=cfg.distill.method in COLLECTIVE)
    shutil.rmtree(work_dir, ignore_errors=True)  # its units are in the complete artifact now
    return art.path / art.manifest["images_dir"], key, art.reused


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
    d.update(method="sre2lpp" if d.get("init") == "rded" else "sre2l", pool=single, ipc=int(p.ipc),
             iterations=int(p.iterations), priors=None, holdout={"fraction": float(p.holdout), "seed": int(p.seed)},
             committee={"size": 1, "mode": "fixed", "fixed": [0], "weights": "equal"})
    pcfg = copy.deepcopy(cfg)
    with open_dict(pcfg):
        pcfg.distill = d
        pcfg.ipc, pcfg.slc = int(p.ipc), int(p.slc)
        if "label_budget" in pcfg:  # priors size their labels by slc, never by a byte budget
            pcfg.label_budget = None
        pcfg.labels.store = None
        pcfg.train.epochs, pcfg.train.resume = int(p.epochs), False
        pcfg.schedule.preset = str(p.get("schedule") or cfg.schedule.preset)
        pcfg.logger = {}
        pcfg.trainer.devices, pcfg.trainer.strategy, pcfg.trainer.sync_batchnorm = 1, "auto", False
    return pcfg


def training_identity(cfg: DictConfig) -> dict[str, Any]:
    """What determines a student training besides its images and labels (the key of a cached training)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in ("model", "train", "schedule", "optimizer", "soft_loss", "hard_loss", "seed")}


def stage_priors(ctx: Context, pool: list[dict[str, Any]], relabel_teachers: list[dict[str, Any]]) -> list[float]:
    """CV-DD's prior performance alpha of each pool teacher: the top-1 (%) of a student trained on that
    teacher's own single-model distilled set, measured on a held-out part of the TRAIN split that the set
    was not drawn from; never on the test split (the official code's test-set leak). Cached per teacher."""
    cfg = ctx.cfg
    alphas, t0 = [], time.time()
    for i, t in enumerate(pool):
        pcfg = prior_config(cfg, i)
        pctx = Context(pcfg, ctx.cache)
        train = build_source(cfg.dataset, "train")
        image_dir, image_key, _ = stage_distill(pctx, relabel_teachers)
        images = load_distilled(image_dir, train.classes, int(cfg.dataset.channels))
        store_path, _ = stage_relabel(pctx, images, image_key, relabel_teachers)
        training = training_identity(pcfg)
        holdout = pcfg.distill.holdout

        def build(tmp: Path) -> dict[str, Any]:
            _, held = holdout_views(train, float(holdout.fraction), int(holdout.seed))
            with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".prior-student.") as run_dir:
                res = stage_train(pctx, images, store_path, Path(run_dir), eval_source=held)
            log.info("prior of %s: %.2f%% on %d held-out train images", t["name"], res["top1"], len(held))
            return {"teacher": t["name"], "top1": res["top1"], "measured_on": "train-holdout",
                    "holdout_items": len(held), "holdout_indices": held.base_indices}

        art = cached(ctx, "priors", artifacts.key_of(image_key, store_path.name, training),
                     {"teacher": t["name"], "training": training, "holdout": OmegaConf.to_container(holdout)},
                     {"images": image_key, "labels": store_path.name, t["name"]: t["key"]}, build)
        alphas.append(float(art.manifest["top1"]))
    ctx.timings["priors"] = time.time() - t0
    log.info("committee priors: %s", dict(zip([t["name"] for t in pool], alphas)))
    return alphas


def build_committee(cfg: DictConfig, teachers: list[dict[str, Any]]) -> Committee:
    ds = cfg.dataset
    nets = [load_teacher(t["name"], int(ds.num_classes), int(ds.channels), int(ds.input_size), t["weights"],
                         cfg.teacher.pretrained) for t in teachers]
    if cfg.teacher.weights == "equal":
        w = committee_weights(len(nets))
    elif cfg.teacher.weights == "score":
        scores = cfg.teacher.scores
        if scores is None:
            raise ConfigError("teacher.weights=score needs teacher.scores (one per teacher, e.g. held-out top-1 %); "
                              "fix: teacher.scores=[...] or teacher.weights=equal")
        w = committee_weights(len(nets), list(scores))
    else:
        raise ConfigError(f"teacher.weights={cfg.teacher.weights}; fix: equal or score")
    return Committee(nets, w, cfg.labels.teacher_mode)


def relabel_config(cfg: DictConfig) -> dict[str, Any]:
    """The labels subtree that determines a store (paths and worker counts excluded), plus the budget."""
    lcfg = OmegaConf.to_container(cfg.labels, resolve=True)
    for k in ("store", "num_workers", "groups_per_forward"):
        lcfg.pop(k, None)
    lcfg["label_budget"] = cfg.get("label_budget")
    return lcfg


def plan_relabel(cfg: DictConfig, n_images: int, ipc: int, num_classes: int,
                 images: DistilledImages | None = None) -> Plan:
    """Passes and codec for this run; the manifest reserve is measured on a mock of the real manifest."""
    def manifest_bytes(sli: int, codec: Codec) -> int:
        from hald.artifacts import build_manifest, manifest_size

        fake = DistilledImages(torch.zeros(0), torch.zeros(n_images, dtype=torch.long), [],
                               [str(c) for c in (images.classes if images else range(num_classes))], "0" * 64)
        plan = Plan(sli, codec, 10**12, 0, 10**12)
        shards = [{"file": f"pass_{p:04d}.safetensors", "pass": p, "records": 10**6, "images": 10**7,
                   "bytes": 10**12} for p in range(sli)]
        committee = Committee([torch.nn.Identity() for _ in cfg.teacher.models], mode=cfg.labels.teacher_mode)
        fields = store_fields(fake, plan, cfg.labels, cfg.dataset, committee, shards)
        fields.update({"ipc": ipc, "slc": sli * ipc, "dataset": cfg.dataset.name,
                       "teachers": [{"name": n, "key": "0" * 12, "source": "checkpoint"} for n in cfg.teacher.models]})
        files = {s["file"]: {"bytes": 10**12, "sha256": "0" * 64} for s in shards}
        mock = build_manifest("relabel", "0" * 12, {"labels": relabel_config(cfg), "teachers": teacher_config(cfg)},
                              {"images": "0" * 12}, files, **fields)
        return manifest_size(mock) + 256  # slack for longer numbers in the real one

    return plan_store(cfg.labels.codec, n_images, ipc, num_classes, int(cfg.labels.batch_size), cfg.get("slc"),
                      cfg.get("label_budget"), manifest_bytes)


def teacher_config(cfg: DictConfig, teachers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"teachers": [t["key"] for t in teachers] if teachers else [str(m) for m in cfg.teacher.models],
            "weights": cfg.teacher.weights, "scores": OmegaConf.to_container(cfg.teacher, resolve=True).get("scores")}


def stage_relabel(ctx: Context, images: DistilledImages, image_key: str, teachers: list[dict[str, Any]]
                  ) -> tuple[Path, bool]:
    cfg = ctx.cfg
    if cfg.labels.store is not None:
        return Path(cfg.labels.store).expanduser().resolve(), True
    plan = plan_relabel(cfg, len(images), images.ipc, len(images.classes), images)
    lcfg, tcfg = relabel_config(cfg), teacher_config(cfg, teachers)
    key = artifacts.key_of(images.sha256, lcfg, tcfg, FORMAT_VERSION)

    work_dir = ctx.cache / "relabel" / f".partial-{key}"  # finished passes between runs (resume)

    def build(tmp: Path) -> dict[str, Any]:
        committee = build_committee(cfg, teachers)
        fields = relabel(images, committee, plan, cfg.labels, cfg.dataset, tmp, device_kwargs(cfg), work_dir)
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


def resolve_lr(cfg: DictConfig, ipc: int) -> tuple[float, float]:
    lr, eta = cfg.optimizer.lr, cfg.optimizer.eta
    paper = paper_lr_eta(cfg.dataset.name, cfg.model.name, ipc)
    fallback = (float(cfg.optimizer.default_lr), float(cfg.optimizer.default_eta))
    auto = paper or fallback
    return (float(auto[0]) if lr == "auto" else float(lr), float(auto[1]) if eta == "auto" else float(eta))


def build_loggers(cfg: DictConfig) -> list:
    from hydra.utils import instantiate

    if not cfg.get("logger"):
        return []
    return [instantiate(lg) for lg in cfg.logger.values() if lg is not None and "_target_" in lg]


def stage_train(ctx: Context, images: DistilledImages, store_path: Path, out_dir: Path,
                eval_source: Any = None, preview: Path | None = None) -> dict[str, Any]:
    """Train and test the student; `eval_source` replaces the test split (CV-DD priors: held-out train)."""
    cfg = ctx.cfg
    store = open_store_for(store_path, images, cfg.dataset)
    check_soft_batch(int(cfg.train.soft_batch_size), store.batch_size)
    block = cfg.schedule.block or store.passes
    schedule = make_schedule(cfg.schedule.preset, int(cfg.train.epochs), float(cfg.schedule.soft_fraction), int(block))
    lr, eta = resolve_lr(cfg, images.ipc)
    ds = cfg.dataset
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    net = build_backbone(cfg.model.name, int(ds.num_classes), int(ds.channels), int(ds.input_size))
    module = StudentModule(net, int(ds.num_classes), schedule, lr=lr, eta=eta,
                           weight_decay=float(cfg.optimizer.weight_decay), betas=tuple(cfg.optimizer.betas),
                           temperature=float(cfg.soft_loss.temperature), t2=bool(cfg.soft_loss.t2),
                           hard_cutmix_alpha=float(cfg.hard_loss.cutmix_alpha),
                           label_smoothing=float(cfg.hard_loss.label_smoothing),
                           hard_temperature=float(cfg.hard_loss.temperature))
    dm = HALDDataModule(images, store_path, ds, schedule, int(cfg.train.soft_batch_size),
                        int(cfg.train.hard_batch_size), seed=int(cfg.seed), num_workers=int(cfg.train.num_workers),
                        eval_batch_size=int(cfg.train.eval_batch_size),
                        hard_crop_scale=tuple(cfg.hard_loss.crop_scale), hard_flip_p=float(cfg.hard_loss.flip_p),
                        eval_source=eval_source)
    dm.store = store
    phases = PhaseScheduler(schedule, cfg.optimizer.on_phase_switch, int(cfg.train.eval_every),
                            bool(cfg.train.eval_phase_ends))
    last_ckpt = out_dir / "checkpoints" / "last.ckpt"
    ckpt = LastCheckpoint(last_ckpt, int(cfg.train.checkpoint_every))  # atomic, after every N epochs and the last
    loggers = build_loggers(cfg)
    probes = analysis_callbacks(cfg, images, store, schedule)  # crop consistency, gradient similarity
    callbacks = [phases, ckpt, StepSeed(int(cfg.seed)), RunState(), FiniteLoss(), *probes] + (
        [L.pytorch.callbacks.LearningRateMonitor("epoch")] if loggers else [])
    trainer = L.Trainer(max_epochs=schedule.total_epochs, reload_dataloaders_every_n_epochs=1,
                        num_sanity_val_steps=0, callbacks=callbacks, logger=loggers or False,
                        default_root_dir=str(out_dir),
                        **OmegaConf.to_container(cfg.trainer, resolve=True))
    label_bytes = store_bytes(store_path)
    for lg in loggers:
        lg.log_hyperparams({"labels/bytes": label_bytes, "labels/slc": store.manifest["slc"],
                            "labels/sli": store.passes, "ipc": images.ipc, "lr": lr, "eta": eta,
                            "schedule": schedule.timeline()})
        lg.log_metrics({"labels/bytes": float(label_bytes)}, step=0)
        if preview is not None and hasattr(lg, "log_image"):  # W&B: the distilled images as one grid
            lg.log_image("distill/images", [str(preview)])
    t0 = time.time()
    resume = str(last_ckpt) if cfg.train.resume and last_ckpt.is_file() else None
    if cfg.train.resume:
        log.info("train: %s", f"resuming from {last_ckpt}" if resume else
                 "train.resume=true but no checkpoint yet: starting from epoch 0")
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    ctx.timings["train"] = time.time() - t0
    t0 = time.time()
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    ctx.timings["evaluate"] = time.time() - t0
    return {"top1": float(test["test/top1"]), "top5": float(test["test/top5"]),
            "top1_best": max([e["top1"] for e in module.eval_log], default=None),
            "eval_log": module.eval_log, "schedule": schedule.timeline(),
            "phase_audit": {e: sorted(p) for e, p in sorted(module.epoch_paths.items())}, "lr": lr, "eta": eta,
            "label_bytes": label_bytes, "slc": store.manifest["slc"], "sli": store.passes,
            "codec": store.codec.describe(), "label_budget": store.manifest.get("label_budget"),
            "ipc": images.ipc, "store": str(store_path), **analysis_results(probes),
            "is_global_zero": trainer.is_global_zero}


# -- the whole trip ------------------------------------------------------------------------------------------------
def run(cfg: DictConfig, out_dir: Path | None = None) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    folder_images = preflight(cfg)
    if dist.wants_ddp(cfg.trainer):  # every stage in the DDP world: ranks > 0 re-run this script (dist.py)
        dist.launch(cfg.trainer)
    if out_dir is None:
        out_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg, Path(cfg.paths.cache_dir).expanduser().resolve())
    teachers = stage_squeeze(ctx)
    image_dir, image_key, images_reused = stage_distill(ctx, teachers)
    images = folder_images or load_distilled(image_dir, build_source(cfg.dataset, "test").classes,
                                             int(cfg.dataset.channels))
    store_path, store_reused = stage_relabel(ctx, images, image_key, teachers)
    preview = image_dir.parent / "grid.png" if image_key != "folder" else None
    if preview is not None and preview.is_file():
        shutil.copy2(preview, out_dir / "distilled_grid.png")
    else:
        preview = None
    result = stage_train(ctx, images, store_path, out_dir, preview=preview)
    is_global_zero = result.pop("is_global_zero")
    from hald.evaluate.stage import stage_evaluate

    result.update(stage_evaluate(ctx, teachers, images, store_path, result, out_dir))  # evaluate=fair, lvsd
    summary = {
        "dataset": cfg.dataset.name, "student": cfg.model.name,
        "teachers": [{"name": t["name"], "top1": t["top1"], "source": t["source"], "reused": t["reused"]}
                     for t in teachers],
        "distill": cfg.distill.method, "images": str(image_dir), "images_reused": images_reused,
        "labels_reused": store_reused, "timings_s": {k: round(v, 1) for k, v in ctx.timings.items()},
        "output_dir": str(out_dir), **result,
    }
    if is_global_zero:
        artifacts.write_json_atomic(out_dir / "results.json", summary)
        from hald.evaluate.summary import print_summary

        print_summary(summary)
    return summary
