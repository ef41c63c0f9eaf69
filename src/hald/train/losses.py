"""The losses of HALD training: functions, and the objects `student.phases` injects (conf/student)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def soft_kl(logits: torch.Tensor, target_probs: torch.Tensor, temperature: float, t2: bool) -> torch.Tensor:
    """KL(p_stored || softmax(z / T)), batchmean; times T^2 when t2 (keeps the gradient scale of the hard
    loss, which matters when Adam's moments carry across a phase switch)."""
    log_q = F.log_softmax(logits / temperature, dim=1)
    loss = F.kl_div(log_q, target_probs, reduction="batchmean")
    return loss * temperature ** 2 if t2 else loss


def cutmix_smoothed_targets(x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float,
                            smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix and label smoothing: t = (1 - eps) * mixed_onehot + eps / C. Mixes x IN PLACE and returns it.

    torchvision v2.CutMix's draws and arithmetic exactly (lam ~ Beta(alpha, alpha), the box centre uniform, the
    partner of image k is k - 1: `roll(1, 0)`; lam adjusted to the box's clipped area), so a seed gives the same
    pixels and targets as `v2.CutMix(alpha, num_classes)(x, y)` (tests/train/test_losses.py). Why not v2 itself:
    it makes two full copies of the batch (the rolled batch and the output), the second alive through the
    forward and backward beside the loader's batch: at 224 px a batch of 1,024 is 0.6 GB each. Here only the
    box is copied; the batch is the step's own, rendered for it. Equal to timm's Mixup(cutmix_alpha,
    label_smoothing) targets, whose smoothing is applied before mixing."""
    onehot = F.one_hot(y, num_classes).float()
    if alpha and x.shape[0] > 1:
        lam = float(torch.distributions.Beta(torch.tensor([float(alpha)]), torch.tensor([float(alpha)])).sample(()))
        h, w = x.shape[-2:]
        cx, cy = torch.randint(w, size=(1,)), torch.randint(h, size=(1,))
        r = 0.5 * math.sqrt(1.0 - lam)
        rw, rh = int(r * w), int(r * h)
        x1, y1 = int(torch.clamp(cx - rw, min=0)), int(torch.clamp(cy - rh, min=0))
        x2, y2 = int(torch.clamp(cx + rw, max=w)), int(torch.clamp(cy + rh, max=h))
        x[..., y1:y2, x1:x2] = x[..., y1:y2, x1:x2].roll(1, 0)  # the right side is a copy: read before written
        lam = float(1.0 - (x2 - x1) * (y2 - y1) / (w * h))
        onehot = onehot.roll(1, 0).mul_(1.0 - lam).add_(onehot.mul(lam))
    return x, onehot * (1.0 - smoothing) + smoothing / num_classes


def soft_target_ce(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0,
                   t2: bool = False) -> torch.Tensor:
    """Cross-entropy to class-probability targets of softmax(z / T); times T^2 when t2 and T != 1.

    T = 1 is the HALD paper's hard loss. T > 1 asks the hard phase for logits on the soft phase's scale:
    after KL at T = 20 the logits are about 10x wider than label-smoothed CE at T = 1 wants, and shrinking
    them at the soft -> hard switch collapses a small student (experiments/README.md, schedules)."""
    loss = F.cross_entropy(logits / temperature, target)
    return loss * temperature ** 2 if t2 and temperature != 1 else loss


class SoftKL:
    """The soft phase's loss as an object (student.phases.soft.loss): soft_kl at the labels' temperature."""

    def __init__(self, temperature: float, t2: bool = True):
        if float(temperature) <= 0:
            raise ValueError(f"soft_loss.temperature={temperature}; fix: a temperature > 0 (the labels' T)")
        self.temperature, self.t2 = float(temperature), bool(t2)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_kl(logits, target, self.temperature, self.t2)


class SoftTargetCE:
    """The hard phase's loss as an object (student.phases.hard.loss): soft_target_ce of softmax(z / T)."""

    def __init__(self, temperature: float = 1.0, t2: bool = False):
        if float(temperature) <= 0:
            raise ValueError(f"hard_loss.temperature={temperature}; fix: a temperature > 0")
        self.temperature, self.t2 = float(temperature), bool(t2)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_target_ce(logits, target, self.temperature, self.t2)
