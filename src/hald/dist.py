"""The pipeline's DDP world: one process group for every stage.

`trainer=ddp trainer.devices=N` (or torchrun / SLURM, which start the processes themselves) makes the whole
pipeline run in N processes from the start (`launch`, through Lightning Fabric's launcher: the script is
started again per rank, as Lightning does for `Trainer(strategy="ddp")`). Then every stage knows the world:

- collective stages share the work: squeeze trains data-parallel (Lightning DDP), recover gives IPC index i
  to rank i mod N, relabel gives pass p to rank p mod N; units are seeded by what they are, not by rank;
- rank 0 alone writes manifests and renames artifacts into place; the other ranks wait at a barrier and then
  read the finished artifact;
- a stage that one process does better (RDED scoring, a random subset, CV-DD priors) runs on rank 0 inside
  `local_only()`, where the world looks like one process, while the others wait.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as tdist

_local_only = 0
# Long enough for rank 0 to build a non-collective stage (e.g. CV-DD priors) while the others wait.
TIMEOUT = timedelta(hours=int(os.environ.get("HALD_DDP_TIMEOUT_H", "6")))


def active() -> bool:
    """True inside a process group of more than one process (and not in a local_only section)."""
    return not _local_only and tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def world() -> int:
    return tdist.get_world_size() if active() else 1


def rank() -> int:
    return tdist.get_rank() if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def barrier() -> None:
    if active():
        tdist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's value of obj on every rank (so every rank takes the same branch)."""
    if not active():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when flag is true on any rank."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


@contextmanager
def local_only() -> Iterator[None]:
    """Inside: this process works alone (world() = 1), e.g. rank 0 building a non-collective stage."""
    global _local_only
    _local_only += 1
    try:
        yield
    finally:
        _local_only -= 1


def wants_ddp(trainer: Mapping[str, Any]) -> bool:
    """Does the trainer config ask for a multi-process run (trainer=ddp with devices > 1, or torchrun/SLURM)?"""
    strategy = str(trainer.get("strategy", "auto"))
    devices = trainer.get("devices", 1)
    n = len(devices) if isinstance(devices, (list, tuple)) else int(devices) if str(devices).isdigit() else 1
    return strategy.startswith("ddp") and strategy != "ddp_spawn" and n * int(trainer.get("num_nodes", 1)) > 1


def launch(trainer: Mapping[str, Any]) -> None:
    """Start (or join) the pipeline's process group; the ranks > 0 re-run the script (Lightning's launcher)."""
    if tdist.is_available() and tdist.is_initialized():
        return
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    fabric = Fabric(accelerator=trainer.get("accelerator", "auto"), devices=trainer.get("devices", 1),
                    num_nodes=int(trainer.get("num_nodes", 1)), strategy=DDPStrategy(timeout=TIMEOUT))
    fabric.launch()


def device_kwargs(accelerator: str) -> dict[str, Any]:
    """Lightning Trainer/Fabric arguments for this rank's own device (single-device work inside DDP)."""
    if active() and accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return {"accelerator": "gpu", "devices": [local_rank()]}
    return {"accelerator": accelerator, "devices": 1}


_workers_said: set[str] = set()


def loader_workers(asked: int, what: str) -> int:
    """Loader worker processes that fit this process: at most the CPUs it may run on (what PyTorch's loader
    checks before warning twice per loader). Items are seeded by what they are (data/transforms.Reseeded, the
    replay's per-crop seeds), so the count never changes results: a paper's 8 workers stay 8 on a node with
    8 or more CPUs and become what fits on a smaller one, said once per stage."""
    asked = int(asked)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS: no affinity call
        cpus = os.cpu_count() or 1
    if asked <= cpus:
        return asked
    if what not in _workers_said:
        _workers_said.add(what)
        import logging

        logging.getLogger("hald").info("%s: %d loader workers asked, this process has %d CPUs: using %d (the "
                                       "count does not change results)", what, asked, cpus, cpus)
    return cpus
