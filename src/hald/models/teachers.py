"""Teachers as labellers: committees with weighted logits, and the BatchNorm modes of relabelling."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

TEACHER_MODES = ("eval", "bssl")


@dataclass  # not frozen: Lightning's spawn launcher rebuilds the dataclasses it pickles (recover's job)
class Teacher:
    """One teacher as the stages hand it on: its model name, cache key, weights file (None: pretrained
    weights named by `source`), its test top-1 when it was squeezed here, whether it was reused, and where it
    came from (squeeze | checkpoint | torchvision:<weights enum>)."""
    name: str
    key: str
    weights: str | None = None
    top1: float | None = None
    reused: bool = True
    source: str = "squeeze"

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "top1": self.top1, "source": self.source, "reused": self.reused}


@contextmanager
def batch_stat_bn(model: nn.Module) -> Iterator[nn.Module]:
    """BSSL (batch-specific soft labelling): BatchNorm normalises with the current batch's statistics.

    Only BatchNorm layers switch to training behaviour, so dropout stays off (the official code put the
    whole teacher in train mode). Running statistics are detached for the duration, so they are untouched:
    with running_mean/var (and the batch counter) set
    to None, F.batch_norm uses batch statistics and updates nothing.
    """
    saved = []
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            saved.append((m, m.training, m.running_mean, m.running_var, m.num_batches_tracked))
            m.train()
            m.running_mean, m.running_var, m.num_batches_tracked = None, None, None
    try:
        yield model
    finally:
        for m, was_training, mean, var, count in saved:
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count
            m.train(was_training)


def ghost_batch_norm(m: _BatchNorm, x: torch.Tensor, groups: int) -> torch.Tensor:
    """BatchNorm of x = `groups` stacked batches, each normalised with its own batch statistics.

    Each group goes through PyTorch's own fused batch_norm kernel in training mode with no running
    statistics (so nothing is updated): the same numbers as the layer on that group alone, while every other
    layer of the network runs once on the whole stack. (A var_mean over a [G, B, C, H, W] view did the same
    with five passes over the activations and ran 1.8x slower on CPU.)
    """
    y = torch.cat([F.batch_norm(xg, None, None, m.weight, m.bias, True, 0.0, m.eps) for xg in x.chunk(groups)])
    if hasattr(m, "act"):  # timm's BatchNormAct2d fuses dropout and activation into the norm layer
        y = m.act(m.drop(y))
    return y


@contextmanager
def grouped_batch_stats(model: nn.Module, groups: int) -> Iterator[nn.Module]:
    """Within the block, every BatchNorm layer of `model` uses `ghost_batch_norm` over `groups` groups."""
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in bns:
        m.forward = lambda x, m=m: ghost_batch_norm(m, x, groups)  # instance attribute shadows the class method
    try:
        yield model
    finally:
        for m in bns:
            del m.forward


def softmax_weights(scores: Sequence[float], temperature: float) -> torch.Tensor:
    """softmax(score / T) over teachers' scores (e.g. top-1 in %): the relabel committee's `teacher.weights=score`
    (T = 10) and CV-DD's prior-weighted voters (T = 5) are this one rule."""
    return torch.softmax(torch.tensor(list(scores), dtype=torch.float64) / temperature, 0).float()


def committee_weights(n: int, scores: Sequence[float] | None = None, temperature: float = 10.0) -> torch.Tensor:
    """Equal weights, or softmax(score / temperature) over the teachers' scores (e.g. top-1 in %)."""
    if scores is None:
        return torch.full((n,), 1.0 / n)
    if len(scores) != n:
        raise ValueError(f"{len(scores)} teacher scores for {n} teachers; fix: give one score per teacher")
    return softmax_weights(scores, temperature)


class Committee(nn.Module):
    """z = sum_k w_k z_k over teachers; with one teacher it is that teacher."""

    def __init__(self, teachers: Sequence[nn.Module], weights: torch.Tensor | None = None, mode: str = "eval"):
        super().__init__()
        if mode not in TEACHER_MODES:
            raise ValueError(f"unknown teacher mode '{mode}'; fix: labels.teacher_mode=eval|bssl")
        self.teachers = nn.ModuleList(teachers)
        self.register_buffer("weights", weights if weights is not None else committee_weights(len(teachers)))
        self.mode = mode
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """Committee logits; in BSSL mode x may hold `groups` equal-sized batches, each with its own BN statistics."""
        self.eval()
        z = 0.0
        for w, t in zip(self.weights, self.teachers):
            if self.mode == "bssl" and groups > 1:
                with grouped_batch_stats(t, groups):
                    z = z + w * t(x).float()
            elif self.mode == "bssl":
                with batch_stat_bn(t):
                    z = z + w * t(x).float()
            else:
                z = z + w * t(x).float()
        return z


def build_committee(members: Sequence[Teacher], dataset: Mapping[str, Any],
                    weights: torch.Tensor | None = None, mode: str = "eval", pretrained: str | None = None) -> Committee:
    """The one way a list of teachers (name, weights: a safetensors path or None) becomes a Committee:
    relabel's labellers, and the analyses that need the teachers that made a store (LVSD)."""
    from hald.models.build import load_teacher

    nets = [load_teacher(m.name, int(dataset["num_classes"]), int(dataset["channels"]), int(dataset["input_size"]),
                         m.weights, pretrained) for m in members]
    return Committee(nets, weights, mode)
