"""`make bench` sections 6-8: hald's fast defaults against a re-creation of the peers' loop, and what the fast
paths cost in accuracy.

The peers' loop (SRe2L's `relabel/generate_soft_label.py` + `validate/train_FKD.py`, which CV-DD and HALD
inherit), re-created here from their descriptions, not copied: per image a PIL crop + resize
(torchvision's RandomResizedCrop on PIL images), flip, ToTensor, Normalize, then `torch.stack`, the batch's
CutMix, an fp32 eager forward in the planar NCHW layout, and per stored batch one `torch.save` file of
[coords, flips, partner ids, lambda, box, fp16 logits]. The student epoch reads each batch file back with
`torch.load`, re-crops the PIL images at the stored coordinates, and steps AdamW on KL(T = 20).
hald's side is its own code: `relabel()` for a pass (Lightning Trainer, precision plugin, shards) and the
DataModule's replay loader + the epoch's phase loss for an epoch, in the precision and layout of
conf/compute/fast.yaml. Recover: SRe2L's step (jitter, flip, CE + BN-statistics loss, Adam on the pixels)
against `recover.recover_unit`.

6. speed: relabel pass and student epoch at 224 px (ResNet-18) and 64 px (ResNet-18 modified), recover
   iterations/s at 224 px: ratio hald / peers (goal <= 0.5 at 224 px)
7. the same hald steps by path (fp32 NCHW, channels-last, bf16, bf16 + channels-last, compiled)
8. accuracy (experiments/speed.sh, mnist5k, 3 seeds): fp32 against each fast path, and the bf16 labels'
   KL and top-1 agreement against fp32 labels of the same teacher and images
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hald import compute
from hald.data.replay import sample_pass
from hald.models import build_backbone

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
MODELS = {224: "resnet18", 64: "resnet18_modified"}


# -- the peers' loop, re-created -------------------------------------------------------------------------------------
def peer_batch(pils: list[Image.Image], g, size: int) -> torch.Tensor:
    """Per image: PIL crop + bilinear resize, flip, ToTensor, Normalize; stack; the batch's CutMix."""
    from torchvision.transforms import functional as TF

    rows = []
    for i, (top, left, h, w), flip in zip(g.index.tolist(), g.box.tolist(), g.flip.tolist()):
        im = TF.resized_crop(pils[i], top, left, h, w, [size, size])
        im = TF.hflip(im) if flip else im
        rows.append(TF.normalize(TF.to_tensor(im), MEAN, STD))
    x = torch.stack(rows)
    y1, x1, y2, x2 = (int(v) for v in g.mix_box)
    if y2 > y1 and x2 > x1:
        x[:, :, y1:y2, x1:x2] = x[g.mix_perm.long(), :, y1:y2, x1:x2].clone()
    return x


def peer_relabel(pils, teacher, batches, size: int, out: Path) -> None:
    teacher.eval()
    for k, g in enumerate(batches):
        x = peer_batch(pils, g, size)
        with torch.no_grad():
            logits = teacher(x)
        lam = 1.0 - float((g.mix_box[2] - g.mix_box[0]) * (g.mix_box[3] - g.mix_box[1])) / size ** 2
        torch.save([g.box.clone(), g.flip.clone(), g.mix_perm.clone(), np.float64(lam), g.mix_box.clone(),
                    logits.half()], out / f"batch_{k}.tar")


def peer_epoch(pils, student, opt, n_batches: int, size: int, src: Path, temperature: float = 20.0) -> None:
    from hald.data.replay import Geometry

    student.train()
    for k in range(n_batches):
        box, flip, perm, _lam, mix_box, logits = torch.load(src / f"batch_{k}.tar", weights_only=False)
        g = Geometry(torch.arange(len(box)) % len(pils), box, flip, perm, mix_box)
        x = peer_batch(pils, g, size)
        out = student(x)
        loss = F.kl_div(F.log_softmax(out / temperature, 1), F.softmax(logits.float() / temperature, 1),
                        reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()


def peer_recover_step(teacher, x, targets, opt, hooks, r_bn: float = 0.01) -> None:
    """SRe2L's recover iteration: random shift + flip of the batch, CE + r_bn x BN-statistics distance."""
    dx, dy = (int(v) for v in torch.randint(-4, 5, (2,)))
    xa = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
    if bool(torch.rand(1) < 0.5):
        xa = torch.flip(xa, dims=(3,))
    hooks.clear()
    loss = F.cross_entropy(teacher(xa), targets) + r_bn * torch.stack(hooks).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()


# -- timing ---------------------------------------------------------------------------------------------------------------
def interleaved(fns: dict[str, Any], repeat: int) -> dict[str, float]:
    """Median seconds of each, runs interleaved (one warm-up round): ratios under the same load."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeat + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def stand_in(n: int, size: int, classes: int):
    """Smooth random colour fields + noise, as uint8 [N, 3, S, S] and the same pixels as PIL images."""
    gen = torch.Generator().manual_seed(0)
    low = F.interpolate(torch.rand(n, 3, 8, 8, generator=gen), size=(size, size), mode="bilinear")
    x = (low * 200 + torch.rand(n, 3, size, size, generator=gen) * 55).to(torch.uint8)
    pils = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in x]
    return x, torch.arange(n) % classes, pils


def fast_settings() -> dict[str, Any]:
    """conf/compute/fast.yaml resolved on this CPU (the defaults the goal is about)."""
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[2]
    fast = OmegaConf.load(root / "conf" / "compute" / "fast.yaml")
    return {stage: compute.resolve(fast[stage], "cpu", f"compute.{stage}") for stage in ("relabel", "student",
                                                                                        "recover")} | {
        "channels_last": bool(fast.channels_last), "compile": bool(fast.compile)}


def bench_relabel_pass(size: int, n: int = 64, batch: int = 16, classes: int = 10, repeat: int = 3) -> dict:
    from hald.data.distilled import DistilledImages
    from hald.labels.budget import Plan
    from hald.labels.codecs import make_codec
    from hald.labels.relabel import relabel
    from hald.models.teachers import Committee

    fast = fast_settings()
    images, targets, pils = stand_in(n, size, classes)
    distilled = DistilledImages(images, targets, [f"{i}.png" for i in range(n)], [str(c) for c in range(classes)],
                                "0" * 64)
    torch.manual_seed(0)
    teacher = build_backbone(MODELS[size], classes, 3, size).eval()
    peer_teacher = build_backbone(MODELS[size], classes, 3, size).eval()
    peer_teacher.load_state_dict(teacher.state_dict())
    codec = make_codec("float")
    cfg = {"batch_size": batch, "temperature": 20.0, "seed": 0, "crop_scale": [0.08, 1.0],
           "crop_ratio": [0.75, 4 / 3], "flip_p": 0.5, "cutmix_alpha": 1.0, "num_workers": 0}
    ds = {"input_size": size, "mean": MEAN, "std": STD}
    batches = sample_pass(n, (size, size), batch, size, seed=0, cutmix_alpha=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        def ours() -> None:
            with tempfile.TemporaryDirectory(dir=tmp) as out:
                relabel(distilled, Committee([teacher]), Plan(1, codec, 0, 0, None), cfg, ds, Path(out),
                        {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                         "precision": fast["relabel"]}, channels_last=fast["channels_last"])

        def peers() -> None:
            with tempfile.TemporaryDirectory(dir=tmp) as out:
                peer_relabel(pils, peer_teacher, batches, size, Path(out))

        ts = interleaved({"hald": ours, "peers": peers}, repeat)
    return {"what": f"relabel pass, {MODELS[size]} {size}px, {n} images, batch {batch}", "px": size,
            "hald s": ts["hald"], "peers s": ts["peers"], "hald/peers": ts["hald"] / ts["peers"],
            "hald runs": f"{fast['relabel']}, {'channels-last' if fast['channels_last'] else 'NCHW'}"}


def bench_student_epoch(size: int, n: int = 64, batch: int = 16, classes: int = 10, repeat: int = 3) -> dict:
    """One soft epoch: hald's replay loader + the soft phase's KL, in the fast defaults' precision and layout
    (autocast around forward and loss, as Lightning's precision plugin does), against the peers' epoch."""
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    from hald.data.distilled import DistilledImages
    from hald.labels.codecs import make_codec
    from hald.labels.store import LabelStore, write_shard
    from hald.train.datamodule import HALDDataModule
    from hald.train.phases import standard_phases
    from hald.train.schedule import SOFT, Schedule

    fast = fast_settings()
    images, targets, pils = stand_in(n, size, classes)
    distilled = DistilledImages(images, targets, [f"{i}.png" for i in range(n)], [str(c) for c in range(classes)],
                                "0" * 64)
    batches = sample_pass(n, (size, size), batch, size, seed=0, cutmix_alpha=1.0)
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    ours_net = build_backbone(MODELS[size], classes, 3, size)
    peer_net = build_backbone(MODELS[size], classes, 3, size)
    peer_net.load_state_dict(ours_net.state_dict())
    compute.channels_last(ours_net, fast["channels_last"])
    ours_opt, peer_opt = torch.optim.AdamW(ours_net.parameters(), 1e-3), torch.optim.AdamW(peer_net.parameters(), 1e-3)
    codec = make_codec("float")
    ds = {"name": "stand-in", "input_size": size, "mean": MEAN, "std": STD}
    with tempfile.TemporaryDirectory() as tmp:
        labels = [torch.softmax(torch.randn(len(g), classes, generator=gen), 1) for g in batches]
        write_shard(Path(tmp) / "pass_0000.safetensors", batches, labels, codec, 0, n)
        store = LabelStore(Path(tmp), {"passes": 1, "batches_per_pass": len(batches), "batch_size": batch,
                                       "num_classes": classes, "codec": codec.spec()})
        peer_dir = Path(tmp) / "peers"
        peer_dir.mkdir()
        peer_relabel(pils, peer_net, batches, size, peer_dir)
        dm = HALDDataModule(distilled, store, ds, Schedule(((SOFT, 1),)), standard_phases(batch, batch),
                            TensorDataset(images, targets), images_on_device=False)
        forward = lambda x: ours_net(compute.as_input(x, fast["channels_last"]))  # noqa: E731 (StudentModule.forward)

        def ours() -> None:
            ours_net.train()
            for b in dm.train_dataloader(0):
                with compute.autocast(fast["student"], "cpu"):  # Lightning's MixedPrecision.forward_context
                    loss, _ = dm.loader_phase.training_loss(SimpleNamespace(micro_forward=forward, current_epoch=0), b)
                ours_opt.zero_grad()
                loss.backward()
                ours_opt.step()

        ts = interleaved({"hald": ours, "peers": lambda: peer_epoch(pils, peer_net, peer_opt, len(batches), size,
                                                                      peer_dir)}, repeat)
    return {"what": f"student epoch, {MODELS[size]} {size}px, {n} images, batch {batch}", "px": size,
            "hald s": ts["hald"], "peers s": ts["peers"], "hald/peers": ts["hald"] / ts["peers"],
            "hald runs": f"{fast['student']}, {'channels-last' if fast['channels_last'] else 'NCHW'}"}


def bench_recover(size: int = 224, batch: int = 10, iterations: int = 3, repeat: int = 3) -> list[dict]:
    """Iterations/s of recover on a ResNet-18 teacher (eval mode, BN hooks): SRe2L's step against
    `recover_unit` in compute.recover's precision, and in bf16 (opt-in) for comparison."""
    from hald.distill.recover import RecoverSettings, recover_unit

    fast = fast_settings()
    torch.manual_seed(0)
    teacher = build_backbone(MODELS[size], 1000 if size == 224 else 200, 3, size).eval().requires_grad_(False)
    classes = teacher.fc.out_features if hasattr(teacher, "fc") else 1000
    targets = torch.arange(batch) % classes
    x0 = torch.randn(batch, 3, size, size)
    ds = {"input_size": size, "mean": MEAN, "std": STD, "channels": 3}
    s = RecoverSettings(iterations=iterations)
    hooks: list[torch.Tensor] = []

    def bn_hook(m, inputs, _out):
        x = inputs[0]
        hooks.append(torch.norm(m.running_mean - x.mean([0, 2, 3]), 2)
                     + torch.norm(m.running_var - x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(1, unbiased=False), 2))

    def peers() -> None:
        handles = [m.register_forward_hook(bn_hook) for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.25, betas=(0.5, 0.9), eps=1e-8)
        try:
            for _ in range(iterations):
                peer_recover_step(teacher, x, targets, opt, hooks)
        finally:
            for h in handles:
                h.remove()

    def ours(precision: str):
        def run() -> None:
            with compute.autocast(precision, "cpu"):
                recover_unit([teacher], torch.ones(1), x0, targets, ds, s)
        return run

    ts = interleaved({"peers": peers, "hald": ours(fast["recover"]), "hald bf16": ours("bf16-mixed")}, repeat)
    return [{"what": f"recover, {MODELS[size]} {size}px, batch {batch}", "px": size, "hald s": ts[k] / iterations,
             "peers s": ts["peers"] / iterations, "hald/peers": ts[k] / ts["peers"],
             "hald runs": (fast["recover"] if k == "hald" else "bf16-mixed (opt-in)") + ", NCHW"}
            for k in ("hald", "hald bf16")]


def bench_paths(size: int = 224, batch: int = 16, repeat: int = 5, with_compile: bool = True) -> list[dict]:
    """One student train step (forward, KL, backward, AdamW) at `size` px by path, the issue's table: fp32
    NCHW eager (the peers), channels-last, bf16 autocast, both, and torch.compile (its compile time too)."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    target = torch.softmax(torch.randn(batch, 10), 1)
    paths = {"fp32, NCHW, eager (the peers)": ("32-true", False, False),
             "fp32, channels-last": ("32-true", True, False),
             "bf16-mixed, NCHW": ("bf16-mixed", False, False),
             "bf16-mixed, channels-last": ("bf16-mixed", True, False)}
    if with_compile:
        paths["fp32, channels-last, compiled"] = ("32-true", True, True)
        paths["bf16-mixed, channels-last, compiled"] = ("bf16-mixed", True, True)
    fns, compile_s = {}, {}
    for name, (precision, cl, comp) in paths.items():
        torch.manual_seed(0)
        net = compute.channels_last(build_backbone(MODELS[size], 10, 3, size), cl).train()
        if comp:
            net.compile()
        opt = torch.optim.AdamW(net.parameters(), 1e-3)

        def step(net=net, opt=opt, precision=precision, cl=cl) -> None:
            with compute.autocast(precision, "cpu"):
                loss = F.kl_div(F.log_softmax(net(compute.as_input(x, cl)) / 20, 1), target, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()

        t0 = time.perf_counter()
        step()  # the first step compiles (compiled paths)
        compile_s[name] = time.perf_counter() - t0
        fns[name] = step
    ts = interleaved(fns, repeat)
    base = ts["fp32, NCHW, eager (the peers)"]
    return [{"step": name, "ms": 1000 * t, "vs fp32 eager": base / t,
             "first step s (compiles)": compile_s[name] if paths[name][2] else None} for name, t in ts.items()]


def fmt(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    keys = list(rows[0])
    cell = lambda v: "—" if v is None else f"{v:,.3g}" if isinstance(v, float) and abs(v) < 0.01 else (  # noqa: E731
        f"{v:,.2f}" if isinstance(v, float) else str(v))
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
                      *["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]]) + "\n"


def main(argv: list[str] | None = None) -> None:
    import argparse
    import os
    import platform
    import subprocess

    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description="hald speed benchmarks (sections 6-8 of make bench)")
    ap.add_argument("--out", type=Path, default=root / "experiments" / "speed.md")
    ap.add_argument("--accuracy", type=Path, default=root / "outputs" / "speed",
                    help="where experiments/speed.sh wrote its runs (run it first; ~25 min)")
    ap.add_argument("--run-accuracy", action="store_true", help="run experiments/speed.sh first")
    ap.add_argument("--quick", action="store_true", help="small shapes, one repeat (a smoke test, not numbers)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled rows (compiling takes minutes)")
    a = ap.parse_args(argv)
    if a.run_accuracy:
        subprocess.run(["bash", str(root / "experiments" / "speed.sh")], cwd=root, check=True)
    load = os.getloadavg()
    n, rep = (16, 1) if a.quick else (64, 3)
    sizes = (64,) if a.quick else (224, 64)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    speed = [row for size in sizes for row in (bench_relabel_pass(size, n=n, repeat=rep),
                                                bench_student_epoch(size, n=n, repeat=rep))]
    speed += bench_recover(sizes[0], batch=4 if a.quick else 10, iterations=2 if a.quick else 3, repeat=rep)
    paths = bench_paths(sizes[0], batch=8 if a.quick else 16, repeat=1 if a.quick else 5,
                        with_compile=not (a.quick or a.no_compile))
    head = (f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, native bf16: {compute.native_bf16('cpu')}; "
            f"{time.strftime('%Y-%m-%d %H:%M')}; command: `python -m hald_tools.bench_speed"
            f"{' ' + ' '.join(argv or []) if argv else ''}`; load average at start {load[0]:.2f} / {load[1]:.2f} / "
            f"{load[2]:.2f}, at end {os.getloadavg()[0]:.2f} (1 min; ratios moved 3-10x under load here); "
            f"{time.time() - t0:.0f} s.\n")
    from hald_tools.speed_accuracy import accuracy_rows, label_agreement

    acc, agree = accuracy_rows(a.accuracy), label_agreement(a.accuracy)
    text = "\n".join([
        "# Speed: hald's fast defaults against the peers' loop\n", head,
        "## 6. Relabel pass, student epoch, recover (hald / peers; goal <= 0.5 at 224 px with the fast defaults)\n",
        "Medians of interleaved runs (one warm-up). Peers: the loop re-created in `hald_tools/bench_speed.py` "
        "(per-image PIL transforms, fp32 eager NCHW, one torch.save file per stored batch).\n", fmt(speed),
        f"## 7. One student train step at {sizes[0]} px by path (batch {8 if a.quick else 16})\n", fmt(paths),
        "## 8. Accuracy of the fast paths (mnist5k, HALD schedule, ipc 10, SLC 50, 300 epochs; experiments/speed.sh)\n",
        fmt(acc), "bf16 labels against fp32 labels (same fp32 teacher, same images, same crops):\n", fmt(agree)])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
