"""`distill=sre2l | sre2lpp | cvdd`: recover images by matching a committee's BatchNorm statistics.

One function serves the three methods; the config decides:
- SRe2L: one teacher, Gaussian-noise init;
- SRe2L++ (CV-DD's strong baseline): one teacher, init from RDED images;
- CV-DD: a committee per IPC index (see committee.py), weights softmax(alpha / 5), init from RDED images.

One image per class per IPC index; the classes are optimised in chunks of `class_chunk` (one batch = one
image of each class of the chunk). A unit (IPC index, chunk) starts from its own init and optimiser and runs

    L = sum_i w_i (CE_i + r_bn * BN_i)              (BN_i: bn_matching.py, s = 10 for the first BatchNorm)

for `iterations` Adam steps on the normalised pixels (lr 0.25, betas (0.5, 0.9), cosine to 0), each step on
one shared RandomResizedCrop + flip + roll of the batch (augment.py), pixels clamped to the valid range after
every step. Units are seeded by (seed, IPC index, chunk), written as they finish and skipped when a killed
run is started again (hald/units.py). With `devices > 1` the IPC indices are shared out over DDP ranks
(IPC index i goes to rank i mod world size), through Lightning Fabric; inside the pipeline's DDP world
(`trainer=ddp`) its ranks share them the same way.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hald import compute
from hald.artifacts import owner, plain
from hald.data.sources import ImageSource
from hald.distill.augment import jitter_batch
from hald.distill.bn_matching import BNStatistics
from hald.distill.committee import CommitteeSchedule
from hald.distill.pixels import normalize, to_uint8, valid_range
from hald.data.image_array import MappedTensor
from hald.distill.rded import rded_images, rded_real_images, rded_work, resolve_factor
from hald.distill.registry import Cost, Work, register
from hald.distill.runtime import load_pool_teacher, make_fabric
from hald.distill.unit_loop import UnitStep, ends, launch_units, promote_units, run_units
from hald.models.teachers import Teacher
from hald.errors import ConfigError
from hald.units import UnitStore

log = logging.getLogger(__name__)
INITS = ("noise", "rded")


@dataclass
class RecoverSettings:  # not frozen: Lightning's spawn launcher rebuilds dataclass arguments
    iterations: int = 4000
    lr: float = 0.25
    betas: tuple[float, float] = (0.5, 0.9)
    r_bn: float = 0.01
    first_bn_multiplier: float = 10.0
    jitter: int = 4
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_p: float = 0.5
    log_every: int = 10


def recover_unit(voters: Sequence[nn.Module], weights: torch.Tensor, x0: torch.Tensor, targets: torch.Tensor,
                 dataset: Mapping[str, Any], s: RecoverSettings, on_log=None) -> tuple[torch.Tensor, dict]:
    """Optimise one batch (normalised pixels x0, one target class per image); returns (x, loss history).

    History: the weighted CE and BN sums at iteration 0, every `log_every` iterations and the last one.
    """
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=s.lr, betas=tuple(s.betas), eps=1e-8)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.iterations)  # 0.5(1+cos(pi t/T)) lr
    lo, hi = valid_range(dataset, x)
    stats = [BNStatistics(v, s.first_bn_multiplier) for v in voters]
    size = int(dataset["input_size"])
    history: dict[str, list[float]] = {"iteration": [], "ce": [], "bn": [], "loss": []}
    try:
        for t in range(s.iterations):
            xa = jitter_batch(x, size, tuple(s.crop_scale), s.flip_p, s.jitter)
            ce_sum = bn_sum = loss = 0.0
            for w, net, st in zip(weights.tolist(), voters, stats):
                ce = F.cross_entropy(net(xa), targets)
                bn = st.pop()
                loss = loss + w * (ce + s.r_bn * bn)
                ce_sum, bn_sum = ce_sum + w * ce.detach(), bn_sum + w * bn.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
            if t % s.log_every == 0 or t == s.iterations - 1:
                vals = {"ce": float(ce_sum), "bn": float(bn_sum), "loss": float(loss.detach())}
                history["iteration"].append(t)
                for k, v in vals.items():
                    history[k].append(v)
                if on_log is not None:
                    on_log(t, vals)
    finally:
        for st in stats:
            st.remove()
    return x.detach(), history


@dataclass
class RecoverJob:
    """Everything a rank needs (pickled to spawned DDP processes)."""
    teachers: list[Teacher]
    dataset: dict[str, Any]
    settings: RecoverSettings
    schedule: CommitteeSchedule
    init: str
    init_images: torch.Tensor | None  # uint8 [classes, ipc, C, H, W] when init = rded
    ipc: int
    class_chunk: int
    seed: int
    work_dir: Path
    progress: bool
    cpu_threads: int | None = None
    units_run: int | None = None  # recover only the first N units; the others keep their init (make rehearse)
    channels_last: bool = False  # compute.channels_last: the teachers' weights and the pixels (hald/compute.py)

    @property
    def num_classes(self) -> int:
        return int(self.dataset["num_classes"])

    def units(self) -> list[tuple[int, int]]:
        chunks = -(-self.num_classes // self.class_chunk)
        return [(i, k) for i in range(self.ipc) for k in range(chunks)]

    def runs(self, ipc_index: int, chunk: int) -> bool:
        """Whether the unit is optimised (all are unless units_run caps them, in the order of `units`)."""
        return self.units_run is None or self.units().index((ipc_index, chunk)) < self.units_run

    def classes(self, chunk: int) -> list[int]:
        return list(range(chunk * self.class_chunk, min((chunk + 1) * self.class_chunk, self.num_classes)))

    def x0(self, ipc_index: int, chunk: int, device: torch.device) -> torch.Tensor:
        """The unit's start: RDED images (normalised) or N(0, 1) noise in normalised space (global RNG, seeded)."""
        cls = self.classes(chunk)
        if self.init == "rded":
            x01 = self.init_images[cls, ipc_index].float() / 255
            return normalize(x01, self.dataset).to(device)
        size, ch = int(self.dataset["input_size"]), int(self.dataset["channels"])
        return torch.randn(len(cls), ch, size, size).to(device)


def run_rank(fabric, job: RecoverJob) -> None:
    """Recover's units: the IPC index's committee (loaded on first use) votes with its weights."""
    nets: dict[int, nn.Module] = {}

    def voters(i: int) -> list[int]:
        return job.schedule.members(i)

    def load(i: int) -> None:
        for m in voters(i):
            if m not in nets:
                nets[m] = compute.channels_last(load_pool_teacher(job.teachers[m], job.dataset, fabric.device),
                                                job.channels_last)

    def optimise(i, k, x0, targets, on_log):
        members, weights = voters(i), job.schedule.weights(i)
        x, hist = recover_unit([nets[m] for m in members], weights.to(fabric.device), x0, targets, job.dataset,
                               job.settings, on_log)
        return x, {"members": [job.teachers[m].name for m in members],
                   "weights": [round(float(w), 6) for w in weights], "iterations": job.settings.iterations,
                   **ends(hist, ("ce", "bn", "loss"))}

    run_units(fabric, job, UnitStep(
        "recover", lambda i, k: f"recover ipc {i} chunk {k} [{'+'.join(job.teachers[m].name for m in voters(i))}]",
        lambda v: f"ce {v['ce']:.3f}  bn {v['bn']:.3f}  loss {v['loss']:.3f}", optimise,
        lambda x: to_uint8(x, job.dataset), {"members": [], "weights": []}, load))


def resolve_jitter(jitter: int | str, input_size: int) -> int:
    """auto: 4 px at CIFAR / Tiny-ImageNet scale (<= 64 px), 32 px at ImageNet scale (the papers' values)."""
    return (4 if input_size <= 64 else 32) if jitter == "auto" else int(jitter)


def committee_schedule(names: Sequence[str], committee: Mapping[str, Any] | None, seed: int,
                       priors: Sequence[float] | None) -> CommitteeSchedule:
    c = dict(committee or {"size": 1, "mode": "fixed"})
    return CommitteeSchedule(list(names), int(c.get("size", 1)), c.get("mode", "fixed"), c.get("fixed"), seed,
                             c.get("weights", "prior"), None if priors is None else [float(p) for p in priors],
                             float(c.get("temperature", 5.0)))


def check_recover(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> None:
    """Pre-flight: everything about a recover config that can fail, before teachers are trained."""
    if dcfg.get("init", "noise") not in INITS:
        raise ConfigError(f"distill.init={dcfg.get('init')}; fix: one of {list(INITS)}")
    for key in ("iterations", "class_chunk", "devices"):
        if int(dcfg.get(key, 1)) < 1:
            raise ConfigError(f"distill.{key}={dcfg.get(key)} must be >= 1; fix: a positive value")
    if dcfg.get("units_run") is not None and int(dcfg["units_run"]) < 1:
        raise ConfigError(f"distill.units_run={dcfg['units_run']} must be >= 1; fix: a positive count, or null "
                          f"to recover every unit")
    names = list((dcfg.get("pool") or {}).get("models") or ["teacher"])
    priors = dcfg.get("priors")
    # Measured priors are not known yet: stand-ins check the committee's shape.
    committee_schedule(names, dcfg.get("committee"), int(dcfg.get("seed", 0)),
                       priors if priors is not None else [0.0] * len(names))
    if dcfg.get("init") == "rded":
        resolve_factor((dcfg.get("rded") or {}).get("factor", "auto"), int(dataset["input_size"]))


def recover_real_images(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> int:
    """SRe2L starts from noise; SRe2L++ / CV-DD initialise from RDED images (ipc * factor^2 real crops)."""
    if dcfg.get("init") != "rded":
        return 0
    return rded_real_images({**dict(dcfg.get("rded") or {}), "ipc": dcfg.get("ipc")}, dataset)


def recover_cost(dcfg: Mapping[str, Any], dataset: Mapping[str, Any], ipc: int) -> Cost:
    """Units (IPC index, class chunk) x iterations x the unit's voters (a training pass each), plus the RDED
    selection of init=rded."""
    pool, C = dcfg["pool"], int(dataset["num_classes"])
    names = list(pool["models"])
    chunk = int(dcfg.get("class_chunk", 100))
    chunks = -(-C // chunk)
    schedule = committee_schedule(names, dcfg.get("committee"), int(dcfg.get("seed", 0)), [0.0] * len(names))
    iters = int(dcfg.get("iterations", 4000))
    units = [(i, k) for i in range(ipc) for k in range(chunks)]
    cap = dcfg.get("units_run")
    run = units if cap is None else units[:int(cap)]
    work = [Work(names[m], iters * min(chunk, C - k * chunk), train=True, pretrained=pool.get("pretrained"),
                 units=iters if j == 0 else 0.0)
            for i, k in run for j, m in enumerate(schedule.members(i))]
    if dcfg.get("init") == "rded":
        work.append(rded_work(dict(dcfg.get("rded") or {}), dataset, pool, counted=False))
    return Cost("unit iterations", tuple(work), f"{len(run)} of {len(units)} units x {iters} iterations")


def recover_needs_priors(dcfg: Mapping[str, Any]) -> bool:
    """CV-DD committees weighted by softmax(alpha / T) need each pool teacher's prior alpha (measured by
    pipeline/priors.py unless `distill.priors` gives them)."""
    committee = dcfg.get("committee") or {}
    return (dcfg.get("priors") is None and committee.get("weights", "prior") == "prior"
            and int(committee.get("size", 1)) > 1)


def recover_single_teacher(dcfg: Mapping[str, Any]) -> dict[str, Any]:
    """The one-teacher recover that measures a pool teacher's prior: SRe2L++ with the same recipe (SRe2L from
    noise when the committee starts from noise), one fixed voter."""
    return {"method": "sre2lpp" if dcfg.get("init") == "rded" else "sre2l",
            "committee": {"size": 1, "mode": "fixed", "fixed": [0], "weights": "equal"}}


@dataclass
class RecoverConfig:
    """The keys of conf/distill/sre2l.yaml, sre2lpp.yaml and cvdd.yaml (documented there)."""
    method: str = "sre2l"
    pool: Any = None
    ipc: int = 10
    seed: int = 0
    init: str = "noise"
    iterations: int = 4000
    lr: float = 0.25
    betas: List[float] = field(default_factory=lambda: [0.5, 0.9])
    r_bn: float = 0.01
    first_bn_multiplier: float = 10.0
    jitter: Any = "auto"
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    flip_p: float = 0.5
    class_chunk: int = 100
    units_run: Optional[int] = None
    devices: int = 1
    cpu_threads: Optional[int] = None
    committee: Any = None
    priors: Optional[List[float]] = None
    prior: Any = None
    rded: Any = None
    holdout: Any = None


@register("sre2l", "sre2lpp", "cvdd", uses_teacher=True, collective=True, mixed_precision=True, check=check_recover,
          real_images=recover_real_images, cost=recover_cost, needs_priors=recover_needs_priors,
          single_teacher=recover_single_teacher, config=RecoverConfig)
def distill_recover(source: ImageSource, dataset: Mapping[str, Any], out_dir: Path, teachers: list[dict[str, Any]],
                    method: str, ipc: int, seed: int, init: str = "noise", iterations: int = 4000, lr: float = 0.25,
                    betas: Sequence[float] = (0.5, 0.9), r_bn: float = 0.01, first_bn_multiplier: float = 10.0,
                    jitter: int | str = "auto", crop_scale: Sequence[float] = (0.08, 1.0), flip_p: float = 0.5,
                    class_chunk: int = 100, devices: int = 1, cpu_threads: int | None = None,
                    units_run: int | None = None, committee: Mapping[str, Any] | None = None,
                    priors: Sequence[float] | None = None, rded: Mapping[str, Any] | None = None,
                    work_dir: Path | None = None, trainer_kwargs: Mapping[str, Any] | None = None,
                    **_: Any) -> dict[str, Any]:
    dataset = dict(plain(dataset))  # plain containers: the job is pickled to spawned ranks
    check_recover({"init": init, "iterations": iterations, "class_chunk": class_chunk, "devices": devices,
                   "units_run": units_run,
                   "committee": committee, "seed": seed, "priors": priors, "rded": rded,
                   "pool": {"models": [t.name for t in teachers]}}, dataset)
    schedule = committee_schedule([t.name for t in teachers], committee, seed, priors)
    settings = RecoverSettings(int(iterations), float(lr), tuple(betas), float(r_bn), float(first_bn_multiplier),
                               resolve_jitter(jitter, int(dataset["input_size"])), tuple(crop_scale), float(flip_p))
    own_work_dir = work_dir is None
    work = Path(out_dir) / ".work" if own_work_dir else Path(work_dir)
    store = UnitStore(work)
    progress = bool((trainer_kwargs or {}).get("enable_progress_bar", True))
    job = RecoverJob(teachers, dataset, settings, schedule, init, None, ipc, class_chunk, seed, work, progress,
                     cpu_threads, None if units_run is None else int(units_run),
                     channels_last=bool((trainer_kwargs or {}).get("channels_last")))
    init_selection = None
    if init == "rded":  # cheap and deterministic: recomputed on resume (the manifest records the selection)
        fabric = make_fabric(trainer_kwargs)
        scorer = load_pool_teacher(teachers[0], dataset, fabric.device)
        job.init_images, init_selection = rded_images(source, dataset, scorer, ipc, seed, progress=progress,
                                                      **dict(rded or {}))
        job.init_images = MappedTensor.write(job.init_images, work / f"init_images.{owner()}.npy")  # ranks map it
    launch_units(run_rank, job, store, trainer_kwargs, devices, "recover")
    records = promote_units(job, store, Path(out_dir), own_work_dir, "recover")
    committees = {i: {"members": [teachers[m].name for m in schedule.members(i)],
                      "weights": [round(float(w), 6) for w in schedule.weights(i)]} for i in range(ipc)}
    return {"method": method, "ipc": ipc, "seed": seed, "init": init, "iterations": int(iterations),
            "units_run": job.units_run,
            "teachers": [{"name": t.name, "key": t.key} for t in teachers],
            "priors": None if priors is None else [float(p) for p in priors],
            "committee": {"size": schedule.size, "mode": schedule.mode, "weights": schedule.weighting,
                          "temperature": schedule.temperature, "per_ipc_index": committees},
            "init_selection": init_selection, "units": records, "images_dir": "images", "grid": "grid.png"}
