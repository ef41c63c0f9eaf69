"""Gradient similarity: cosine between the gradients of the hard loss and the soft loss on the same batch.

HALD's argument is that hard labels pull in a direction the drifted soft labels do not; the cosine between the
two gradients (all parameters flattened) measures it. On a replayed stored batch both losses are available:
the soft loss against the stored labels, the hard loss against the class labels CutMixed with the record's
own box and partners, then smoothed (the hard phase's target). The probe has no side effect on training: the
forward runs on cloned buffers (BatchNorm running statistics stay put) with the RNG state restored.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from hald.data.replay import Geometry

Loss = Callable[[torch.Tensor], torch.Tensor]


def gradient_cosine(net: nn.Module, x: torch.Tensor, loss_a: Loss, loss_b: Loss) -> float:
    """cos(∇θ loss_a(net(x)), ∇θ loss_b(net(x))) over every trainable parameter, from one forward pass."""
    params = {k: p for k, p in net.named_parameters() if p.requires_grad}
    state = {**params, **{k: b.clone() for k, b in net.named_buffers()}}  # running stats update the clones
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        logits = functional_call(net, state, (x,))
        ga = torch.autograd.grad(loss_a(logits), list(params.values()), retain_graph=True, allow_unused=True)
        gb = torch.autograd.grad(loss_b(logits), list(params.values()), allow_unused=True)
    flat = [torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().float()
                       for g, p in zip(grads, params.values())]) for grads in (ga, gb)]
    return float(F.cosine_similarity(flat[0], flat[1], dim=0))


def replayed_hard_targets(y: torch.Tensor, geometries: Sequence[Geometry], num_classes: int, smoothing: float,
                          out_size: int) -> torch.Tensor:
    """Hard-phase targets for replayed stored batches (concatenated, in order): each record's CutMix pastes its
    box from `mix_perm` partners, so t = λ onehot(y) + (1 − λ) onehot(y_partner) with λ = 1 − box area / S²,
    then label smoothing t (1 − ε) + ε / C (timm's Mixup targets, as `losses.cutmix_smoothed_targets`)."""
    out, start = [], 0
    for g in geometries:
        yb = y[start:start + len(g)]
        start += len(g)
        y1, x1, y2, x2 = (int(v) for v in g.mix_box)
        lam = 1.0 - max(y2 - y1, 0) * max(x2 - x1, 0) / out_size ** 2
        onehot = F.one_hot(yb, num_classes).float()
        out.append(lam * onehot + (1.0 - lam) * onehot[g.mix_perm.long()])
    return torch.cat(out) * (1.0 - smoothing) + smoothing / num_classes
