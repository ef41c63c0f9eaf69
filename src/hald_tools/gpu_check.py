"""`make gpu-check`: every accelerator path once, one table, for the first session that gets a GPU.

    python -m hald_tools.gpu_check [--out outputs/gpu-check.md] [--quick]

Rows: replay on the device against the host's pixels (the largest difference, in levels of 255), a student
train step and a relabel forward at 224 px in fp32, bf16-mixed and 16-mixed, with and without channels-last
(images/s), the peak GPU memory of each, and `make bench ARGS="--device cuda"`'s benchmarks 1-3. Meant to
take at most 8 minutes on one GPU; on a machine without one it runs the CPU rows and says which it skipped
(tests/test_gpu_check.py runs it that way).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hald import compute
from hald.data.replay import render, render_layout, sample_pass
from hald.models import build_backbone
from hald_tools.bench import best_of  # fastest of `repeat` after a warm-up; syncs a GPU

ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def gb(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def replay_row(device: torch.device, size: int, n: int) -> dict:
    """Pixels rendered on the device against the host's (the same stored records)."""
    images = (torch.rand(n, 3, size + 32, size + 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    batches = sample_pass(n, (size + 32, size + 32), 16, size, seed=0)
    host = torch.cat([render(render_layout(images), g, size, MEAN, STD) for g in batches])
    dev_images = render_layout(images).to(device)
    dev = torch.cat([render(dev_images, g, size, MEAN, STD) for g in batches]).cpu()
    levels = ((dev - host) * STD.view(1, -1, 1, 1) * 255).abs()
    return {"row": f"replay on {device.type} vs host pixels, {n} images {size}px", "value": f"max {levels.max():.2f} "
            f"levels, {100 * float((levels > 0.5).double().mean()):.2f}% of pixels differ", "peak GPU GB": peak_gb(device)}


def step_rows(device: torch.device, size: int, batch: int, repeat: int, skipped: list[str]) -> list[dict]:
    """A student train step and a relabel forward per precision and layout (images/s)."""
    rows = []
    for precision in ("32-true", "bf16-mixed", "16-mixed"):
        if precision == "16-mixed" and device.type != "cuda":
            skipped.append("16-mixed steps (float16 autocast needs a CUDA GPU)")
            continue
        if precision == "bf16-mixed" and not compute.native_bf16(device.type):
            skipped.append(f"bf16-mixed steps (no native bf16 on this {device.type})")
            continue
        for cl in (False, True):
            torch.manual_seed(0)
            net = compute.channels_last(build_backbone("resnet18", 1000, 3, size), cl).to(device)
            opt = torch.optim.AdamW(net.parameters(), 1e-3)
            scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
            x = compute.as_input(torch.randn(batch, 3, size, size, device=device), cl)
            target = torch.softmax(torch.randn(batch, 1000, device=device), 1)

            def step() -> None:
                with compute.autocast(precision, device):
                    loss = F.kl_div(F.log_softmax(net(x).float() / 20, 1), target, reduction="batchmean")
                opt.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

            def forward() -> None:
                with torch.no_grad(), compute.autocast(precision, device):
                    net.eval()(x)
                net.train()

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            layout = "channels-last" if cl else "NCHW"
            t_step = best_of(step, repeat, str(device))
            t_fwd = best_of(forward, repeat, str(device))
            rows.append({"row": f"student step resnet18 {size}px batch {batch}, {precision}, {layout}",
                         "value": f"{batch / t_step:,.1f} img/s", "peak GPU GB": peak_gb(device)})
            rows.append({"row": f"relabel forward resnet18 {size}px batch {batch}, {precision}, {layout}",
                         "value": f"{batch / t_fwd:,.1f} img/s", "peak GPU GB": peak_gb(device)})
    return rows


def bench_rows(device: torch.device, quick: bool) -> list[dict]:
    """`make bench ARGS="--device cuda"`'s benchmarks 1-3 (replay, grouped relabel, epochs) on this device."""
    from hald_tools.bench import bench_epochs, bench_relabel, bench_replay

    d = str(device)
    r1 = bench_replay(n_images=32 if quick else 200, size=64, out=64, device=d, repeat=1 if quick else 5)
    r2 = bench_relabel(groups=2 if quick else 8, device=d)
    r3 = bench_epochs(n_images=8 if quick else 16, size=64 if quick else 224, source=80 if quick else 256,
                      device=d, repeat=1 if quick else 3)
    return ([{"row": f"bench 1: {r1['what']}", "value": f"{r1['ratio (vs torchvision uint8)']:.2f}x torchvision"},
             {"row": f"bench 2: {r2['what']}", "value": f"{r2['ratio']:.2f}x one forward per batch"}]
            + [{"row": f"bench 3: {r['what']}, rendering {r['rendering']}", "value": f"soft/hard {r['soft/hard']:.2f}"}
               for r in r3])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="every accelerator path once (make gpu-check)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "gpu-check.md")
    ap.add_argument("--quick", action="store_true", help="small shapes (the CPU test); not numbers to compare")
    a = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    skipped: list[str] = [] if device.type == "cuda" else ["every row on a GPU: none here, the CPU ran them",
                                                           "peak GPU memory"]
    t0 = time.time()
    size, batch, repeat = (64, 4, 1) if a.quick else (224, 64 if device.type == "cuda" else 16, 5)
    rows = [replay_row(device, size, 16 if a.quick else 64)]
    rows += step_rows(device, size, batch, repeat, skipped)
    rows += bench_rows(device, a.quick)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    lines = [f"# gpu-check on {device.type} ({name})\n",
             f"torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}; load average {os.getloadavg()[0]:.2f}; "
             f"{time.time() - t0:.0f} s; command: `python -m hald_tools.gpu_check{' --quick' if a.quick else ''}`\n",
             "| check | result | peak GPU GB |", "|---|---|---|",
             *[f"| {r['row']} | {r['value']} | {gb(r.get('peak GPU GB'))} |" for r in rows],
             "", "Skipped: " + ("; ".join(skipped) if skipped else "nothing"), ""]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
