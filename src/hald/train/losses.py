"""The losses of HALD training: functions, and the objects `student.phases` injects (conf/student)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


def soft_kl(logits: torch.Tensor, target_probs: torch.Tensor, temperature: float, t2: bool) -> torch.Tensor:
    """KL(p_stored || softmax(z / T)), batchmean; times T^2 when t2 (keeps the gradient scale of the hard
    loss, which matters when Adam's moments carry across a phase switch)."""
    log_q = F.log_softmax(logits / temperature, dim=1)
    loss = F.kl_div(log_q, target_probs, reduction="batchmean")
    return loss * temperature ** 2 if t2 else loss


def cutmix_smoothed_targets(x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float,
                            smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (torchvision v2; any batch size) and label smoothing: t = (1 - eps) * mixed_onehot + eps / C.

    Equal to timm's Mixup(cutmix_alpha, label_smoothing) targets, whose smoothing is applied before mixing.
    """
    if alpha and x.shape[0] > 1:
        x, t = v2.CutMix(alpha=alpha, num_classes=num_classes)(x, y)
    else:
        t = F.one_hot(y, num_classes).float()
    return x, t * (1.0 - smoothing) + smoothing / num_classes


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
