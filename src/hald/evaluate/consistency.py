"""Crop consistency of a student: how much its predictions on two random crops of the same distilled image
agree (Jensen-Shannon divergence, cosine), per class and macro-averaged over classes, as in HALD's analysis.

A student that learned the local semantic drift of crops disagrees with itself across crops; HALD reports the
divergence falling across the hard phase. The trainer logs it at every phase end (train/callbacks.py); on a
finished run:

    python -m hald.evaluate.consistency RUN_DIR [--pairs 4] [--checkpoint PATH]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hald.evaluate.crops import crop_probs


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JS(p, q) = KL(p || m)/2 + KL(q || m)/2, m = (p + q)/2, natural log, per row. kl_div uses xlogy, so zero
    probabilities contribute 0 without clamping; m is clamped only to keep log(0) out of 0 * log(0)."""
    log_m = ((p + q) / 2).clamp_min(1e-12).log()
    return 0.5 * (F.kl_div(log_m, p, reduction="none").sum(1) + F.kl_div(log_m, q, reduction="none").sum(1))


@dataclass
class Consistency:
    js: float                      # mean over classes of the per-class mean JS divergence (0 = identical)
    cos: float                     # mean over classes of the per-class mean cosine (1 = identical)
    js_per_class: list[float]
    cos_per_class: list[float]
    pairs: int                     # crop pairs per image

    def to_dict(self) -> dict:
        return asdict(self)


def per_class_mean(values: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of `values` [N] within each class; NaN for a class with no sample."""
    sums = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, targets, values.double())
    counts = torch.bincount(targets, minlength=num_classes).double()
    return sums / counts


def pair_consistency(p1: torch.Tensor, p2: torch.Tensor, targets: torch.Tensor, num_classes: int,
                     pairs: int = 1) -> Consistency:
    """From the predictions on two views ([N, C] each, rows in the order of `targets`)."""
    js = per_class_mean(js_divergence(p1, p2), targets, num_classes)
    cos = per_class_mean(F.cosine_similarity(p1, p2, dim=1), targets, num_classes)
    present = ~js.isnan()
    return Consistency(js=float(js[present].mean()), cos=float(cos[present].mean()),
                       js_per_class=[round(float(v), 6) for v in js], cos_per_class=[round(float(v), 6) for v in cos],
                       pairs=pairs)


def crop_consistency(net: nn.Module, images: torch.Tensor, targets: torch.Tensor, num_classes: int, out_size: int,
                     mean: Sequence[float], std: Sequence[float], seed: int = 0, pairs: int = 1,
                     scale: Sequence[float] = (0.08, 1.0), batch_size: int = 256) -> Consistency:
    """`pairs` independent pairs of RandomResizedCrops (no flip, as in HALD's tool) of every image, through
    `net` in eval mode at T = 1; the net's mode is restored afterwards."""
    was_training = net.training
    net.eval()
    try:
        views = [crop_probs(net, images, out_size, mean, std, seed=seed + k, scale=scale, batch_size=batch_size)
                 for k in range(2 * pairs)]
    finally:
        net.train(was_training)
    p1, p2 = torch.cat(views[0::2]), torch.cat(views[1::2])
    return pair_consistency(p1, p2, targets.repeat(pairs), num_classes, pairs)


def load_student(run_dir: Path, checkpoint: Path | None = None) -> tuple[nn.Module, dict, dict]:
    """The student of a finished run (its last.ckpt), with the run's config and results."""
    from omegaconf import OmegaConf

    from hald.models import build_backbone

    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    # Only the subtrees needed here are resolved: `paths` refers to Hydra's runtime, which is gone.
    cfg = {k: OmegaConf.to_container(saved[k], resolve=True) for k in ("dataset", "model")}
    results = json.loads((run_dir / "results.json").read_text())
    ds = cfg["dataset"]
    net = build_backbone(cfg["model"]["name"], int(ds["num_classes"]), int(ds["channels"]), int(ds["input_size"]))
    ckpt = torch.load(checkpoint or run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # The LightningModule keeps the backbone as `self.net`.
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    return net.eval(), cfg, results


def main(argv: list[str] | None = None) -> None:
    from hald.data.image_array import open_images
    from hald.data.sources import class_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: RUN_DIR/checkpoints/last.ckpt")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    net, cfg, results = load_student(args.run_dir, args.checkpoint)
    ds = cfg["dataset"]
    images = open_images(Path(results["images"]), class_names(ds), int(ds["channels"]))
    res = crop_consistency(net, images.images, images.targets, len(images.classes), int(ds["input_size"]),
                           ds["mean"], ds["std"], seed=args.seed, pairs=args.pairs)
    out = args.run_dir / "consistency.json"
    out.write_text(json.dumps(res.to_dict(), indent=1))
    print(f"crop consistency: JS {res.js:.4f}  cosine {res.cos:.4f}  ({args.pairs} pairs per image) -> {out}")


if __name__ == "__main__":
    main()
