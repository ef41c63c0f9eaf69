"""Pixels of distilled images: uint8 on disk, normalised floats while optimising, and the valid range."""
from __future__ import annotations

from typing import Any, Mapping

import torch


def _stats(dataset: Mapping[str, Any], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(list(dataset["mean"]), dtype=torch.float32, device=like.device).view(-1, 1, 1)
    std = torch.tensor(list(dataset["std"]), dtype=torch.float32, device=like.device).view(-1, 1, 1)
    return mean, std


def normalize(x01: torch.Tensor, dataset: Mapping[str, Any]) -> torch.Tensor:
    """[0, 1] floats -> the teacher's input space."""
    mean, std = _stats(dataset, x01)
    return (x01 - mean) / std


def to_uint8(x: torch.Tensor, dataset: Mapping[str, Any]) -> torch.Tensor:
    """Normalised floats -> uint8, rounded (the official code truncated) and clamped to [0, 255]."""
    mean, std = _stats(dataset, x)
    return (x.detach() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def valid_range(dataset: Mapping[str, Any], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel bounds [(0 - m) / s, (1 - m) / s] of normalised pixels, shaped to broadcast over [B,C,H,W]."""
    mean, std = _stats(dataset, like)
    return (0 - mean) / std, (1 - mean) / std
