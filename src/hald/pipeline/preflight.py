"""Pre-flight: every input that can be checked before work starts is checked here, in seconds, so a bad run
stops with one "cause; fix:" line instead of after hours of squeeze or recover."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hald import dist
from hald.data.distilled import DistilledImages, load_distilled
from hald.data.sources import check_source, class_names
from hald.distill import check_method
from hald.errors import ConfigError, InputError
from hald.labels.budget import plan_passes
from hald.labels.relabel import groups_per_forward
from hald.labels.store import check_soft_batch
from hald.models.build import check_checkpoint
from hald.pipeline.stages import needs_priors, plan_relabel
from hald.train.callbacks import ON_SWITCH
from hald.train.schedule import make_schedule

TOP_LEVEL_KEYS = {"dataset", "model", "teacher", "distill", "labels", "schedule", "train", "soft_loss", "hard_loss",
                  "optimizer", "trainer", "logger", "paths", "seed", "ipc", "slc", "label_budget", "task_name", "tags",
                  "hydra", "experiment", "local", "evaluate", "student"}


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
        images = load_distilled(Path(cfg.distill.path).expanduser(), class_names(cfg.dataset),
                                int(cfg.dataset.channels))
    if cfg.labels.store is None:
        check_labels(cfg, images)
    check_teachers(cfg.teacher, "teacher", cfg.dataset)
    if dist.wants_ddp(cfg.trainer):
        world = int(cfg.trainer.devices) * int(cfg.trainer.get("num_nodes", 1))
        if int(cfg.teacher.squeeze.batch_size) % world:
            raise ConfigError(f"teacher.squeeze.batch_size={cfg.teacher.squeeze.batch_size} is the global batch and "
                              f"must split evenly over {world} DDP processes; fix: a multiple of {world}")
    if cfg.distill.method != "folder":
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


def check_labels(cfg: DictConfig, images: DistilledImages | None) -> None:
    """The store this run will write: batch sizes, forwards, and the budget planner on the real image count."""
    check_soft_batch(int(cfg.train.soft_batch_size), int(cfg.labels.batch_size))
    try:
        groups_per_forward(cfg.labels.get("groups_per_forward", "auto"), "cpu")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    ipc = images.ipc if images is not None else int(cfg.ipc)
    classes = images.classes if images is not None else class_names(cfg.dataset)
    try:  # the same planner relabel will use, on the image count it will see
        plan_relabel(cfg, n_images=len(images) if images is not None else ipc * len(classes), ipc=ipc,
                     classes=classes)
    except InputError:  # budget errors say their cause and fix already
        raise
    except ValueError as e:  # codec parameters
        raise ConfigError(str(e)) from None


def check_teachers(tcfg: DictConfig, where: str, dataset: DictConfig | None = None) -> None:
    for ck in tcfg.checkpoints or []:
        if not Path(ck).is_file():
            raise ConfigError(f"teacher checkpoint '{ck}' does not exist; fix: {where}.checkpoints=[existing files]")
    if tcfg.checkpoints and len(tcfg.checkpoints) != len(tcfg.models):
        raise ConfigError(f"{len(tcfg.checkpoints)} teacher checkpoints for {len(tcfg.models)} "
                          f"teacher models; fix: one checkpoint per entry of {where}.models")
    if dataset is not None:
        for name, ck in zip(tcfg.models, tcfg.checkpoints or []):
            check_checkpoint(name, Path(ck), dataset, where)
