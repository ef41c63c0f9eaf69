"""Loss landscape of a trained student: the loss on a 2-D plane through its weights (Li et al., 2018).

Two random directions d1, d2 in weight space, each filter-normalised: every filter (output row of a conv or
linear weight) of a direction gets the norm of the same filter of the weights, so the plot does not depend on
the scale invariance that BatchNorm gives the filters. 1-D parameters (biases, norm affines) are not moved,
as in the paper. For a grid of (a, b) the loss and top-1 of the weights w + a d1 + b d2 are measured on a fixed
set of real test images, with BatchNorm in eval mode (running statistics), without touching the network.

Slow (steps² evaluations), so it is a tool to run on a finished run, not part of training:
    python -m hald.evaluate.landscape RUN_DIR [--steps 21 --span 1.0 --samples 1000]
writes RUN_DIR/landscape.json and RUN_DIR/landscape.png. Flat, wide basins are the usual reading of "generalises
better"; comparing a HALD student with a soft-only one at the same budget is the intended use.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call


def filter_normalised_direction(net: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A Gaussian direction with each filter scaled to the norm of the matching filter of the weights."""
    out = {}
    for name, w in net.named_parameters():
        if w.dim() < 2:
            out[name] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
        w_norm = w.detach().flatten(1).norm(dim=1)
        d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        out[name] = d * (w_norm / d_norm).view(-1, *([1] * (w.dim() - 1)))
    return out


@torch.no_grad()
def loss_landscape(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 21, span: float = 1.0,
                   seed: int = 0, batch_size: int = 500) -> dict[str, Any]:
    """Loss (cross-entropy) and top-1 (%) on (x, y) over an steps x steps grid of [-span, span]^2."""
    if steps < 2 or span <= 0:
        raise ValueError(f"steps={steps}, span={span}; fix: steps >= 2 and span > 0")
    was_training = net.training
    net.eval()
    g = torch.Generator().manual_seed(seed)
    d1, d2 = filter_normalised_direction(net, g), filter_normalised_direction(net, g)
    weights = {k: p.detach() for k, p in net.named_parameters()}
    buffers = dict(net.named_buffers())
    coords = torch.linspace(-span, span, steps)
    loss = torch.zeros(steps, steps)
    acc = torch.zeros(steps, steps)
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            params = {k: w + a * d1[k] + b * d2[k] for k, w in weights.items()}
            total, correct = 0.0, 0
            for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
                z = functional_call(net, {**params, **buffers}, (xb,))
                total += float(F.cross_entropy(z.float(), yb, reduction="sum"))
                correct += int((z.argmax(1) == yb).sum())
            loss[i, j], acc[i, j] = total / len(y), 100.0 * correct / len(y)
    net.train(was_training)
    return {"coords": coords.tolist(), "loss": loss.tolist(), "top1": acc.tolist(), "samples": len(y),
            "seed": seed, "directions": "filter-normalised Gaussian; 1-D parameters fixed"}


def main(argv: list[str] | None = None) -> None:
    from hald.artifacts import write_json_atomic
    from hald.data.sources import build_source
    from hald.data.transforms import Transformed, eval_transform
    from hald.evaluate.consistency import load_student
    from hald.evaluate.plots import landscape_plot

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: RUN_DIR/checkpoints/last.ckpt")
    ap.add_argument("--steps", type=int, default=21)
    ap.add_argument("--span", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=1000, help="test images the loss is measured on")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    net, cfg, results = load_student(args.run_dir, args.checkpoint)
    test = Transformed(build_source(cfg["dataset"], "test"), eval_transform(cfg["dataset"]))
    n = min(args.samples, len(test))
    items = [test[i] for i in range(n)]
    x, y = torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])
    res = loss_landscape(net, x, y, args.steps, args.span, args.seed)
    write_json_atomic(args.run_dir / "landscape.json", res)
    title = f"{results.get('schedule', '')}, SLI {results.get('sli')}, top-1 {results.get('top1', float('nan')):.1f}%"
    png = landscape_plot(res, args.run_dir / "landscape.png", title=title)
    centre = args.steps // 2
    print(f"loss landscape: centre loss {res['loss'][centre][centre]:.4f}, top-1 {res['top1'][centre][centre]:.1f}% "
          f"on {n} test images -> {args.run_dir / 'landscape.json'}, {png}")


if __name__ == "__main__":
    main()
