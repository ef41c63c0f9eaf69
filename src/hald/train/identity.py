"""What a student checkpoint is a checkpoint of, so that `train.resume=true` continues only the same run.

A run's identity is its composed config (after a passed-in store's settings are adopted), flattened to
dotted keys, minus the keys that cannot change what is trained (NOT_IDENTITY: where files go, loggers,
progress display, loader workers, checkpoint cadence, the evaluate stage that runs after training), plus the
cache keys of the images and the label store it trains on (a folder or a store passed in is keyed by its
content, so changed files count too). It travels inside `last.ckpt` (train/resume.py RunState).

A resume whose identity differs stops before any stage runs with the keys that changed, unless each of them
is listed in `train.resume_across` (`['*']`: any): continuing across a change is the user's explicit choice,
and results.json records it (`resumed.across`). No change is treated as safe by default: even more epochs
move the cosine learning rate and the phase boundaries of every epoch already trained.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from hald.errors import ConfigError

STATE_KEY = "hald_run_state"
# Keys (and key prefixes) that do not change the trained student.
NOT_IDENTITY = ("paths", "logger", "evaluate", "task_name", "tags", "train.resume", "train.resume_across",
                "train.checkpoint_every", "train.num_workers", "labels.num_workers", "teacher.squeeze.num_workers",
                "dataset.download", "trainer.enable_progress_bar", "trainer.enable_model_summary",
                "trainer.log_every_n_steps",
                # the artifacts' precision is in their keys (the identity's artifacts part); layout and
                # compilation change how the arithmetic runs, not what is trained (hald/compute.py)
                "compute.name", "compute.squeeze", "compute.relabel", "compute.recover", "compute.channels_last",
                "compute.compile")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {dotted key: leaf}; lists are leaves (their order is part of the value)."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _counts(key: str) -> bool:
    return not any(key == n or key.startswith(n + ".") for n in NOT_IDENTITY)


def config_identity(cfg: DictConfig) -> dict[str, Any]:
    """The config part of the identity: every resolved key that can change the trained student, each once (a
    key that only interpolates another, e.g. labels.slc: ${slc}, is that key's value)."""
    mirrors = {k for k, v in flatten(OmegaConf.to_container(cfg, resolve=False)).items()
               if isinstance(v, str) and v.startswith("${") and v.endswith("}") and v.count("${") == 1}

    def mirror(key: str) -> bool:
        parts = key.split(".")
        return any(".".join(parts[:i]) in mirrors for i in range(1, len(parts) + 1))

    return {k: v for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()
            if _counts(k) and not mirror(k)}


def run_identity(cfg: DictConfig, artifacts: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"config": config_identity(cfg), "artifacts": dict(artifacts or {})}


def saved_identity(ckpt: Path) -> dict[str, Any] | None:
    """The identity a checkpoint holds (None: written before checkpoints knew it). Loaded with
    weights_only=True and memory-mapped: only the small index and the run state are read."""
    state = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True).get(STATE_KEY) or {}
    return state.get("identity")


# Keys added by a later hald, with the value that gives the behaviour from before they existed: a checkpoint
# that lacks one trained with that value, so finding it there is no change.
ADDED = {"optimizer.name": "adamw", "optimizer.momentum": 0.9, "optimizer.lr_schedule": "cosine",
         "optimizer.step_size": None, "optimizer.gamma": 0.1, "train.eval_offset": 0,
         "compute.student": "32-true"}


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old value, new value)} for every key that differs (a key one side lacks: None there, or its
    `ADDED` value when it is a key added since)."""
    def was(k: str) -> Any:
        return old[k] if k in old else ADDED.get(k)

    return {k: (was(k), new.get(k)) for k in sorted(set(old) | set(new)) if was(k) != new.get(k)}


def _short(v: Any) -> str:
    s = "unset" if v is None else str(v)
    return s if len(s) <= 40 else s[:37] + "..."


def check_resume(saved: dict[str, Any] | None, now: dict[str, Any], part: str, across: list[str],
                 ckpt: Path) -> dict[str, tuple[Any, Any]]:
    """Raise unless the checkpoint's identity (its `part`: config or artifacts) equals this run's, up to the
    keys the user accepts (`across`). Returns the accepted changes (for results.json)."""
    fix_fresh = (f"hydra.run.dir=<a new directory> for a new run, or train.resume=false to start over in "
                 f"{ckpt.parent.parent}")
    if saved is None:
        if "*" in across:
            return {"identity": ("unknown (an older checkpoint)", "this run")}
        raise ConfigError(f"train.resume=true: {ckpt} does not record what run it is of (written by an older hald); "
                          f"fix: {fix_fresh}, or train.resume_across=['*'] to continue it anyway")
    diff = changes(saved.get(part) or {}, now.get(part) or {})
    refused = {k: v for k, v in diff.items() if "*" not in across and k not in across}
    if refused:
        shown = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in list(refused.items())[:4])
        more = f" (+{len(refused) - 4} more)" if len(refused) > 4 else ""
        keys = ",".join(refused)
        raise ConfigError(f"train.resume=true: {ckpt} is a checkpoint of another run ({shown}{more}); fix: "
                          f"{fix_fresh}, or train.resume_across=[{keys}] to continue it across the change")
    return diff
