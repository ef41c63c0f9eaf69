"""Memory and start-up of student training, per process and in total, for 1..k DDP ranks (gloo, CPU).

    python -m hald_tools.bench_memory --images 50000 --size 224 --classes 1000 --ranks 1,2 [--store-gb 6] \
        --out outputs/memory/bench.md

Generates a synthetic distilled set (PNGs, the image array made from them by the real writer, and the same
images as JPEGs in an ImageFolder), optionally a synthetic label store of --store-gb written by the store
writer, then per case and rank count launches the training processes (a Lightning fit of --steps steps) and
records each one's peak RSS (VmHWM), steady RSS and PSS after the steps (/proc/self/status, smaps_rollup: a
mapped page shared by the ranks counts in every RSS, once in the PSS total) and the time from process start to
the first training step; with --full-pass each process then reads every image once through its loader (one
epoch's reads, no training) and its RSS, anonymous / file-backed RSS and PSS are recorded again; with
--store-pass each then reads every stored record once (a whole run's label reads). The node's view: each case
starts with its data files evicted from the page cache (page_cache.evict); afterwards the cache they fill
(held once per node however many ranks read them) is measured, and PSS + that cache is the node's total. Cases:

- before: the PNGs decoded into one tensor per process (load_distilled) plus the channels-last copy;
- after:  the array memory-mapped (data/image_array.py), no decode, no copy, the pages handed back after each
          batch (distilled.release_pages); the student channels-last (compute.channels_last, hald's default);
- peers:  torchvision ImageFolder of JPEGs, decoded per batch with RandomResizedCrop + flip (SRe2L's
          train_FKD.py data path), the same model and batch.

Writes a markdown table with the command, the machine and the load average. Small sizes run in seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hald_tools.page_cache import cached_mb, evict

CASES = ("before", "after", "peers")
SRC = str(Path(__file__).resolve().parents[1])  # hald and hald_tools, for the launched ranks


# -- the synthetic data ------------------------------------------------------------------------------------------
def generate(work: Path, n: int, size: int, classes: int, jpeg: bool = True) -> None:
    """n smooth random images (n // classes per class) as PNGs and JPEGs; the image array from the PNGs."""
    from PIL import Image

    from hald.data.image_array import write_array

    rng = np.random.default_rng(0)
    per = max(1, n // classes)
    for c in range(classes):
        for k in range(per):
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            im = Image.fromarray(small).resize((size, size), Image.BILINEAR)
            path = work / "set" / "images" / f"{c:05d}" / f"{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            im.save(path)
            if jpeg:
                jp = work / "jpeg" / f"{c:05d}" / f"{k:05d}.JPEG"
                jp.parent.mkdir(parents=True, exist_ok=True)
                im.save(jp, quality=90)
    write_array(work / "set", work / "set" / "images", class_list(classes), 3)


def class_list(classes: int) -> list[str]:
    return [f"{c:05d}" for c in range(classes)]


def write_store(work: Path, size: int, batch: int, gb: float) -> None:
    """A label store of about `gb` GB for the set, written by the store writer (random labels, real geometry)."""
    import torch

    from hald import artifacts
    from hald.data.image_array import open_array
    from hald.data.replay import sample_pass
    from hald.labels.budget import Plan
    from hald.labels.codecs import Codec
    from hald.labels.relabel import store_fields
    from hald.labels.store import shard_bytes, shard_name, write_shard

    images = open_array(work / "set", work / "set" / "images")
    n, c = len(images), len(images.classes)
    codec = Codec.from_config({"name": "float"})
    passes = max(1, round(gb * 1e9 / shard_bytes(n, batch, codec, c)))
    cfg = dict(batch_size=batch, temperature=20.0, crop_scale=[0.08, 1.0], crop_ratio=[0.75, 4 / 3], flip_p=0.5,
               cutmix_alpha=1.0, seed=0)
    out = work / "store"
    out.mkdir()
    shards = []
    # One pass's geometry and random labels for every pass: their values do not matter here, their bytes do
    # (and drawing 50,000 crops per pass would make a 28 GB store take a quarter of an hour).
    batches = sample_pass(n, images.hw, batch, size, seed=0)
    labels = [torch.softmax(torch.randn(len(g), c), 1) for g in batches]
    for p in range(passes):
        shards.append(write_shard(out / shard_name(p), batches, labels, codec, p, n))
    dataset = {"input_size": size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    fields = store_fields(Plan(passes, codec, shards[0]["bytes"], 0, None), cfg, dataset, num_images=n,
                          ipc=images.ipc, classes=images.classes, images_sha256=images.sha256, teacher_mode="eval",
                          teacher_weights=[1.0], shards=shards)
    artifacts.finish(out, "relabel", "bench", cfg, {}, **fields, dataset="bench")


# -- the node's page cache -------------------------------------------------------------------------------------------
def data_files(work: Path, case: str) -> list[Path]:
    """The files a case's training reads its pixels and labels from (what the node's page cache holds for it)."""
    if case == "peers":
        return sorted((work / "jpeg").rglob("*.JPEG"))
    files = sorted((work / "set" / "images").rglob("*.png")) if case == "before" else [work / "set" / "images.npy"]
    return files + sorted((work / "store").glob("*.safetensors"))


# -- one training process -----------------------------------------------------------------------------------------
def status_kb(*keys: str) -> dict[str, float]:
    """Fields of /proc/self/status in kB (VmHWM, VmRSS, RssAnon, RssFile, ...)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: float(status[k].split()[0]) for k in keys}


def memory() -> dict[str, float]:
    """This process's peak and current RSS (and its anonymous and file-backed parts) and its PSS, in MB."""
    kb = status_kb("VmHWM", "VmRSS", "RssAnon", "RssFile")
    pss = 0.0
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = float(line.split()[1])
    except OSError:
        pass
    peak = max(kb["VmHWM"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return {"peak_mb": peak / 1024, "rss_mb": kb["VmRSS"] / 1024, "pss_mb": pss / 1024,
            "anon_mb": kb["RssAnon"] / 1024, "file_mb": kb["RssFile"] / 1024}


def worker(args: argparse.Namespace) -> None:
    import lightning as L
    import torch

    from hald.models import build_backbone

    torch.set_num_threads(1)
    t0 = float(os.environ["BENCH_T0"])
    work, world = Path(args.work), int(os.environ.get("WORLD_SIZE", "1"))
    classes = class_list(args.classes)
    first: dict[str, float] = {}

    class FirstStep(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if not first:
                first.update(first_step_s=time.time() - t0, **{f"first_{k}": v for k, v in memory().items()})

    net = build_backbone(args.model, args.classes, 3, args.size)
    if args.case == "peers":
        module, dm = peers_module(net, work, args)
    else:
        module, dm = hald_module(net, work, classes, args)
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", max_steps=args.steps,
                        logger=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[FirstStep()])
    trainer.fit(module, datamodule=dm)
    steady = memory()
    if args.full_pass:  # every image read once, as an epoch does (each rank all of them: the worst case)
        loader = module.train_dataloader() if args.case == "peers" else dm.loader_phase.loader(0, render_here=True)
        for _ in loader:
            pass
        steady.update({f"pass_{k}": v for k, v in memory().items()})
        steady["peak_mb"] = steady["pass_peak_mb"]
    if args.store_pass and dm is not None and dm.store is not None:  # every stored record once: a whole run's reads
        for r in range(len(dm.store)):
            dm.store[r]
        steady.update({f"store_{k}": v for k, v in memory().items()})
        steady["peak_mb"] = max(steady["peak_mb"], steady["store_peak_mb"])
    rank = int(os.environ.get("RANK", "0"))
    Path(f"{args.result}.{rank}.json").write_text(json.dumps({**first, **steady, "rank": rank}))


def hald_module(net, work: Path, classes: list[str], args: argparse.Namespace):
    import torch
    from torch.utils.data import TensorDataset

    from hald.data.distilled import load_distilled
    from hald.data.image_array import open_array
    from hald.labels.store import open_store_for
    from hald.train.datamodule import HALDDataModule
    from hald.train.module import StudentModule
    from hald.train.phases import standard_phases
    from hald.train.schedule import HARD, SOFT, Schedule

    root = work / "set" / "images"
    images = load_distilled(root, classes, 3) if args.case == "before" else open_array(work / "set", root, classes)
    ds = {"name": "bench", "input_size": args.size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
          "channels": 3}
    phases = standard_phases(args.batch, args.batch)
    if (work / "store").is_dir():
        store, schedule = open_store_for(work / "store", images), Schedule(((SOFT, 1),))
    else:
        store, schedule, phases = None, Schedule(((HARD, 1),)), {"hard": phases["hard"]}
    empty = TensorDataset(torch.zeros(0, 3, args.size, args.size), torch.zeros(0, dtype=torch.long))
    dm = HALDDataModule(images, store, ds, schedule, phases, empty, num_workers=args.workers,
                        images_on_device=False)
    # channels-last as hald runs by default (conf/compute); fp32 like the peers' row (compute.student=32-true)
    return StudentModule(net, len(classes), schedule, dm.phases, lr=1e-3, channels_last=True), dm


def peers_module(net, work: Path, args: argparse.Namespace):
    """SRe2L's train_FKD.py data path: ImageFolder, per-batch JPEG decode, RandomResizedCrop + flip."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(args.size, scale=(0.08, 1.0)),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    data = datasets.ImageFolder(str(work / "jpeg"), transform=tf)

    class Peers(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

        def train_dataloader(self):
            return DataLoader(data, batch_size=args.batch, shuffle=True, num_workers=args.workers)

    return Peers(), None


# -- the driver ------------------------------------------------------------------------------------------------------
def run_case(case: str, world: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Launch `world` ranks of one case (rank = a process started here, as torchrun would) and sum them up."""
    result = work / f"result-{case}-{world}"
    port = 29500 + (os.getpid() + world * 7 + CASES.index(case)) % 2000
    cmd = [sys.executable, "-m", "hald_tools.bench_memory", "--worker", case, "--work", str(work),
           "--result", str(result)] + [f"--{k}={getattr(args, k)}" for k in
                                      ("classes", "size", "batch", "steps", "model", "workers")]
    cmd += ["--full-pass"] if args.full_pass else []
    cmd += ["--store-pass"] if args.store_pass else []
    files = data_files(work, case)
    evict(files)
    procs = []
    for rank in range(world):
        env = {**os.environ, "BENCH_T0": str(time.time()), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank), "NODE_RANK": "0",
               "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
        if world == 1:
            for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
                env.pop(k)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=args.timeout)
        if p.returncode:
            raise RuntimeError(f"bench_memory: {case} x{world} failed (exit {p.returncode}): {err[-2000:]}")
    rows = [json.loads(Path(f"{result}.{r}.json").read_text()) for r in range(world)]
    out = {"case": case, "ranks": world, "peak_mb": max(r["peak_mb"] for r in rows),
           "total_peak_mb": sum(r["peak_mb"] for r in rows), "total_rss_mb": sum(r["rss_mb"] for r in rows),
           "total_pss_mb": sum(r["pss_mb"] for r in rows), "first_step_s": max(r["first_step_s"] for r in rows),
           "anon_mb": max(r["anon_mb"] for r in rows), "file_mb": max(r["file_mb"] for r in rows)}
    if "pass_rss_mb" in rows[0]:
        out.update(pass_rss_mb=max(r["pass_rss_mb"] for r in rows), pass_file_mb=max(r["pass_file_mb"] for r in rows),
                   pass_total_pss_mb=sum(r["pass_pss_mb"] for r in rows))
    if "store_rss_mb" in rows[0]:
        out.update(store_rss_mb=max(r["store_rss_mb"] for r in rows), store_file_mb=max(r["store_file_mb"] for r in rows))
    # The node's memory for the job: the processes' PSS (at the end) plus the page cache the case's reads filled
    # (once per node however many ranks read it; reclaimable, so what a node can use, not what it must have).
    pss = sum(r.get("store_pss_mb", r.get("pass_pss_mb", r["pss_mb"])) for r in rows)  # after the last reads
    cache = cached_mb(files)
    out.update(cache_mb=cache, node_mb=pss + cache)
    return out


def median_row(runs: list[dict]) -> dict:
    """The median of each number over repeated runs of one case (peak RSS moves by ~10 % from run to run:
    where the allocator puts the backward's buffers), with the peak's range."""
    out = {k: (float(np.median([r[k] for r in runs])) if isinstance(v, float) else v) for k, v in runs[0].items()}
    out.update(peak_min_mb=min(r["peak_mb"] for r in runs), peak_max_mb=max(r["peak_mb"] for r in runs), runs=len(runs))
    return out


def run_lines(command: str, load: tuple, machine_extra: str = "") -> list[str]:
    """A bench table's first lines: the command, the machine, the load average at start and now."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [f"- command: `{command}`",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {mem:.1f} GiB, {platform.platform()}{machine_extra}",
            f"- load average (1, 5, 15 min) at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; at end: "
            + " ".join(f"{v:.2f}" for v in os.getloadavg())]


def write_md(out: str | Path, md: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(md)
    print(md)


def store_size(work: Path) -> str:
    """The label store as it is on disk (a reused one may not be --store-gb's)."""
    shards = sorted((work / "store").glob("*.safetensors"))
    if not shards:
        return "none (hard crops)"
    return f"{sum(f.stat().st_size for f in shards) / 1e9:.1f} GB in {len(shards)} shards"


def table(rows: list[dict], args: argparse.Namespace, command: str, load: tuple, gen_s: float, store: str) -> str:
    peers = {r["ranks"]: r["peak_mb"] for r in rows if r["case"] == "peers"}
    one = {r["case"]: r["total_pss_mb"] for r in rows if r["ranks"] == 1}
    one_node = {r["case"]: r["node_mb"] for r in rows if r["ranks"] == 1}
    extra = ((" after a pass over every image: RSS / process, file RSS, total PSS (MB) |" if args.full_pass else "")
             + (" after every stored record: RSS / process, file RSS (MB) |" if args.store_pass else ""))
    lines = [f"# Memory and start-up: {args.images} images, {args.size} px, {args.classes} classes", "",
             *run_lines(command, load),
             f"- batch {args.batch} per rank, {args.steps} steps, model {args.model}, {args.workers} loader workers, "
             f"{args.repeat} run(s) per row (medians; the peak's range in brackets); "
             f"label store: {store}; data generated in "
             f"{gen_s:.0f} s", "",
             "Peak and steady RSS count a mapped page in every process that has it in its page table; anonymous "
             "RSS is the process's own memory; PSS splits shared pages between processes. Page cache: the case's "
             "data files (array and store shards, or JPEGs) resident after the run, evicted before it "
             "(POSIX_FADV_DONTNEED, measured with mincore); it is held once per node whatever the ranks, and is "
             "reclaimable. Node = the processes' PSS after their last reads + that page cache.", "",
             "| case | ranks | peak RSS / process (MB) | total peak RSS (MB) | total steady RSS (MB) | anon / file RSS "
             "per process (MB) | total PSS (MB) | PSS vs 1 rank | first step (s) | peak vs peers | data in page "
             "cache (MB) | node (MB) | node vs 1 rank |" + extra,
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * extra.count("|")]

    def ratio(a, b):
        return f"{a / b:.2f}x" if b else "-"

    for r in rows:
        spread = f" ({r['peak_min_mb']:.0f}-{r['peak_max_mb']:.0f})" if r["runs"] > 1 else ""
        line = (f"| {r['case']} | {r['ranks']} | {r['peak_mb']:.0f}{spread} | {r['total_peak_mb']:.0f} | "
                f"{r['total_rss_mb']:.0f} | {r['anon_mb']:.0f} / {r['file_mb']:.0f} | {r['total_pss_mb']:.0f} | "
                f"{ratio(r['total_pss_mb'], one.get(r['case']))} | {r['first_step_s']:.1f} | "
                f"{ratio(r['peak_mb'], peers.get(r['ranks']))} | {r['cache_mb']:.0f} | {r['node_mb']:.0f} | "
                f"{ratio(r['node_mb'], one_node.get(r['case']))} |")
        if args.full_pass:
            line += f" {r['pass_rss_mb']:.0f}, {r['pass_file_mb']:.0f}, {r['pass_total_pss_mb']:.0f} |"
        if args.store_pass:
            line += f" {r['store_rss_mb']:.0f}, {r['store_file_mb']:.0f} |" if "store_rss_mb" in r else " - |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--store-gb", type=float, default=0.0, dest="store_gb")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--model", default="convnet_w32")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--full-pass", action="store_true", dest="full_pass",
                    help="after the steps, each process reads every image once through its loader (an epoch's reads)")
    ap.add_argument("--store-pass", action="store_true", dest="store_pass",
                    help="then each process reads every record of the label store once (a whole run's label reads)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case and rank count; the table shows medians")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--work", default=None, help="where the synthetic data goes (default: a temp dir, removed)")
    ap.add_argument("--out", default="outputs/memory/bench.md",
                    help="the table (experiments/memory.md is experiments/memory.sh's, with its reading)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    if args.worker:
        args.case = args.worker
        worker(args)
        return []
    command = "python -m hald_tools.bench_memory " + " ".join(argv if argv is not None else sys.argv[1:])
    load = os.getloadavg()
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="hald-bench-memory-"))
    cases = [c for c in args.cases.split(",") if c]
    try:
        t = time.time()
        if not (work / "set" / "images.npy").is_file():
            generate(work, args.images, args.size, args.classes, jpeg="peers" in cases)
        if args.store_gb and not (work / "store").is_dir():  # a --work dir's store is reused (memory.sh swaps it)
            write_store(work, args.size, args.batch, args.store_gb)
        gen_s = time.time() - t
        rows = []
        for case in cases:
            for world in [int(r) for r in args.ranks.split(",")]:
                rows.append(median_row([run_case(case, world, args, work) for _ in range(args.repeat)]))
                print(json.dumps(rows[-1]), flush=True)
        write_md(args.out, table(rows, args, command, load, gen_s, store_size(work)))
        return rows
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
