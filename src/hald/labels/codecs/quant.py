"""The quantised codecs. quant: n-bit values of every class, of p on [0, 1] (space=prob, the HALD code's
disabled option) or of log p on each row's [min, max] (space=log). topk_quant: topk with n-bit log-space
values, the fewest bytes per label."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from hald.labels.codecs.base import Codec, register_codec
from hald.labels.codecs.bits import (LOG_RANGE_BYTES, check_bits, decode_log, encode_log, pack_bits, quantise,
                                    unpack_bits)
from hald.labels.codecs.topk import check_k, check_rest, fill_rows, index_dtype


@register_codec("quant")
@dataclass(frozen=True)
class Quant(Codec):
    bits: int | None = None  # required; None only so that a missing bits gets the "fix:" message
    space: str = "log"

    @classmethod
    def tag(cls, c: Mapping[str, Any]) -> str:
        return f"q{c.get('bits')}{c.get('space', 'log')}"

    def __post_init__(self) -> None:
        check_bits(self.name, self.bits)
        if self.space not in ("log", "prob"):
            raise ValueError(f"codec space '{self.space}'; fix: log or prob")

    def row_bytes(self, num_classes: int) -> int:
        return math.ceil(num_classes * self.bits / 8) + (LOG_RANGE_BYTES if self.space == "log" else 0)

    def encode(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        p = p.float()
        if self.space == "log":
            return encode_log(p, self.bits)
        return {"packed": pack_bits(quantise(p, torch.zeros(()), torch.ones(()), self.bits), self.bits)}

    def decode(self, t: Mapping[str, torch.Tensor], num_classes: int) -> torch.Tensor:
        if self.space == "log":
            return torch.softmax(decode_log(t, num_classes, self.bits), dim=1)
        p = unpack_bits(t["packed"], num_classes, self.bits).float() / (2 ** self.bits - 1)
        return p / p.sum(1, keepdim=True).clamp_min(1e-12)


@register_codec("topk_quant")
@dataclass(frozen=True)
class TopKQuant(Codec):
    k: int | None = None
    bits: int | None = None
    rest: str = "uniform"

    @classmethod
    def tag(cls, c: Mapping[str, Any]) -> str:
        return f"top{c.get('k')}q{c.get('bits')}"

    def __post_init__(self) -> None:
        check_k(self.name, self.k)
        check_bits(self.name, self.bits)
        check_rest(self.rest)

    def row_bytes(self, num_classes: int) -> int:
        k = min(self.k, num_classes)
        return k * index_dtype(num_classes).itemsize + math.ceil(k * self.bits / 8) + LOG_RANGE_BYTES

    def encode(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        vals, idx = p.float().topk(min(self.k, p.shape[1]), dim=1)
        return {"indices": idx.to(index_dtype(p.shape[1])), **encode_log(vals, self.bits)}

    def decode(self, t: Mapping[str, torch.Tensor], num_classes: int) -> torch.Tensor:
        k = min(self.k, num_classes)
        return fill_rows(t["indices"].long(), decode_log(t, k, self.bits).exp(), num_classes, self.rest)
