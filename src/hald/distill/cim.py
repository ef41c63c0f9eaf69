"""`distill=cim` (CIM, "Condensing Large-Scale Datasets Directly with Minimal Information Loss", ECCV'26):
real-image mosaics refined so that every quadrant keeps its real image's features.

As the official code does it (LINs-lab/CIM @ea71377, condense/condense.py; spec: docs/fidelity.md "CIM"), per
class c, with one frozen observer (the pool's first model, eval mode):
1. up to `mipc` real training images of c (seeded), at the synthesis resolution (the dataset's input size;
   ImageNet-style datasets through Resize(test_resize) + CenterCrop, as the official Resize(256) /
   CenterCrop(224) and Resize(73) / CenterCrop(64), condense.py:25-57);
2. the observer's cross-entropy to c on each; the `ipc * factor^2` lowest-CE images are the anchors, in
   ascending-CE order (condense/utils.py:30-37, `selector`);
3. distilled image j starts as a fixed factor x factor mosaic whose tile q (row-major) is anchor q * ipc + j,
   nearest-downsampled (data/utils/transforms.py:556-585 `mix_images`, F.interpolate's default mode);
4. a pixel residual delta (init 0) is optimised for `iterations` AdamW steps (lr 0.01, weight decay 0.01:
   torch's default, the official 1e-4 being commented out; condense.py:102-108). Each step cuts M + delta
   into its tiles, upsamples each bilinearly to the full size (`decode_zoom`, transforms.py:519-541), so view
   i is the view of anchor i, normalises [anchors; views], applies ONE flip / shift / cutout draw to the whole
   batch (DiffAug "crop_cutout_flip", batch=True; transforms.py:344-487), and minimises

       L = sum_i mean_d | f(anchor_i)_d - f(view_i)_d |          (condense/utils.py:132-143 "l1_mean")

   with f = the input of the observer's `feature_layer` (condense.py:118, load_model.py:170-215);
5. M + delta after the last step (no clamp, no best-of) is the class's ipc images.

Named departures (docs/fidelity.md): every random draw is seeded (the official code sets no seed): the
subset by (seed, class) as RDED's, the augmentation by seed_of(seed, class); the images are stored as PNG, so
M + delta is clamped to [0, 1] and rounded to uint8 (the official data.pt keeps unclamped floats; the manifest
records per class the fraction of pixels clamped and the mean amount); flips follow `dataset.flip_p` (0 on
digits, 0.5 elsewhere as the official); the forward stops at the feature layer (the official runs the whole
network: the same features and gradient); ties in CE are broken by index (a stable sort); a class with fewer
than mipc images is scored once each (the official loader repeats its files cyclically).

One unit = one class, written when it finishes and skipped when a killed run is started again
(hald/units.py); with `devices > 1`, or inside the pipeline's DDP world, class c goes to rank c mod world size.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torchvision.transforms import v2

from hald import dist
from hald.artifacts import plain
from hald.console import track
from hald.data.distilled import load_distilled, save_png
from hald.data.sources import ImageSource
from hald.data.transforms import eval_transform
from hald.distill.pixels import normalize
from hald.distill.rded import best_crops, resolve_factor
from hald.distill.registry import Cost, Work, register
from hald.distill.runtime import intra_op_threads, load_pool_teacher, make_fabric, save_grid
from hald.errors import ConfigError
from hald.models.teachers import Teacher
from hald.seeding import seed_of
from hald.units import UnitStore

log = logging.getLogger(__name__)


from hald.distill.cim_matching import (cim_loss, layer_input, mosaic, quadrant_views,  # noqa: E402,F401
                                      resolve_feature_layer, shared_augment)


# -- anchors ----------------------------------------------------------------------------------------------------
def real_fit(dataset: Mapping[str, Any]) -> v2.Compose:
    """uint8 real image -> [0, 1] floats at the synthesis size: the evaluation transform without its
    normalisation (Resize(test_resize) + CenterCrop(input) on ImageNet-style datasets, else as they are)."""
    return v2.Compose([t for t in eval_transform(dataset).transforms if not isinstance(t, v2.Normalize)])


def class_subset(targets: Sequence[int], label: int, mipc: int, seed: int) -> np.ndarray:
    """Up to mipc train indices of class `label`, sorted: the same seeded draw as RDED's (rded.select_class)."""
    idx = np.flatnonzero(np.asarray(targets) == label)
    if len(idx) > mipc:
        idx = np.sort(np.random.default_rng([seed, label]).choice(idx, mipc, replace=False))
    return idx


def class_anchors(source: ImageSource, teacher: nn.Module, label: int, dataset: Mapping[str, Any], n: int,
                  mipc: int, seed: int, batch_size: int = 256) -> tuple[torch.Tensor, dict[str, Any]]:
    """The n lowest-CE of up to mipc real images of the class, ascending ([n, C, H, W] in [0, 1], CPU), and
    what was chosen (train-split indices and CE)."""
    idx = class_subset(source.targets, label, mipc, seed)
    if len(idx) < n:
        raise ConfigError(f"class {label} has {len(idx)} training images, CIM needs ipc * factor^2 = {n}; fix: a "
                          f"smaller ipc")
    fit, size = real_fit(dataset), int(dataset["input_size"])
    images = torch.stack([fit(source[int(i)][0]) for i in idx])
    if tuple(images.shape[-2:]) != (size, size):
        raise ConfigError(f"cim: real images of {dataset.get('name', 'the dataset')} are {tuple(images.shape[-2:])}, "
                          f"the input size is {size}; fix: dataset.test_resize=<a resize before the centre crop>")
    _, ce = best_crops(teacher, images[:, None], label, dataset, batch_size)  # one "crop" each: its own CE
    order = torch.argsort(ce, stable=True)[:n]
    to_train = getattr(source, "base_indices", None)  # provenance in train-split indices, also through a view
    chosen = [int(idx[j]) if to_train is None else int(to_train[idx[j]]) for j in order]
    return images[order], {"class": label, "train_indices": chosen, "ce": [round(float(ce[j]), 5) for j in order]}


# -- one class ---------------------------------------------------------------------------------------------------
@dataclass
class CimSettings:  # not frozen: Lightning's spawn launcher rebuilds dataclass arguments
    factor: int = 2
    iterations: int = 200
    lr: float = 0.01
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    flip_p: float = 0.5
    shift: float = 0.125
    cutout: float = 0.5
    log_every: int = 10


def synthesize(features: Callable[[torch.Tensor], torch.Tensor], anchors: torch.Tensor, ipc: int,
               dataset: Mapping[str, Any], s: CimSettings,
               augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """Optimise one class: anchors [factor^2 * ipc, C, H, W] in [0, 1] -> (M + delta [ipc, C, H, W], unclamped;
    loss history at iteration 0, every log_every and the last). `augment` (default: shared_augment with the
    settings) sees the normalised batch [anchors; views]."""
    aug = augment or (lambda x: shared_augment(x, s.flip_p, s.shift, s.cutout))
    m = mosaic(anchors, ipc, s.factor).detach()
    delta = torch.zeros_like(m, requires_grad=True)
    opt = torch.optim.AdamW([delta], lr=s.lr, betas=tuple(s.betas), weight_decay=s.weight_decay)
    n = anchors.shape[0]
    history: dict[str, list[float]] = {"iteration": [], "loss": []}
    for t in range(s.iterations):
        views = quadrant_views(m + delta, s.factor)
        f = features(aug(normalize(torch.cat([anchors, views]), dataset)))
        loss = cim_loss(f[n:], f[:n])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if t % s.log_every == 0 or t == s.iterations - 1:
            history["iteration"].append(t)
            history["loss"].append(float(loss.detach()))
    return (m + delta).detach(), history


def to_uint8_01(x: torch.Tensor) -> torch.Tensor:
    """[0, 1]-scale floats -> uint8: clamped, x 255, rounded."""
    return x.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


# -- units, ranks --------------------------------------------------------------------------------------------------
@dataclass
class CimJob:
    """Everything a rank needs (pickled to spawned DDP processes)."""
    source: ImageSource
    teacher: dict[str, Any]  # the Teacher's fields: Lightning's spawn launcher refuses frozen dataclasses
    dataset: dict[str, Any]
    settings: CimSettings
    ipc: int
    seed: int
    mipc: int
    feature_layer: str
    batch_size: int
    work_dir: Path
    progress: bool
    cpu_threads: int | None = None
    units_run: int | None = None  # optimise the first N classes only; the others keep their mosaic (make rehearse)

    @property
    def num_classes(self) -> int:
        return int(self.dataset["num_classes"])


def unit_name(label: int) -> str:
    return f"c{label:05d}"


def write_class(store: UnitStore, label: int, images: torch.Tensor, record: dict[str, Any]) -> None:
    """Save one class: uint8 [ipc, C, H, W] as images/<class>/<j>.png, then its marker."""
    name = unit_name(label)
    if store.is_done(name):  # never rewrite a finished unit (e.g. two runs racing)
        return
    files = [f"images/{label:05d}/{j:05d}.png" for j in range(len(images))]
    for img, rel in zip(images, files):
        save_png(img, store.root / rel)
    store.commit(name, files, record)


def run_rank(fabric, job: CimJob) -> None:
    """This rank's classes (c mod world size = rank), finished ones skipped; each seeded by (seed, class)."""
    store = UnitStore(job.work_dir)
    todo = [c for c in range(job.num_classes)
            if c % fabric.world_size == fabric.global_rank and not store.is_done(unit_name(c))]
    s = job.settings
    threads = job.cpu_threads if fabric.device.type == "cpu" else None
    net = load_pool_teacher(Teacher(**job.teacher), job.dataset, fabric.device) if todo else None
    layer = resolve_feature_layer(net, job.feature_layer) if todo else None
    with intra_op_threads(threads):
        for c in (track(todo, "cim: classes") if job.progress and fabric.global_rank == 0 else todo):
            unit_seed = seed_of(job.seed, c)
            anchors, chosen = class_anchors(job.source, net, c, job.dataset, job.ipc * s.factor ** 2, job.mipc,
                                            job.seed, job.batch_size)
            anchors = anchors.to(fabric.device)
            runs = job.units_run is None or c < job.units_run
            with torch.random.fork_rng(devices=[]):  # classes are independent of each other and of the order
                torch.manual_seed(unit_seed)
                x, hist = synthesize(lambda b: layer_input(net, layer, b), anchors, job.ipc, job.dataset,
                                     s if runs else CimSettings(**{**vars(s), "iterations": 0}))
            cut = (x - x.clamp(0, 1)).abs()  # what the PNG's clamp removes (the official keeps it)
            outside, cut_mean = float((cut > 0).float().mean()), float(cut.mean())
            write_class(store, c, to_uint8_01(x), {
                "class": c, "rank": fabric.global_rank, "seed": unit_seed, "feature_layer": layer,
                "iterations": s.iterations if runs else 0, "anchors": chosen,
                "first_loss": hist["loss"][0] if hist["loss"] else None,
                "last_loss": hist["loss"][-1] if hist["loss"] else None, "clamped_fraction": round(outside, 6),
                "clamped_mean_abs": round(cut_mean, 7)})
            if runs and hist["loss"]:
                log.info("cim: class %d loss %.4f -> %.4f (clamped to [0, 1]: %.1f%% of pixels, by %.5f on average)",
                         c, hist["loss"][0], hist["loss"][-1], 100 * outside, cut_mean)
    fabric.barrier()


# -- the record ------------------------------------------------------------------------------------------------------
def check_cim(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> None:
    """Pre-flight: everything about a CIM config that can fail before teachers are trained."""
    factor = int(dcfg.get("factor", 2))
    if factor < 2:
        raise ConfigError(f"distill.factor={factor}: CIM needs factor >= 2 (at 1 every view is its anchor, the loss "
                          f"and its gradient are 0); fix: distill.factor=2 (CIM's default)")
    resolve_factor(factor, int(dataset["input_size"]))
    for key in ("mipc", "devices", "batch_size"):
        if int(dcfg.get(key, 1)) < 1:
            raise ConfigError(f"distill.{key}={dcfg.get(key)} must be >= 1; fix: a positive value")
    if int(dcfg.get("iterations", 0)) < 0:
        raise ConfigError(f"distill.iterations={dcfg.get('iterations')} must be >= 0; fix: 200 (CIM's niter)")
    if dcfg.get("units_run") is not None and int(dcfg["units_run"]) < 1:
        raise ConfigError(f"distill.units_run={dcfg['units_run']} must be >= 1; fix: a positive count, or null")
    need = int(dcfg.get("ipc") or 0) * factor ** 2
    if int(dcfg.get("mipc", 300)) < need:
        raise ConfigError(f"distill.mipc={dcfg.get('mipc')} is fewer than the ipc * factor^2 = {need} anchors CIM "
                          f"keeps; fix: distill.mipc>={need} (CIM: 300, 500 at IPC 100, 1000 at IPC 200)")
    for key in ("shift", "cutout", "flip_p"):
        if not 0 <= float(dcfg.get(key, 0)) <= 1:
            raise ConfigError(f"distill.{key}={dcfg.get(key)} must be in [0, 1]; fix: CIM's 0.125 / 0.5 / 0.5")
    pool = dcfg.get("pool") or {}
    if str(dcfg.get("feature_layer", "auto")) != "auto" and pool.get("models"):
        net = _skeleton(str(pool["models"][0]), pool.get("pretrained"), dataset)
        if net is not None:
            resolve_feature_layer(net, str(dcfg["feature_layer"]))


def _skeleton(name: str, pretrained: Any, dataset: Mapping[str, Any]) -> nn.Module | None:
    """The observer's modules without weights (meta device), to check a feature_layer name in pre-flight;
    None when the name does not build (the teacher checks report that)."""
    import torchvision

    from hald.models import build_backbone

    try:
        with torch.device("meta"):
            if pretrained:
                return torchvision.models.get_model(name, weights=None)
            return build_backbone(name, int(dataset["num_classes"]), int(dataset["channels"]),
                                  int(dataset["input_size"]))
    except (ValueError, KeyError):
        return None


def cim_real_images(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> int:
    """CIM tiles ipc * factor^2 distinct real images per class (chosen among up to mipc)."""
    return int(dcfg.get("ipc") or 0) * int(dcfg.get("factor", 2)) ** 2


def cim_cost(dcfg: Mapping[str, Any], dataset: Mapping[str, Any], ipc: int) -> Cost:
    """Per class: mipc scoring forwards, then per iteration one training pass (forward + backward to the
    pixels) of 2 * ipc * factor^2 images (anchors and views), counted as whole-model passes (an upper bound:
    the forward stops at the feature layer)."""
    pool, C = dcfg["pool"], int(dataset["num_classes"])
    model, pre = str(pool["models"][0]), pool.get("pretrained")
    iters, n = int(dcfg.get("iterations", 200)), ipc * int(dcfg.get("factor", 2)) ** 2
    cap = dcfg.get("units_run")
    run = C if cap is None else min(int(cap), C)
    return Cost("class iterations", (
        Work(model, C * int(dcfg.get("mipc", 300)), pretrained=pre, label="CIM anchor scoring"),
        Work(model, run * iters * 2 * n, train=True, pretrained=pre, units=run * iters)),
        f"{run} of {C} classes x {iters} iterations")


@dataclass
class CimConfig:
    """The keys of conf/distill/cim.yaml (documented there)."""
    method: str = "cim"
    pool: Any = None
    ipc: int = 10
    seed: int = 0
    factor: int = 2
    mipc: int = 300
    iterations: int = 200
    lr: float = 0.01
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    feature_layer: str = "auto"
    flip_p: float = 0.5
    shift: float = 0.125
    cutout: float = 0.5
    batch_size: int = 256
    units_run: Optional[int] = None
    devices: int = 1
    cpu_threads: Optional[int] = None


@register("cim", uses_teacher=True, collective=True, check=check_cim, real_images=cim_real_images, cost=cim_cost,
          config=CimConfig)
def distill_cim(source: ImageSource, dataset: Mapping[str, Any], out_dir: Path, teachers: list[Teacher], ipc: int,
                seed: int, factor: int = 2, mipc: int = 300, iterations: int = 200, lr: float = 0.01,
                weight_decay: float = 0.01, betas: Sequence[float] = (0.9, 0.999), feature_layer: str = "auto",
                flip_p: float = 0.5, shift: float = 0.125, cutout: float = 0.5, batch_size: int = 256,
                units_run: int | None = None, devices: int = 1, cpu_threads: int | None = None,
                work_dir: Path | None = None, trainer_kwargs: Mapping[str, Any] | None = None,
                **_: Any) -> dict[str, Any]:
    dataset = dict(plain(dataset))  # plain containers: the job is pickled to spawned ranks
    check_cim({"ipc": ipc, "factor": factor, "mipc": mipc, "iterations": iterations, "devices": devices,
               "batch_size": batch_size, "units_run": units_run, "shift": shift, "cutout": cutout,
               "flip_p": flip_p}, dataset)
    settings = CimSettings(int(factor), int(iterations), float(lr), float(weight_decay), tuple(betas), float(flip_p),
                           float(shift), float(cutout))
    own_work_dir = work_dir is None
    work = Path(out_dir) / ".work" if own_work_dir else Path(work_dir)
    store = UnitStore(work)
    progress = bool((trainer_kwargs or {}).get("enable_progress_bar", True))
    job = CimJob(source, asdict(teachers[0]), dataset, settings, int(ipc), int(seed), int(mipc), str(feature_layer),
                 int(batch_size), work, progress, cpu_threads, None if units_run is None else int(units_run))
    names = [unit_name(c) for c in range(job.num_classes)]
    missing = [n for n in names if not store.is_done(n)]
    devices = dist.world() if dist.active() else devices  # inside the pipeline's DDP world: its ranks
    if missing or dist.active():  # every rank of a DDP world joins (the barrier), even with nothing to do
        log.info("cim: %d of %d classes to do (%d finished before) on %d device(s)", len(missing), len(names),
                 len(names) - len(missing), devices)
        make_fabric(trainer_kwargs, devices).launch(run_rank, job)
    done = [n for n in names if store.is_done(n)]
    if len(done) != len(names):
        raise RuntimeError(f"cim finished {len(done)} of {len(names)} classes in {work}; run again to resume")
    records = store.records(names)
    store.promote(names, Path(out_dir) / "images", strip="images/")
    if own_work_dir:
        shutil.rmtree(work, ignore_errors=True)
    made = load_distilled(Path(out_dir) / "images", [str(k) for k in range(job.num_classes)], int(dataset["channels"]))
    save_grid(Path(out_dir) / "grid.png", made.images.view(job.num_classes, ipc, *made.images.shape[1:]), ipc)
    return {"method": "cim", "ipc": ipc, "seed": seed, "teachers": [{"name": teachers[0].name, "key": teachers[0].key}],
            "factor": int(factor), "mipc": int(mipc), "iterations": int(iterations), "units_run": job.units_run,
            "feature_layer": records[0]["feature_layer"], "units": records, "images_dir": "images", "grid": "grid.png"}
