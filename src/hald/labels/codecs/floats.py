"""The float codec: probabilities stored as fp32 (lossless) or fp16 (rounded, not renormalised)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from hald.labels.codecs.base import Codec, register_codec

FLOAT_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@register_codec("float")
@dataclass(frozen=True)
class FloatCodec(Codec):
    dtype: str = "float16"

    @classmethod
    def tag(cls, c: Mapping[str, Any]) -> str:
        return "fp16" if c.get("dtype", "float16") == "float16" else "fp32"

    def __post_init__(self) -> None:
        if self.dtype not in FLOAT_DTYPES:
            raise ValueError(f"codec dtype '{self.dtype}'; fix: float16 or float32")

    def row_bytes(self, num_classes: int) -> int:
        return num_classes * FLOAT_DTYPES[self.dtype].itemsize

    def encode(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        # through float32 first: a float64 input then rounds to fp16 exactly as a float32 one does
        return {"probs": p.float().to(FLOAT_DTYPES[self.dtype])}

    def decode(self, t: Mapping[str, torch.Tensor], num_classes: int) -> torch.Tensor:
        return t["probs"].float()
