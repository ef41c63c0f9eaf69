"""The unit loop shared by the recover-style methods (recover.py: SRe2L / SRe2L++ / CV-DD; fadrm.py: FADRM /
FADRM+): a unit is (IPC index, class chunk); units are shared out over ranks, seeded by (seed, i, k), written as
they finish (hald/units.py) and skipped when a killed run starts again; then promoted into the image folder.
A method supplies only its `UnitStep` (what optimising one unit means) and its job (recover.RecoverJob, duck-typed
here so this module does not import the methods that use it)."""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hald import compute, dist
from hald.console import Ticker, is_terminal
from hald.data.distilled import load_distilled, save_png
from hald.distill.runtime import intra_op_threads, make_fabric, save_grid
from hald.seeding import seed_of
from hald.units import UnitStore

log = logging.getLogger(__name__)


def unit_name(ipc_index: int, chunk: int) -> str:
    return f"i{ipc_index:05d}-c{chunk:05d}"


def unit_files(ipc_index: int, classes: list[int]) -> list[str]:
    return [f"images/{c:05d}/{ipc_index:05d}.png" for c in classes]


def write_unit(store: UnitStore, ipc_index: int, chunk: int, images: torch.Tensor, classes: list[int],
               record: dict[str, Any]) -> None:
    """Save one unit: uint8 [B, C, H, W] images of `classes` at this IPC index, then its marker."""
    name = unit_name(ipc_index, chunk)
    if store.is_done(name):  # never rewrite a finished unit (e.g. two runs racing)
        return
    files = unit_files(ipc_index, classes)
    for img, rel in zip(images, files):
        save_png(img, store.root / rel)
    store.commit(name, files, {"ipc_index": ipc_index, "chunk": chunk, "classes": classes, **record})


def progress_bar(enabled: bool) -> Progress:
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), transient=True,
                    disable=not enabled or not is_terminal())  # a log file gets Ticker lines instead


@dataclass
class UnitStep:
    """What a recover-style method does inside the shared unit loop (`run_units`): recover and FADRM differ
    only here."""
    label: str                                                 # the progress bar's name ("recover", "fadrm")
    describe: Callable[[int, int], str]                        # unit (i, k) -> the bar's description
    losses: Callable[[dict], str]                              # on_log's values -> the bar's loss text
    optimise: Callable[..., tuple[torch.Tensor, dict]]         # (i, k, x0, targets, on_log) -> (x, record)
    pixels: Callable[[torch.Tensor], torch.Tensor]             # optimised floats -> the stored uint8
    skipped: dict                                              # record fields of a unit beyond units_run
    prepare: Callable[[int], None]                             # load IPC index i's teachers (before the unit's
                                                               # seed: building a model draws random weights)


def run_units(fabric, job, step: UnitStep) -> None:
    """This rank's share of the units: IPC indices i with i mod world size = rank; finished ones skipped. Each
    unit is seeded by (seed, i, k) inside a forked RNG, so units are independent of each other and of order."""
    store = UnitStore(job.work_dir)
    todo = [(i, k) for i, k in job.units()
            if i % fabric.world_size == fabric.global_rank and not store.is_done(unit_name(i, k))]
    s = job.settings
    threads = job.cpu_threads if fabric.device.type == "cpu" else None
    # progress counts the iterations of the units that are optimised (units_run caps them; the rest is written
    # from its init at once), so the ETA is of the work there is
    order = {u: n for n, u in enumerate(u for u in todo if job.runs(*u))}
    total = len(order) * s.iterations
    with intra_op_threads(threads), progress_bar(job.progress and fabric.global_rank == 0) as bar:
        task = bar.add_task(step.label, total=total, losses="")
        # in a log file (no terminal), the same progress as lines
        ticker = Ticker(step.label, total, "iterations") \
            if job.progress and fabric.global_rank == 0 and not is_terminal() else None
        for i, k in todo:
            n = order.get((i, k), 0)
            cls, unit_seed = job.classes(k), seed_of(job.seed, i, k)
            bar.update(task, description=step.describe(i, k))
            if job.runs(i, k):
                step.prepare(i)

            def on_log(t: int, vals: dict[str, float], n: int = n, i: int = i, k: int = k) -> None:
                bar.update(task, completed=n * s.iterations + t + 1, losses=step.losses(vals))
                if ticker is not None:
                    ticker.update(n * s.iterations + t + 1, f"{step.describe(i, k)} {step.losses(vals)}")

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(unit_seed)
                x0 = compute.as_input(job.x0(i, k, fabric.device), job.channels_last)  # the layout, not the values
                if job.runs(i, k):
                    with fabric.autocast():  # compute.recover (the Fabric's precision); fp32: no-op
                        x, record = step.optimise(i, k, x0, torch.tensor(cls, device=fabric.device), on_log)
                else:  # beyond distill.units_run: the init is the unit's image, as recorded
                    x, record = x0, {**step.skipped, "iterations": 0, "first": None, "last": None}
            write_unit(store, i, k, step.pixels(x), cls,
                       {"rank": fabric.global_rank, "seed": unit_seed, **record})
    fabric.barrier()


def ends(hist: Mapping[str, list], keys: Sequence[str]) -> dict[str, dict]:
    """A unit record's first and last logged values of `keys`."""
    return {"first": {key: hist[key][0] for key in keys}, "last": {key: hist[key][-1] for key in keys}}


def launch_units(run: Callable, job, store: UnitStore, trainer_kwargs: Mapping[str, Any] | None,
                 devices: int, label: str) -> None:
    """Run the job's missing units: `run(fabric, job)` on `devices` processes (Lightning Fabric), or on the
    ranks of the pipeline's DDP world when there is one (every rank joins, even with nothing to do)."""
    missing = [u for u in job.units() if not store.is_done(unit_name(*u))]
    devices = dist.world() if dist.active() else devices
    if missing or dist.active():
        log.info("%s: %d of %d units to do (%d finished before) on %d device(s)", label, len(missing),
                 len(job.units()), len(job.units()) - len(missing), devices)
        make_fabric(trainer_kwargs, devices).launch(run, job)


def promote_units(job, store: UnitStore, out_dir: Path, own_work_dir: bool, label: str) -> list:
    """Every unit finished: their records, their PNGs moved into `out_dir/images` (and the work dir removed
    when it was the build's own), the preview grid written."""
    names = [unit_name(*u) for u in job.units()]
    done = [n for n in names if store.is_done(n)]
    if len(done) != len(names):
        raise RuntimeError(f"{label} finished {len(done)} of {len(names)} units in {store.root}; run again to "
                           f"resume")
    records = store.records(names)
    store.promote(names, out_dir / "images", strip="images/")
    if own_work_dir:
        shutil.rmtree(store.root, ignore_errors=True)
    made = load_distilled(out_dir / "images", [str(k) for k in range(job.num_classes)], int(job.dataset["channels"]))
    save_grid(out_dir / "grid.png", made.images.view(job.num_classes, job.ipc, *made.images.shape[1:]), job.ipc)
    return records
