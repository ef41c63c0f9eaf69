"""Student training: the LightningModule and DataModule built from `conf/student` with Hydra's `instantiate`,
trained over the phase schedule and tested. Used by the run itself and by every derived training (CV-DD
priors, fair evaluation), which only change the config."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hald.console import progress_callbacks
from hald.data.distilled import DistilledImages
from hald.evaluate.protocols import Protocol
from hald.evaluate.summary import best_every
from hald.data.sources import build_source
from hald.labels.store import open_store_for, store_bytes
from hald.models import build_backbone
from hald.pipeline.cache import Context, student_precision
from hald.pipeline.tracking import build_loggers, log_run_start
from hald.train.callbacks import PhaseScheduler, analysis_callbacks, analysis_results
from hald.train.export import export_student
from hald.train.hyper import paper_lr_eta
from hald.train.identity import check_resume, run_identity, saved_identity
from hald.train.resume import FiniteLoss, LastCheckpoint, RunState, StepSeed, usable_checkpoint
from hald.train.schedule import Schedule, make_schedule

log = logging.getLogger("hald")


def resolve_lr(cfg: DictConfig, ipc: int) -> tuple[float, float]:
    """`optimizer.lr/eta: auto` = the HALD paper's table for its datasets, else `default_lr/eta`."""
    lr, eta = cfg.optimizer.lr, cfg.optimizer.eta
    paper = paper_lr_eta(cfg.dataset.name, cfg.model.name, ipc)
    auto = paper or (float(cfg.optimizer.default_lr), float(cfg.optimizer.default_eta))
    return (float(auto[0]) if lr == "auto" else float(lr), float(auto[1]) if eta == "auto" else float(eta))


@dataclass(frozen=True)
class TrainResult:
    """A trained and tested student: accuracies (%), when they were measured, and the labels it used."""
    top1: float
    top5: float
    top1_best: float | None
    top1_best_every: dict[str, Any] | None
    eval_log: list[dict[str, Any]]
    schedule: str
    phase_audit: dict[int, list[str]]
    lr: float
    eta: float
    label_bytes: int
    slc: int
    sli: int
    codec: str
    label_budget: Any
    ipc: int
    store: str
    analyses: dict[str, list[dict]] = field(default_factory=dict)  # probe histories (consistency, grad_sim)
    resumed: dict[str, Any] | None = None  # from which epoch, across which accepted changes (train.resume)
    label_settings: dict[str, Any] = field(default_factory=dict)  # T, teacher mode, crops, codec: the store's
    top1_protocol: dict[str, Any] = field(default_factory=dict)  # the accuracy under evaluate.protocol's rule

    def summary(self) -> dict[str, Any]:
        """The results.json fields of the training (the probes' histories at the top level)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "analyses"}
        return {**out, **self.analyses}


def build_schedule(cfg: DictConfig, passes: int) -> Schedule:
    """The phase schedule of a training (`schedule.preset`, or explicit `schedule.segments`) over
    train.epochs; `passes` = the store's SLI (the block length n of S2-S5 unless schedule.block sets it)."""
    s = cfg.schedule
    segments = OmegaConf.to_container(s.segments, resolve=True) if s.get("segments") else None
    return make_schedule(s.preset, int(cfg.train.epochs), float(s.soft_fraction), int(s.block or passes),
                         s.get("pool", "run"), segments)


def last_checkpoint(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints" / "last.ckpt"


def check_resume_config(cfg: DictConfig, out_dir: Path) -> None:
    """Pre-flight for train.resume=true: the run dir's checkpoint must be of this run's config (up to
    train.resume_across), before any stage builds anything. An unreadable checkpoint is left to
    `usable_checkpoint`, which sets it aside when training starts."""
    ckpt = last_checkpoint(out_dir)
    if not cfg.train.resume or not ckpt.is_file():
        return
    try:
        saved = saved_identity(ckpt)
    except Exception:  # noqa: BLE001  (truncated, not a checkpoint: handled at training start)
        return
    check_resume(saved, run_identity(cfg), "config", list(cfg.train.resume_across), ckpt)


def stage_train(ctx: Context, images: DistilledImages, store_path: Path, out_dir: Path,
                eval_source: Any = None, preview: Path | None = None,
                lineage: dict[str, Any] | None = None) -> TrainResult:
    """Train and test the student; `eval_source` replaces the test split (CV-DD priors: held-out train);
    `lineage` (the artifacts' cache keys) goes to the experiment tracker."""
    cfg = ctx.cfg
    ds = cfg.dataset
    store = open_store_for(store_path, images, ds)
    schedule = build_schedule(cfg, store.passes)
    lr, eta = resolve_lr(cfg, images.ipc)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    net = build_backbone(cfg.model.name, int(ds.num_classes), int(ds.channels), int(ds.input_size))
    phases = instantiate(cfg.student.phases)  # each phase's loader, rendering and loss (conf/student)
    dm = instantiate(cfg.student.datamodule)(distilled=images, store=store, dataset=OmegaConf.to_container(ds, resolve=True),
                                             schedule=schedule, phases=phases,
                                             eval_source=eval_source or build_source(ds, "test"))
    precision = student_precision(cfg)
    module = instantiate(cfg.student.module)(net=net, num_classes=int(ds.num_classes), schedule=schedule,
                                             phases=dm.phases, lr=lr, eta=eta,
                                             channels_last=bool(cfg.compute.channels_last),
                                             compile=bool(cfg.compute.compile))
    last_ckpt = last_checkpoint(out_dir)
    resume, done_epoch = usable_checkpoint(last_ckpt) if cfg.train.resume else (None, None)
    # What this training is: its config and the content of its images and labels (train/identity.py).
    identity = run_identity(cfg, {"images": images.sha256, "labels": str(store.manifest.get("manifest_sha256",
                                                                                             store_path.name))})
    resumed = None
    if resume is not None:
        saved = saved_identity(Path(resume))
        across = list(cfg.train.resume_across)
        accepted = {**check_resume(saved, identity, "config", across, last_ckpt),
                    **check_resume(saved, identity, "artifacts", across, last_ckpt)}
        resumed = {"from_epoch": done_epoch, "across": {k: list(v) for k, v in accepted.items()}}
    loggers = build_loggers(cfg, out_dir, resuming=resume is not None, done_epoch=done_epoch)
    log_run_start(loggers, cfg, out_dir, {**(lineage or {}), "labels": store_path.name})
    probes = analysis_callbacks(cfg, images, dm.phases, schedule)  # crop consistency, gradient similarity
    protocol = Protocol.of(cfg.evaluate.protocol)  # its accuracy rule adds the evaluations it reads
    callbacks = [PhaseScheduler(schedule, cfg.optimizer.on_phase_switch, int(cfg.train.eval_every),
                                bool(cfg.train.eval_phase_ends), int(cfg.train.eval_offset),
                                protocol.check_epochs(schedule.total_epochs)),
                 LastCheckpoint(last_ckpt, int(cfg.train.checkpoint_every)),  # atomic, every N epochs and the last
                 StepSeed(int(cfg.seed)), RunState(identity), FiniteLoss(), *probes,
                 *progress_callbacks(bool(cfg.trainer.get("enable_progress_bar", True)), "student")] + (
        [L.pytorch.callbacks.LearningRateMonitor("epoch")] if loggers else [])
    trainer = L.Trainer(max_epochs=schedule.total_epochs, reload_dataloaders_every_n_epochs=1,
                        num_sanity_val_steps=0, callbacks=callbacks, logger=loggers or False,
                        default_root_dir=str(out_dir),
                        # Lightning's layer table is chatter in a log (trainer.enable_model_summary=true shows it)
                        **{"enable_model_summary": False, **OmegaConf.to_container(cfg.trainer, resolve=True),
                           "precision": precision})
    label_bytes = store_bytes(store_path)
    for lg in loggers:
        lg.log_hyperparams({"labels/bytes": label_bytes, "labels/slc": store.manifest["slc"],
                            "labels/sli": store.passes, "ipc": images.ipc, "lr": lr, "eta": eta,
                            "schedule": schedule.timeline()})
        lg.log_metrics({"labels/bytes": float(label_bytes)}, step=0)
        if preview is not None and hasattr(lg, "log_image"):  # W&B: the distilled images as one grid
            lg.log_image("distill/images", [str(preview)])
    t0 = time.time()
    if cfg.train.resume:
        log.info("train: %s", (f"resuming from {last_ckpt} (epoch {done_epoch} done"
                               + (f"; across {', '.join(resumed['across'])}" if resumed["across"] else "") + ")")
                 if resume else "train.resume=true but no checkpoint yet: starting from epoch 0")
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    ctx.timings["train"] = time.time() - t0
    t0 = time.time()
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    ctx.timings["evaluate"] = time.time() - t0
    if trainer.is_global_zero:  # plain weights + what rebuilds them, for use outside hald
        export_student(module.net, out_dir, cfg.model.name, ds, images.classes, top1=float(test["test/top1"]))
    return TrainResult(
        top1=float(test["test/top1"]), top5=float(test["test/top5"]),
        top1_best=max([e["top1"] for e in module.eval_log], default=None),
        top1_best_every=best_every(module.eval_log, int(cfg.train.eval_every), schedule.total_epochs),
        eval_log=module.eval_log, schedule=schedule.timeline(),
        phase_audit={e: sorted(p) for e, p in sorted(module.epoch_paths.items())}, lr=lr, eta=eta,
        label_bytes=label_bytes, slc=store.manifest["slc"], sli=store.passes, codec=store.codec.describe(),
        label_budget=store.manifest.get("label_budget"), ipc=images.ipc, store=str(store_path),
        analyses=analysis_results(probes), resumed=resumed, label_settings=store.settings,
        top1_protocol=protocol.top1(module.eval_log, float(test["test/top1"]), schedule.total_epochs))
