"""Pre-flight: every input that can be checked before work starts is checked here, in seconds, so a bad run
stops with one "cause; fix:" line instead of after hours of squeeze or recover."""
from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hald import dist
from hald.data.distilled import DistilledImages
from hald.data.sources import build_source, check_source, class_names
from hald.distill import Method, check_method, method_of
from hald.errors import ConfigError, InputError
from hald.labels.budget import plan_passes
from hald.labels.relabel import check_bssl_group, groups_per_forward
from hald.labels.store import LabelStore, check_soft_batch, open_store_for
from hald.models.build import check_checkpoint, torchvision_weights
from hald.pipeline.stages import plan_relabel
from hald.pipeline.student import build_schedule
from hald.ranges import positive
from hald.schema import validate

log = logging.getLogger("hald")


@dataclass(frozen=True)
class Checked:
    """What pre-flight opened while checking, handed on so nothing is read twice: the images of a given set
    (distill=folder) and the label store passed in (its manifest is the truth: `adopt_store`)."""
    images: DistilledImages | None = None
    store: LabelStore | None = None


def preflight(cfg: DictConfig) -> Checked:
    """Check everything that can be checked before work starts; changes nothing (the config included) but the
    cache of a given set's image array (distill/folder.py), made from the set as it is checked."""
    validate(cfg)  # the schema: unknown keys, types, enums, positive counts (hald/schema.py)
    check_source(cfg.dataset)
    method = method_of(cfg.distill.method)
    check_counts(cfg, method)
    try:
        schedule = build_schedule(cfg, passes=1)
    except ValueError as e:
        raise ConfigError(f"schedule {cfg.schedule.preset} over train.epochs={cfg.train.epochs}: {e}") from None
    unknown = sorted({p for p, _ in schedule.segments} - set(cfg.student.phases))
    if unknown:
        raise ConfigError(f"the schedule names phase(s) {unknown} that student.phases does not define (it has "
                          f"{sorted(cfg.student.phases)}); fix: schedule.segments over those, or a student config "
                          f"that adds the phase")
    dcfg = OmegaConf.to_container(cfg.distill, resolve=True)
    check_method(dcfg, cfg.dataset)
    # a set on disk: opened and verified, its pixels mapped from the cache (decoded into it on first use)
    images = method.build(dcfg, cfg.dataset, cache=Path(cfg.paths.cache_dir).expanduser().resolve()) \
        if method.given else None
    store = None
    if cfg.labels.store is None:
        check_labels(cfg, images)
    else:
        store = check_store(cfg, explicit_keys())
        if images is not None:  # distill=folder: the store must label exactly these images, before any work
            open_store_for(Path(cfg.labels.store).expanduser(), images, cfg.dataset)
    check_teachers(cfg.teacher, "teacher", cfg.dataset)
    if dist.wants_ddp(cfg.trainer):
        world = int(cfg.trainer.devices) * int(cfg.trainer.get("num_nodes", 1))
        if int(cfg.teacher.squeeze.batch_size) % world:
            raise ConfigError(f"teacher.squeeze.batch_size={cfg.teacher.squeeze.batch_size} is the global batch and "
                              f"must split evenly over {world} DDP processes; fix: a multiple of {world}")
    if not method.given:
        check_enough_images(method, dcfg, cfg.dataset)
    if method.uses_teacher and cfg.distill.get("pool"):
        check_teachers(cfg.distill.pool, "distill.pool", cfg.dataset)
    if method.needs_priors(dcfg):
        prior = cfg.distill.get("prior")
        if prior is None:
            raise ConfigError("committee weights softmax(alpha/T) need priors: give distill.priors=[...] or the "
                              "distill.prior settings that measure them; fix: distill=cvdd defaults")
        plan_passes(int(prior.slc), int(prior.ipc))
    return Checked(images, store)


def check_labels(cfg: DictConfig, images: DistilledImages | None) -> None:
    """The store this run will write: batch sizes, forwards, and the budget planner on the real image count."""
    check_soft_batch(int(cfg.train.soft_batch_size), int(cfg.labels.batch_size))
    try:
        groups_per_forward(cfg.labels.get("groups_per_forward", "auto"), "cpu")
        check_bssl_group(cfg.labels.get("bssl_group_size"), int(cfg.labels.batch_size))
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
    if tcfg.get("pretrained"):  # the weights enum is named: torchvision:IMAGENET1K_V1
        try:
            torchvision_weights(tcfg.pretrained)
        except ValueError as e:
            raise ConfigError(str(e).replace("teacher.", f"{where}.")) from None
    for ck in tcfg.checkpoints or []:
        if not Path(ck).is_file():
            raise ConfigError(f"teacher checkpoint '{ck}' does not exist; fix: {where}.checkpoints=[existing files]")
    if tcfg.checkpoints and len(tcfg.checkpoints) != len(tcfg.models):
        raise ConfigError(f"{len(tcfg.checkpoints)} teacher checkpoints for {len(tcfg.models)} "
                          f"teacher models; fix: one checkpoint per entry of {where}.models")
    if dataset is not None:
        for name, ck in zip(tcfg.models, tcfg.checkpoints or []):
            check_checkpoint(name, Path(ck), dataset, where)


def check_counts(cfg: DictConfig, method: Method) -> None:
    """Counts that must be positive only in some runs, named by their key (the schema checks the others)."""
    counts = {}
    if not method.given:  # a given set has its own ipc
        counts["ipc"] = cfg.ipc
    if cfg.labels.store is None and cfg.get("label_budget") is None:
        counts["slc"] = cfg.slc
    if not cfg.teacher.checkpoints and not cfg.teacher.pretrained:
        counts["teacher.squeeze.epochs"] = cfg.teacher.squeeze.epochs
        counts["teacher.squeeze.batch_size"] = cfg.teacher.squeeze.batch_size
    positive("", **counts)


def check_enough_images(method: Method, dcfg: dict, dataset: DictConfig) -> None:
    """A method that needs more real images per class than a class has stops here, not after a squeeze."""
    need = method.real_images(dcfg, dataset)
    if need <= 0:
        return
    counts = Counter(build_source(dataset, "train").targets)
    short = min(range(int(dataset.num_classes)), key=lambda c: counts.get(c, 0))
    have = counts.get(short, 0)
    if have < need:
        raise ConfigError(f"distill={dcfg['method']} with ipc={dcfg.get('ipc')} needs {need} real training images "
                          f"per class, but class {short} of {dataset.name} has {have}; fix: "
                          f"{fewer_images_fix(method, dcfg, dataset, have)}")


def fewer_images_fix(method: Method, dcfg: dict, dataset: DictConfig, have: int) -> str:
    """A setting the user can type that needs at most `have` real images per class: the largest smaller ipc,
    else factor 1 (RDED's mosaic of factor^2 crops per image), else more images."""
    ipc = int(dcfg.get("ipc") or 1)
    for smaller in range(ipc - 1, 0, -1):
        if method.real_images({**dcfg, "ipc": smaller}, dataset) <= have:
            return f"ipc={smaller} (or a method that needs fewer images)"
    if "factor" in dcfg and dcfg["factor"] != 1 and method.real_images({**dcfg, "factor": 1}, dataset) <= have:
        return "distill.factor=1 (one crop per image, no mosaic)"
    rded = dict(dcfg.get("rded") or {})  # the RDED init of SRe2L++ / CV-DD / FADRM
    if rded.get("factor", 1) != 1 and method.real_images({**dcfg, "rded": {**rded, "factor": 1}}, dataset) <= have:
        return "distill.rded.factor=1 (one crop per init image, no mosaic)"
    return f"a dataset with more than {have} training images per class (or a method that needs fewer)"


def explicit_keys() -> set[str]:
    """Config keys the user set on the command line (Hydra's task overrides), without +/~ prefixes."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    keys = set()
    for o in HydraConfig.get().overrides.task:
        key = o.split("=", 1)[0].lstrip("+~")
        keys.add(key)
    return keys


# Every config key a passed-in store fixes, and where its manifest holds the value: the manifest is the truth.
# One rule for all of them: taken from the store (adopt_store), and refused when the command line states another
# value (so `-m slc=10,20 labels.store=S` stops instead of running identical jobs).
STORE_FIELDS = {"slc": "slc", "labels.codec": "codec", "label_budget": "label_budget",
                "labels.temperature": "temperature", "labels.batch_size": "batch_size",
                "labels.crop_scale": ("crop", "scale"), "labels.crop_ratio": ("crop", "ratio"),
                "labels.flip_p": "flip_p", "labels.cutmix_alpha": ("mix", "alpha"),
                "labels.teacher_mode": "teacher_mode", "labels.bssl_group_size": "bssl_group_size",
                "labels.seed": "seed"}
GROUP_OF = {"labels.codec": "codec"}  # a key set through a config group (`codec=topk`)


def stated(key: str, explicit: set[str]) -> bool:
    """The command line set `key`, one of its sub-keys (labels.codec.k) or the group that fills it."""
    return (key in explicit or any(e.startswith(key + ".") for e in explicit)
            or GROUP_OF.get(key) in explicit)


def store_settings(cfg: DictConfig, store: LabelStore) -> dict[str, Any]:
    """The label settings of a passed-in store that differ from the config's: {dotted key: the store's value}."""
    m, out = store.manifest, {}
    for key, field in STORE_FIELDS.items():
        have = m[field[0]][field[1]] if isinstance(field, tuple) else m[field]
        want = OmegaConf.select(cfg, key)
        want = OmegaConf.to_container(want) if OmegaConf.is_config(want) else want
        if not _same(have, want):
            out[key] = have
    return out


def check_store(cfg: DictConfig, explicit: set[str]) -> LabelStore:
    """A store passed in (`labels.store=DIR`) fixes its labels' settings (`adopt_store` takes them from its
    manifest, so the soft loss's T is the T the labels were made at); a setting the command line states
    otherwise stops the run before any work. Checked against the dataset too."""
    path = Path(cfg.labels.store).expanduser()
    store = LabelStore.open(path, expect={"dataset": cfg.dataset.name, "classes": class_names(cfg.dataset),
                                          "mean": [float(v) for v in cfg.dataset.mean],
                                          "std": [float(v) for v in cfg.dataset.std]}, deep=False)
    m = store.manifest
    if m["crop"]["size"] != int(cfg.dataset.input_size):
        raise ConfigError(f"label store '{path}' was made at input size {m['crop']['size']}, this run uses "
                          f"{cfg.dataset.input_size}; fix: dataset.input_size={m['crop']['size']} or relabel")
    for key, have in store_settings(cfg, store).items():
        if stated(key, explicit):
            said = OmegaConf.select(cfg, key)
            said = OmegaConf.to_container(said) if OmegaConf.is_config(said) else said
            shown = ",".join(f"{k}={v}" for k, v in have.items()) if isinstance(have, dict) else have
            raise ConfigError(f"label store '{path}' was made with {key}={shown}, the command line says {said}; "
                              f"fix: drop {GROUP_OF.get(key, key)}=... (the store fixes it), or labels.store=null "
                              f"to relabel with it")
    soft_t = float(cfg.soft_loss.temperature) if "soft_loss.temperature" in explicit else None
    if soft_t is not None and soft_t != float(m["temperature"]):
        raise ConfigError(f"label store '{path}' holds soft labels at T={m['temperature']}, soft_loss.temperature="
                          f"{soft_t}; fix: soft_loss.temperature={m['temperature']} (the KL must use the labels' T)")
    check_soft_batch(int(cfg.train.soft_batch_size), store.batch_size)
    return store


def resolve_class_count(cfg: DictConfig) -> DictConfig:
    """`dataset.num_classes: null` (imagefolder) = the classes found on disk: set once, on a copy, before
    pre-flight, so that every stage and check sees one number (the layout is checked first: its error is the
    clearer one)."""
    if cfg.dataset.get("num_classes") is not None:
        return cfg
    validate(cfg)
    check_source(cfg.dataset)
    out = copy.deepcopy(cfg)
    out.dataset.num_classes = len(class_names(cfg.dataset))
    log.info("dataset.num_classes: %d (the class folders found)", out.dataset.num_classes)
    return out


def adopt_store(cfg: DictConfig, store: LabelStore | None) -> DictConfig:
    """The run's config with a passed-in store's label settings (a copy; the same config without a store).
    The one step by which a store's manifest reaches the losses (soft_loss.temperature interpolates
    labels.temperature)."""
    if store is None:
        return cfg
    adopted = store_settings(cfg, store)
    if not adopted:
        return cfg
    out = copy.deepcopy(cfg)
    for key, value in adopted.items():
        OmegaConf.update(out, key, value, merge=False)
    log.info("labels.store: %s from the store's manifest", ", ".join(f"{k}={v}" for k, v in adopted.items()))
    return out


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b
