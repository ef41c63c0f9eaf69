"""The topk codec: the k largest probabilities (fp16) and their class ids. The helpers here (class-id
dtype, parameter checks, rebuilding a full row from k entries) are shared with topk_quant (quant.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from hald.labels.codecs.base import Codec, register_codec


def index_dtype(num_classes: int) -> torch.dtype:
    """The smallest integer dtype that holds every class id (uint8 up to 256 classes)."""
    return torch.uint8 if num_classes <= 256 else torch.int16 if num_classes <= 32768 else torch.int32


def check_k(codec: str, k: int | None) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"codec {codec} needs k >= 1 (got {k}); fix: codec.k=N or label_budget with "
                         f"labels.codec.k=auto")


def check_rest(rest: str) -> None:
    if rest not in ("uniform", "renorm"):
        raise ValueError(f"codec rest '{rest}'; fix: uniform or renorm")


def fill_rows(idx: torch.Tensor, vals: torch.Tensor, num_classes: int, rest: str) -> torch.Tensor:
    """k kept entries per row -> probabilities [n, C]. rest=uniform spreads the mass the kept entries miss
    evenly over the other classes (so no class gets probability 0); rest=renorm drops it and rescales."""
    n, k = idx.shape
    if rest == "renorm" or k == num_classes:
        p = torch.zeros(n, num_classes).scatter_(1, idx, vals)
        return p / p.sum(1, keepdim=True).clamp_min(1e-12)
    spread = ((1.0 - vals.sum(1, keepdim=True)).clamp_min(0.0) / (num_classes - k)).expand(n, num_classes).clone()
    return spread.scatter_(1, idx, vals)


@register_codec("topk")
@dataclass(frozen=True)
class TopK(Codec):
    k: int | None = None  # required; None only so that a missing k gets the "fix:" message
    rest: str = "uniform"

    @classmethod
    def tag(cls, c: Mapping[str, Any]) -> str:
        return f"top{c.get('k')}"

    def __post_init__(self) -> None:
        check_k(self.name, self.k)
        check_rest(self.rest)

    def row_bytes(self, num_classes: int) -> int:
        return min(self.k, num_classes) * (torch.float16.itemsize + index_dtype(num_classes).itemsize)

    def encode(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        vals, idx = p.float().topk(min(self.k, p.shape[1]), dim=1)
        return {"indices": idx.to(index_dtype(p.shape[1])), "values": vals.to(torch.float16)}

    def decode(self, t: Mapping[str, torch.Tensor], num_classes: int) -> torch.Tensor:
        return fill_rows(t["indices"].long(), t["values"].float(), num_classes, self.rest)
