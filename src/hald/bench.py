"""`make bench`: the storage and data-path benchmarks, each a ratio measured side by side in one process.

    python -m hald.bench [--out experiments/bench.md] [--skip-accuracy]

1. replay: images/s of the vectorised `render` against a per-image loop, on the same stored records
2. relabel: labels/s of grouped-BN (BSSL) relabel, 8 stored batches per forward, against one forward per batch
3. training: soft-epoch step time against hard-epoch step time, same student and batch size
4. storage: bytes per stored label for each codec at C = 10, 200, 1000, and labels per class in 285 MB (IN-1K)
5. accuracy at equal bytes on mnist5k (fp16 / top-k / quantised), HALD schedule, 3 seeds (a Hydra multirun)
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from hald.data.replay import render, render_loop, sample_pass
from hald.labels.codecs import make_codec
from hald.labels.relabel import label_groups
from hald.labels.store import shard_bytes
from hald.models import build_backbone
from hald.models.teachers import Committee

ROOT = Path(__file__).resolve().parents[2]


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    """Seconds of the fastest of `repeat` calls (after one warm-up): the least noisy estimate on a shared box."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def render_torchvision_loop(images, g, out_size, mean, std) -> torch.Tensor:
    """The peers' data path: per-sample torchvision resized_crop + hflip + normalise, then batch CutMix."""
    from torchvision.transforms.v2 import functional as TF

    rows = []
    for i, (top, left, h, w), flip in zip(g.index.tolist(), g.box.tolist(), g.flip.tolist()):
        x = TF.resized_crop(images[i].float().div(255.0), top, left, h, w, [out_size, out_size], antialias=True)
        x = TF.horizontal_flip(x) if flip else x
        rows.append(TF.normalize(x, mean.tolist(), std.tolist()))
    x = torch.stack(rows)
    y1, x1, y2, x2 = (int(v) for v in g.mix_box)
    if y2 > y1 and x2 > x1:
        x[:, :, y1:y2, x1:x2] = x[g.mix_perm.long(), :, y1:y2, x1:x2].clone()
    return x


def bench_replay(n_images: int = 200, size: int = 64, out: int = 64, batch: int = 64) -> dict:
    images = (torch.rand(n_images, 3, size, size) * 255).to(torch.uint8)
    batches = sample_pass(n_images, (size, size), batch, out, seed=0)
    mean, std = torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)
    vec = best_of(lambda: [render(images, g, out, mean, std) for g in batches])
    loop = best_of(lambda: [render_loop(images, g, out, mean, std) for g in batches])
    tv = best_of(lambda: [render_torchvision_loop(images, g, out, mean, std) for g in batches])
    return {"what": f"replay {n_images} images {size}px -> {out}px, records of {batch}",
            "vectorised img/s": n_images / vec, "per-image loop img/s": n_images / loop,
            "torchvision per-image img/s": n_images / tv, "ratio (vs loop)": loop / vec,
            "ratio (vs torchvision)": tv / vec}


def bench_relabel(groups: int = 8, batch: int = 16, size: int = 32, mode: str = "bssl") -> dict:
    """Labels/s with `groups` stored batches per forward against one forward per stored batch. The eval-mode
    row has no BatchNorm trick at all: it is the ceiling grouping can reach on this device."""
    torch.manual_seed(0)
    committee = Committee([build_backbone("resnet18_small", 100, 3, size)], mode=mode)
    xs = [torch.randn(batch, 3, size, size) for _ in range(groups)]
    grouped = best_of(lambda: label_groups(committee, xs, 20.0), repeat=3)
    single = best_of(lambda: [label_groups(committee, [x], 20.0) for x in xs], repeat=3)
    n = groups * batch
    return {"what": f"{mode.upper() if mode == 'bssl' else mode + '-mode'} relabel, resnet18_small {size}px, {groups} groups of {batch}",
            "grouped labels/s": n / grouped, "per-group labels/s": n / single, "ratio": single / grouped}


def bench_training(steps: int = 20, batch: int = 16) -> dict:
    """One soft step (replay + KL) against one hard step (fresh crops + CutMix + CE), convnet_w32 on 28 px."""
    from hald.train.datamodule import HardCropDataset, SoftReplayDataset
    from hald.labels.store import LabelStore, write_shard
    from hald.train.losses import cutmix_smoothed_targets, soft_kl, soft_target_ce
    import tempfile

    ds = {"input_size": 28, "mean": [0.13], "std": [0.31]}
    images = (torch.rand(steps * batch, 1, 28, 28) * 255).to(torch.uint8)
    targets = torch.arange(10).repeat_interleave(len(images) // 10)
    batches = sample_pass(len(images), (28, 28), batch, 28, seed=0)
    codec = make_codec("float")
    with tempfile.TemporaryDirectory() as tmp:
        write_shard(Path(tmp) / "pass_0000.safetensors", batches,
                    [torch.softmax(torch.randn(len(g), 10), 1) for g in batches], codec, 0, len(images))
        store = LabelStore(Path(tmp), {"passes": 1, "batches_per_pass": len(batches), "batch_size": batch,
                                       "num_classes": 10, "codec": codec.spec()})
        soft = SoftReplayDataset(store, images, [[i] for i in range(len(batches))], 28, ds["mean"], ds["std"])
        hard = torch.utils.data.DataLoader(HardCropDataset(images, targets, ds), batch_size=batch, shuffle=True)
        net = build_backbone("convnet_w32", 10, 1, 28)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)

        def step(loss):
            opt.zero_grad()
            loss.backward()
            opt.step()

        def soft_epoch():
            for i in range(len(soft)):
                b = soft[i]
                step(soft_kl(net(b["x"]), b["target"], 20.0, True))

        def hard_epoch():
            for x, y in hard:
                x, t = cutmix_smoothed_targets(x, y, 10, 1.0, 0.8)
                step(soft_target_ce(net(x), t))

        ts, th = best_of(soft_epoch, 3), best_of(hard_epoch, 3)
    return {"what": f"student step, convnet_w32 28px batch {batch}", "soft ms/step": 1000 * ts / steps,
            "hard ms/step": 1000 * th / steps, "ratio": ts / th}


def bench_storage(ipc: int = 10, batch: int = 16, budget: float = 285e6) -> list[dict]:
    codecs = {"fp32": make_codec("float", dtype="float32"), "fp16": make_codec("float"),
              "topk k=10": make_codec("topk", k=10), "topk k=100": make_codec("topk", k=100),
              "quant log 8-bit": make_codec("quant", bits=8),
              "quant prob 14-bit": make_codec("quant", bits=14, space="prob"),
              "topk_quant k=10 6-bit": make_codec("topk_quant", k=10, bits=6)}
    rows = []
    for name, codec in codecs.items():
        row = {"codec": name}
        for c in (10, 200, 1000):
            n = ipc * c
            row[f"B/label C={c}"] = shard_bytes(n, batch, codec, c) / n  # all shard bytes per stored label
        n = ipc * 1000
        per_pass = shard_bytes(n, batch, codec, 1000)
        row["IN-1K labels/class in 285MB"] = int((budget - 50_000) // per_pass) * ipc  # 50 kB manifest reserve
        rows.append(row)
    return rows


ACCURACY_CODECS = {"fp16": [], "topk": ["labels.codec.k=3"], "quant": ["labels.codec.bits=4"]}


def bench_accuracy(out: Path, seeds: str = "0,1,2", budget: str = "12KB", run: bool = True) -> str:
    """The default pipeline (HALD, mnist5k, ipc 10) under one byte budget, once per codec; teachers and images
    are shared through the artifact cache, the planner gives each codec as many passes as fit."""
    from hald.evaluate.report import collect, table

    sweeps = []
    for name, params in ACCURACY_CODECS.items():
        sweeps.append(out / f"accuracy_{name}")
        cmd = [sys.executable, "src/run.py", "-m", f"seed={seeds}", f"label_budget={budget}", f"codec={name}",
               *params, "logger=none", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweeps[-1]}"]
        if run:
            subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "WANDB_MODE": "disabled"})
    return table(collect(sweeps), ["labels.codec.name", "labels.codec.k", "labels.codec.bits", "label_budget"],
                 extra=("sli",))


def fmt_table(rows: list[dict]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join(f"{v:,.1f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int)
                                     else str(v) for v in r.values()) + " |")
    return "\n".join(out)


WHY = """Why goals 1 and 2 can miss on a CPU (measured, not assumed):

- Replay: the per-image loop runs the same roi_align kernel one image at a time, so the ratio is the Python and
  dispatch overhead that vectorising removes: large for small images, about nothing once the interpolation itself
  dominates (224 px). The torchvision column is the peers' path (uint8 AVX2 `resized_crop` per image); on CPU
  it beats float roi_align at 224 px. A grid_sample renderer was tried: 1.5x faster than roi_align at 224 px,
  still below torchvision, and without roi_align's anti-aliased downscaling; not adopted.
- Relabel: on a small CPU one 128-image forward can be slower than eight 16-image forwards even in eval mode
  with no BatchNorm trick (the eval-mode row: cache-bound convolutions), and grouped BSSL (PyTorch's fused
  batch_norm per group) cannot beat that ceiling. Grouping is for GPUs, where a 16-image batch leaves the device
  idle; `labels.groups_per_forward=auto` uses 1 on CPU and 8 on GPUs (the labels do not depend on it).
"""


def goals(measured: dict[str, list[dict]]) -> str:
    """The issue's goals against this run's numbers."""
    rp, rl, tr = measured["replay"], measured["relabel"], measured["training"][0]
    rows = [
        {"benchmark": "1. replay, vectorised vs per-image loop", "goal": ">= 3x",
         "measured": ", ".join(f"{r['ratio (vs loop)']:.1f}x ({r['what'].split(',')[0]})" for r in rp),
         "met": "yes" if all(r["ratio (vs loop)"] >= 3 for r in rp) else "no"},
        {"benchmark": "2. relabel, grouped BSSL vs one forward per group", "goal": ">= 3x",
         "measured": f"{rl[0]['ratio']:.1f}x (eval-mode grouping, no BN trick: {rl[1]['ratio']:.1f}x)",
         "met": "yes" if rl[0]["ratio"] >= 3 else "no"},
        {"benchmark": "3. training, soft step / hard step", "goal": "<= 1.10", "measured": f"{tr['ratio']:.2f}",
         "met": "yes" if tr["ratio"] <= 1.10 else "no"},
    ]
    return f"## Goals on this machine\n\n{fmt_table(rows)}\n\n{WHY}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="hald benchmarks")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "bench.md")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip benchmark 5 (a ~10 min multirun)")
    ap.add_argument("--reuse-accuracy", action="store_true",
                    help="benchmark 5 from the runs already under outputs/bench (no new training)")
    args = ap.parse_args(argv)
    header = (f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; {time.strftime('%Y-%m-%d')}; command: `make bench`")
    parts = [f"# Benchmarks\n\n{header}\n"]
    replay = lambda: [bench_replay(), bench_replay(n_images=64, size=256, out=224, batch=32)]  # noqa: E731
    measured = {}
    for key, title, fn in (("replay", "1. Replay (goal: vectorised >= 3x the per-image loop)", replay),
                           ("relabel", "2. Relabel (goal: grouped BN >= 3x one forward per group of 16)",
                            lambda: [bench_relabel(), bench_relabel(mode="eval")]),
                           ("training", "3. Training step (goal: soft step at most 10% slower than hard)",
                            lambda: [bench_training()])):
        print(title, flush=True)
        measured[key] = fn()
        parts.append(f"## {title}\n\n{fmt_table(measured[key])}\n")
        print(parts[-1], flush=True)
    parts.append("## 4. Storage: bytes per stored label (labels + geometry + shard header, ipc 10, batch 16)\n\n"
                 + fmt_table(bench_storage()) + "\n")
    print(parts[-1], flush=True)
    if not args.skip_accuracy:
        parts.append("## 5. Accuracy at equal bytes (mnist5k, ipc 10, label_budget 12KB, HALD, 3 seeds)\n\n"
                     + bench_accuracy(ROOT / "outputs" / "bench", run=not args.reuse_accuracy) + "\n")
        print(parts[-1], flush=True)
    parts.append(goals(measured))
    print(parts[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
