"""The artifact cache and its DDP protocol: `cached` reuses `<cache>/<stage>/<key>` or builds it once.

A key hashes exactly what determines an artifact (the `*_identity` functions below and the upstream keys),
so a sweep over slc trains the teacher and makes the images once. Also here: the device settings of the
work one process does, since every stage that builds something needs them.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from hald import artifacts, compute, dist

log = logging.getLogger("hald")


@dataclass
class Artifact:
    stage: str
    key: str
    path: Path
    manifest: dict[str, Any]
    reused: bool


@dataclass
class Context:
    """One run of the stages: its config, the cache root, and the seconds each stage took."""
    cfg: DictConfig
    cache: Path
    timings: dict[str, float] = field(default_factory=dict)


def dataset_identity(ds: DictConfig) -> dict[str, Any]:
    """What determines the data: every dataset key except the download switch; roots made absolute."""
    d = OmegaConf.to_container(ds, resolve=True)
    d.pop("download", None)
    if d.get("root"):
        d["root"] = str(Path(d["root"]).expanduser().resolve())
    return d


def training_identity(cfg: DictConfig) -> dict[str, Any]:
    """What determines a student training besides its images and labels (the key of a cached training): the
    student config too, so a derived student trained with another phase or loss is never reused."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
             for k in ("model", "train", "schedule", "optimizer", "soft_loss", "hard_loss", "student", "seed")}
    return {**parts, **compute.key_part(student_precision(cfg))}  # fp32: the keys from before the choice


def cached(ctx: Context, stage: str, key: str, config: Any, upstream: dict[str, str],
           build: Callable[[Path], dict[str, Any]], collective: bool = False) -> Artifact:
    """Reuse the complete artifact `<cache>/<stage>/<key>` or build it.

    In a DDP world (hald/dist.py) every rank takes rank 0's decision; a `collective` build runs on every rank
    (each writes only its own units; the non-zero ranks build into a scratch dir), any other build on rank 0
    alone. Rank 0 alone writes the manifest and renames the artifact into place; a failure on any rank stops
    every rank with nothing half-written."""
    path = ctx.cache / stage / key
    t0 = time.time()
    problem = dist.broadcast(artifacts.problem(path) if dist.rank() == 0 else None)
    if problem is None:
        log.info("%s: reused %s", stage, path)
        return Artifact(stage, key, path, artifacts.read_manifest(path), reused=True)
    artifacts.check_writable(path.parent)
    # Builders of one key exclude each other (two runs of a sweep, two people on a lab cache): rank 0 holds the
    # lock, decides again under it (the other run may have finished it meanwhile) and builds.
    with artifacts.exclusive(path, stage) if dist.rank() == 0 else contextlib.nullcontext():
        problem = dist.broadcast(artifacts.problem(path) if dist.rank() == 0 else None)
        if problem is None:
            log.info("%s: reused %s (built by another run meanwhile)", stage, path)
            return Artifact(stage, key, path, artifacts.read_manifest(path), reused=True)
        return _build(ctx, stage, key, config, upstream, build, collective, path, problem, t0)


def _build(ctx: Context, stage: str, key: str, config: Any, upstream: dict[str, str],
           build: Callable[[Path], dict[str, Any]], collective: bool, path: Path, problem: str,
           t0: float) -> Artifact:
    if problem != "absent":  # never trust a cached artifact that fails its check: set it aside and rebuild
        log.warning("%s: cached %s failed its check, rebuilding: %s", stage, path, problem.split("; fix:")[0])
        if dist.rank() == 0:
            artifacts.set_aside(path)
        dist.barrier()
    log.info("%s: building %s", stage, path)

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


def precision(cfg: DictConfig, stage: str) -> str:
    """A stage's precision (compute.<stage>; the student's is trainer.precision, which follows compute.student)
    as it runs on this run's accelerator (hald/compute.py)."""
    value = cfg.trainer.precision if stage == "student" else cfg.compute[stage]
    return compute.resolve(value, cfg.trainer.get("accelerator", "auto"), f"compute.{stage}")


def student_precision(cfg: DictConfig) -> str:
    return precision(cfg, "student")


def compute_settings(cfg: DictConfig) -> dict[str, Any]:
    """Every stage's precision as it runs here, the layout and compilation: results.json's `compute`."""
    return {**{stage: precision(cfg, stage) for stage in ("squeeze", "recover", "relabel", "student")},
            "channels_last": bool(cfg.compute.channels_last), "compile": bool(cfg.compute.compile)}


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
