"""`distill=fadrm | fadrm_plus` (FADRM / FADRM+, arXiv 2506.24125, NeurIPS 2025): recover with data-residual
matching over resolution stages, as the official code does it (Jiacheng8/FADRM @ f445e38, recover/recover.py =
R, recover/utils_recover.py = U; every preset value with its source: docs/fidelity.md, "FADRM / FADRM+").

One code path for both (R:20-159); FADRM recovers with the pool's first model, FADRM+ with every model of the
pool in turn: global iteration i uses teacher i mod K, in pool order (R:74-78). Per unit (IPC index, class
chunk; recover.py's units, resumable the same way):
- init: P0 = RDED images of the pool's first model at the input size, normalised (hald's selection, rded.py;
  the official code reads pre-made "medium" patches whose making is not in its repo, U:208-252), and
  x = bilinear(P0, sizes[0]) (U:239-248);
- stage s runs budgets[s] steps at sizes[s]: iteration i is at stage bisect_right(cumsum(budgets), i), with a
  fresh Adam (betas (0.5, 0.9)) per stage (R:67-68) and lr 0.5 (1 + cos(pi i / N)) lr over the global i
  (R:54-56, 80);
- each step: one RandomResizedCrop(sizes[s]) + flip + roll [0, J] of the batch (augment.py; R:82-101), then
  L = CE + r_bn * BN (first BN x `first_bn_multiplier`, bn_matching.py) of that iteration's teacher, under
  autocast (R:105-112), pixels clamped to the valid range (R:118). A teacher without BatchNorm (AlexNet)
  gives CE-only steps (R:109-110: the sum over no hooks is 0);
- after every stage but the last: x = alpha * bilinear(x, next) + (1 - alpha) * bilinear(P0, next), both
  bilinear without antialias and P0 always the original init (R:132-150);
- the unit's image is the last iterate, denormalised and truncated to uint8 (R:153-156, 181).
"""
from __future__ import annotations

import bisect
import itertools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hald.artifacts import owner, plain
from hald.data.sources import ImageSource
from hald.distill.augment import jitter_batch
from hald.distill.bn_matching import BNStatistics
from hald.distill.pixels import to_uint8, valid_range
from hald.data.image_array import MappedTensor
from hald.distill.rded import rded_images, rded_work, resolve_factor
from hald.distill.recover import (RecoverJob, RecoverSettings, committee_schedule, recover_real_images,
                                  resolve_jitter)
from hald.distill.unit_loop import UnitStep, ends, launch_units, promote_units, run_units
from hald.distill.registry import Cost, Work, register
from hald import compute
from hald.distill.runtime import load_pool_teacher, make_fabric
from hald.errors import ConfigError
from hald.units import UnitStore

log = logging.getLogger(__name__)
ROUNDINGS = ("truncate", "round")


# -- the defining steps ---------------------------------------------------------------------------------------
def stage_at(iteration: int, budgets: Sequence[int]) -> int:
    """The stage of global iteration i: bisect_right(cumsum(budgets), i) (4 x 500: 499 -> 0, 500 -> 1)."""
    return bisect.bisect_right(list(itertools.accumulate(budgets)), iteration)


def cosine_lr(lr: float, iteration: int, total: int) -> float:
    """lr at global iteration i of N: 0.5 (1 + cos(pi i / N)) lr, no warm-up (U:45-55); lr_0 = lr, never 0."""
    return 0.5 * (1 + math.cos(math.pi * iteration / total)) * lr


def teacher_turn(iteration: int, num_teachers: int) -> int:
    """FADRM+: the teacher of global iteration i (R:74-78; the count restarts per unit, not per stage)."""
    return iteration % num_teachers


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, align_corners=False, no antialias (R:140, 143; cv2 INTER_LINEAR at U:245 samples the same
    half-pixel grid); unchanged when already size x size."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def residual_blend(x: torch.Tensor, init: torch.Tensor, alpha: float, size: int) -> torch.Tensor:
    """Data-residual matching at a stage boundary: alpha * x + (1 - alpha) * init, both at `size` (R:138-147)."""
    return alpha * resize(x, size) + (1 - alpha) * resize(init, size)


def stage_sizes(input_sizes: Sequence[int] | None, budgets: Sequence[int], input_size: int) -> list[int]:
    """The resolution of each stage; null = every stage at the input size (the official CIFAR / Tiny scripts)."""
    return [int(input_size)] * len(budgets) if input_sizes is None else [int(s) for s in input_sizes]


def to_pixels(x: torch.Tensor, dataset: Mapping[str, Any], rounding: str) -> torch.Tensor:
    """Normalised floats -> uint8: `truncate` = the official (x * 255).astype(uint8) of the clamped [0, 1]
    image (R:181, U:94-106); `round` = pixels.py's rounding."""
    if rounding == "round":
        return to_uint8(x, dataset)
    mean = torch.tensor(list(dataset["mean"]), dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(list(dataset["std"]), dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x.detach() * std + mean).clamp(0, 1).mul(255).floor().to(torch.uint8).cpu()


@torch.no_grad()
def check_sizes(nets: Sequence[nn.Module], names: Sequence[str], sizes: Sequence[int], channels: int) -> None:
    """Every teacher takes every stage's size (a head sized for one input, as the ConvNet's, does not)."""
    for net, name in zip(nets, names):
        device = next(net.parameters()).device
        for size in sizes:
            try:
                net(torch.zeros(2, channels, size, size, device=device))
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as e:
                raise ConfigError(f"teacher {name} cannot take {size}-px inputs ({str(e).splitlines()[0][:120]}); "
                                  f"fix: distill.input_sizes=null (every stage at the input size) or sizes "
                                  f"it takes") from None


def has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# -- one unit -------------------------------------------------------------------------------------------------
@dataclass
class FadrmSettings(RecoverSettings):  # `iterations` = sum(budgets)
    input_sizes: tuple[int, ...] = (224,)
    budgets: tuple[int, ...] = (2000,)
    alpha: float = 0.5
    amp: bool = True
    rounding: str = "truncate"


def fadrm_unit(teachers: Sequence[nn.Module], p0: torch.Tensor, targets: torch.Tensor, dataset: Mapping[str, Any],
               s: FadrmSettings, on_log=None) -> tuple[torch.Tensor, dict]:
    """Optimise one batch from its init P0 (normalised, at the input size); returns (x at sizes[-1], history).

    History: CE and BN of the iteration's teacher (and its index) at iteration 0, every `log_every` and the last.
    amp: autocast in fp16 with a GradScaler on CUDA (R:35, 105-116), bf16 elsewhere (no scaler needed)."""
    budgets, sizes, total = list(s.budgets), list(s.input_sizes), sum(s.budgets)
    ends = list(itertools.accumulate(budgets))
    kind = p0.device.type
    scaler = torch.amp.GradScaler(kind, enabled=s.amp and kind == "cuda")
    dtype = torch.float16 if kind == "cuda" else torch.bfloat16
    lo, hi = valid_range(dataset, p0)
    stats = [BNStatistics(t, s.first_bn_multiplier) if has_bn(t) else None for t in teachers]
    x = resize(p0, sizes[0]).detach().clone().requires_grad_(True)
    opt = None
    history: dict[str, list[float]] = {"iteration": [], "teacher": [], "ce": [], "bn": [], "loss": []}
    try:
        for i in range(total):
            stage = stage_at(i, budgets)
            if opt is None:  # a fresh Adam, moments at zero, at the start of every stage (R:68)
                opt = torch.optim.Adam([x], lr=s.lr, betas=tuple(s.betas), eps=1e-8)
            for g in opt.param_groups:
                g["lr"] = cosine_lr(s.lr, i, total)
            k = teacher_turn(i, len(teachers))
            xa = jitter_batch(x, sizes[stage], tuple(s.crop_scale), s.flip_p, s.jitter)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(kind, dtype=dtype, enabled=s.amp):
                ce = F.cross_entropy(teachers[k](xa), targets)
                bn = stats[k].pop() if stats[k] is not None else torch.zeros((), device=x.device)
                loss = ce + s.r_bn * bn
            scaler.scale(loss).backward()
            scaler.step(opt)  # skipped on an fp16 overflow; the lr schedule moves on regardless (R:80, 115)
            scaler.update()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
            if i % s.log_every == 0 or i == total - 1:
                vals = {"teacher": k, "ce": float(ce.detach()), "bn": float(bn.detach()), "loss": float(loss.detach())}
                history["iteration"].append(i)
                for key, v in vals.items():
                    history[key].append(v)
                if on_log is not None:
                    on_log(i, vals)
            if i + 1 == ends[stage] and stage + 1 < len(sizes):  # every boundary but the last (R:133-150)
                x = residual_blend(x.detach(), p0, s.alpha, sizes[stage + 1]).requires_grad_(True)
                opt = None
    finally:
        for st in stats:
            if st is not None:
                st.remove()
    return x.detach(), history


# -- the ranks ------------------------------------------------------------------------------------------------
def run_rank(fabric, job: RecoverJob) -> None:
    """FADRM's units through recover's loop: every unit's teachers take turns (fadrm_unit)."""
    names, nets = [t.name for t in job.teachers], []

    def load(i: int) -> None:  # every unit's teachers: loaded once, for the first unit that runs
        if not nets:
            nets.extend(compute.channels_last(load_pool_teacher(t, job.dataset, fabric.device), job.channels_last)
                        for t in job.teachers)

    def optimise(i, k, x0, targets, on_log):
        x, hist = fadrm_unit(nets, x0, targets, job.dataset, job.settings, on_log)
        return x, {"teachers": names, "iterations": job.settings.iterations,
                   **ends(hist, ("teacher", "ce", "bn", "loss"))}

    run_units(fabric, job, UnitStep(
        "fadrm", lambda i, k: f"fadrm ipc {i} chunk {k} [{'/'.join(names)}]",
        lambda v: f"{names[v['teacher']]} ce {v['ce']:.3f}  bn {v['bn']:.3f}", optimise,
        lambda x: to_pixels(x, job.dataset, job.settings.rounding), {"teachers": []}, load))


# -- the record -----------------------------------------------------------------------------------------------
def turn_order(method: str, names: Sequence[Any]) -> list[Any]:
    """FADRM: the pool's first model; FADRM+: all of them, in turn, in pool order."""
    return list(names[:1] if method == "fadrm" else names)


def check_fadrm(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> None:
    """Pre-flight: everything about a FADRM config that can fail, before teachers are trained."""
    budgets = list(dcfg.get("budgets") or [])
    if not budgets or any(int(b) < 1 for b in budgets):
        raise ConfigError(f"distill.budgets={budgets}: one positive step count per stage; fix: e.g. "
                          f"distill.budgets=[500,500,500,500] (the official scripts)")
    sizes = dcfg.get("input_sizes")
    if sizes is not None and (len(sizes) != len(budgets) or any(int(v) < 1 for v in sizes)):
        raise ConfigError(f"distill.input_sizes={list(sizes)} needs one positive size per stage of "
                          f"distill.budgets={budgets}; fix: lists of the same length, or input_sizes=null")
    if not 0.0 <= float(dcfg.get("alpha", 0.5)) <= 1.0:
        raise ConfigError(f"distill.alpha={dcfg.get('alpha')}; fix: a residual weight in [0, 1] (official: 0.5)")
    if dcfg.get("rounding", "truncate") not in ROUNDINGS:
        raise ConfigError(f"distill.rounding={dcfg.get('rounding')}; fix: one of {list(ROUNDINGS)}")
    for key in ("class_chunk", "devices"):
        if int(dcfg.get(key, 1)) < 1:
            raise ConfigError(f"distill.{key}={dcfg.get(key)} must be >= 1; fix: a positive value")
    if dcfg.get("units_run") is not None and int(dcfg["units_run"]) < 1:
        raise ConfigError(f"distill.units_run={dcfg['units_run']} must be >= 1; fix: a positive count, or null")
    resolve_factor((dcfg.get("rded") or {}).get("factor", "auto"), int(dataset["input_size"]))


def fadrm_real_images(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> int:
    """The RDED init: ipc * factor^2 real crops per class."""
    return recover_real_images({**dcfg, "init": "rded"}, dataset)


def fadrm_cost(dcfg: Mapping[str, Any], dataset: Mapping[str, Any], ipc: int) -> Cost:
    """Units x sum(budgets) training passes, each by that iteration's teacher; a pass at s px counts
    (s / input)^2 of one at the input size (conv FLOPs scale with the area); plus the RDED init's scoring."""
    pool, C, size = dcfg["pool"], int(dataset["num_classes"]), int(dataset["input_size"])
    names, budgets = turn_order(dcfg["method"], list(pool["models"])), [int(b) for b in dcfg["budgets"]]
    sizes, total = stage_sizes(dcfg.get("input_sizes"), budgets, size), sum(budgets)
    share = [0.0] * len(names)
    for i in range(total):
        share[teacher_turn(i, len(names))] += (sizes[stage_at(i, budgets)] / size) ** 2
    chunk = int(dcfg.get("class_chunk", 100))
    units = [(i, k) for i in range(ipc) for k in range(-(-C // chunk))]
    run = units if dcfg.get("units_run") is None else units[:int(dcfg["units_run"])]
    images = sum(min(chunk, C - k * chunk) for _, k in run)
    work = [Work(name, images * share[m], train=True, pretrained=pool.get("pretrained"),
                 units=len(run) * total if m == 0 else 0.0, label=f"{name}: turn {m + 1} of {len(names)}")
            for m, name in enumerate(names)]
    work.append(rded_work(dict(dcfg.get("rded") or {}), dataset, pool, counted=False))
    return Cost("unit iterations", tuple(work), f"{len(run)} of {len(units)} units x {total} iterations "
                                                f"({'/'.join(map(str, sizes))} px)")


@dataclass
class FadrmConfig:
    """The keys of conf/distill/fadrm.yaml and fadrm_plus.yaml (documented there)."""
    method: str = "fadrm"
    pool: Any = None
    ipc: int = 10
    seed: int = 0
    input_sizes: Optional[List[int]] = None
    budgets: List[int] = field(default_factory=lambda: [500, 500, 500, 500])
    lr: float = 0.25
    betas: List[float] = field(default_factory=lambda: [0.5, 0.9])
    r_bn: float = 0.01
    first_bn_multiplier: float = 10.0
    alpha: float = 0.5
    jitter: Any = "auto"
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    flip_p: float = 0.5
    amp: bool = True
    rounding: str = "truncate"
    class_chunk: int = 100
    units_run: Optional[int] = None
    devices: int = 1
    cpu_threads: Optional[int] = None
    log_every: int = 100
    rded: Any = None
    holdout: Any = None


@register("fadrm", "fadrm_plus", uses_teacher=True, collective=True, check=check_fadrm,
          real_images=fadrm_real_images, cost=fadrm_cost, config=FadrmConfig)
def distill_fadrm(source: ImageSource, dataset: Mapping[str, Any], out_dir: Path, teachers: list, method: str,
                  ipc: int, seed: int, budgets: Sequence[int] = (500, 500, 500, 500),
                  input_sizes: Sequence[int] | None = None, lr: float = 0.25, betas: Sequence[float] = (0.5, 0.9),
                  r_bn: float = 0.01, first_bn_multiplier: float = 10.0, alpha: float = 0.5,
                  jitter: int | str = "auto", crop_scale: Sequence[float] = (0.08, 1.0), flip_p: float = 0.5,
                  amp: bool = True, rounding: str = "truncate", class_chunk: int = 100, devices: int = 1,
                  cpu_threads: int | None = None, units_run: int | None = None, log_every: int = 100,
                  rded: Mapping[str, Any] | None = None, work_dir: Path | None = None,
                  trainer_kwargs: Mapping[str, Any] | None = None, **_: Any) -> dict[str, Any]:
    dataset = dict(plain(dataset))  # plain containers: the job is pickled to spawned ranks
    check_fadrm({"budgets": budgets, "input_sizes": input_sizes, "alpha": alpha, "rounding": rounding,
                 "class_chunk": class_chunk, "devices": devices, "units_run": units_run, "rded": rded}, dataset)
    size = int(dataset["input_size"])
    sizes = stage_sizes(input_sizes, budgets, size)
    turns = turn_order(method, teachers)
    settings = FadrmSettings(
        iterations=sum(int(b) for b in budgets), lr=float(lr), betas=tuple(betas), r_bn=float(r_bn),
        first_bn_multiplier=float(first_bn_multiplier), jitter=resolve_jitter(jitter, size),
        crop_scale=tuple(crop_scale), flip_p=float(flip_p), log_every=int(log_every), input_sizes=tuple(sizes),
        budgets=tuple(int(b) for b in budgets), alpha=float(alpha), amp=bool(amp), rounding=str(rounding))
    schedule = committee_schedule([t.name for t in turns], {"size": len(turns), "mode": "fixed",
                                                            "weights": "equal"}, seed, None)
    own_work_dir = work_dir is None
    work = Path(out_dir) / ".work" if own_work_dir else Path(work_dir)
    store = UnitStore(work)
    progress = bool((trainer_kwargs or {}).get("enable_progress_bar", True))
    job = RecoverJob(list(turns), dataset, settings, schedule, "rded", None, ipc, class_chunk, seed,
                     work, progress, cpu_threads, None if units_run is None else int(units_run),
                     channels_last=bool((trainer_kwargs or {}).get("channels_last")))
    device = make_fabric(trainer_kwargs).device
    nets = [load_pool_teacher(t, dataset, device) for t in turns]
    check_sizes(nets, [t.name for t in turns], sorted(set(sizes)), int(dataset["channels"]))
    # The init, scored by the pool's first model: recomputed on resume (cheap, deterministic; the manifest
    # records the selection).
    job.init_images, init_selection = rded_images(source, dataset, nets[0], ipc, seed, progress=progress,
                                                  **dict(rded or {}))
    job.init_images = MappedTensor.write(job.init_images, work / f"init_images.{owner()}.npy")  # ranks map it
    del nets  # the ranks load their own
    launch_units(run_rank, job, store, trainer_kwargs, devices, method)
    records = promote_units(job, store, Path(out_dir), own_work_dir, method)
    return {"method": method, "ipc": ipc, "seed": seed, "init": "rded", "input_sizes": sizes,
            "budgets": [int(b) for b in budgets], "iterations": settings.iterations, "lr": float(lr),
            "alpha": float(alpha), "amp": bool(amp), "rounding": rounding, "jitter": settings.jitter,
            "units_run": job.units_run, "teachers": [{"name": t.name, "key": t.key} for t in turns],
            "init_selection": init_selection, "units": records, "images_dir": "images", "grid": "grid.png"}
