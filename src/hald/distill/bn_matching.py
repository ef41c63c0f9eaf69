"""The BatchNorm-statistics term of SRe2L / CV-DD recover, collected with forward hooks.

BN = sum_l s_l (||mu_l(x) - mu_l^run||_2 + ||var_l(x) - var_l^run||_2) over every BatchNorm2d of a frozen
teacher in eval mode, where mu_l and var_l are the per-channel mean and *biased* variance of the layer's
input over (batch, H, W). s = `first_multiplier` (10) for the first BatchNorm in registration order, 1 after.
The sum is not normalised by the number of layers (faithful to the papers: a teacher with many BN layers
contributes a larger term; see the CV-DD reference, quirk 8).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class BNStatistics:
    """Hooks every BatchNorm2d of `model`; `pop()` returns the weighted sum since the last pop."""

    def __init__(self, model: nn.Module, first_multiplier: float = 10.0):
        # timm's BatchNormAct2d subclasses BatchNorm2d, so MobileNetV2 / EfficientNet layers count too.
        layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not layers:
            raise ValueError(f"{type(model).__name__} has no BatchNorm2d layer: BN-statistics matching needs "
                             f"one; fix: recover with a teacher that uses BatchNorm (or distill=rded)")
        # Scales by module, not by call order: the first *registered* layer gets s = first_multiplier.
        self.scale = {id(m): (first_multiplier if i == 0 else 1.0) for i, m in enumerate(layers)}
        self.terms: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in layers]

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0].float()
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        term = torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(var - module.running_var)
        self.terms.append(self.scale[id(module)] * term)

    def pop(self) -> torch.Tensor:
        total = torch.stack(self.terms).sum()
        self.terms.clear()
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
