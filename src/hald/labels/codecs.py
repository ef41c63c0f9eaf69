"""Soft-label codecs: how a row of C probabilities becomes bytes in a shard, and back.

Every codec maps probs [n, C] to a dict of per-row tensors (first dimension n, so a record is a row slice)
and back; `row_bytes(C)` is the exact number of bytes one stored label takes. Decoding is vectorised over
the rows and runs in the loader workers.

    float   fp32 / fp16 probabilities (lossless / fp16 rounding)
    topk    the k largest probabilities (fp16) and their class ids; the rest spread uniformly or dropped
            and the row renormalised
    quant   n-bit uniform quantisation with bit packing, of p on [0, 1] (the HALD code's disabled option)
            or of log p on a per-row [min, max] range (relative precision, which flat T=20 labels need)
    topk_quant   topk with n-bit log-space values
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

FLOAT_DTYPES = {"float16": torch.float16, "float32": torch.float32}


# -- bit packing -------------------------------------------------------------------------------------------------
def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """int [n, m] with values < 2**bits -> uint8 [n, ceil(m*bits/8)]; value k's bits are stream positions
    k*bits .. k*bits+bits-1, most significant first; within a byte the first stream bit is the MSB."""
    n, m = q.shape
    shifts = torch.arange(bits - 1, -1, -1, device=q.device)
    stream = ((q.long().unsqueeze(-1) >> shifts) & 1).reshape(n, m * bits)
    pad = (-stream.shape[1]) % 8
    stream = torch.nn.functional.pad(stream, (0, pad)).reshape(n, -1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], device=q.device)
    return (stream * weights).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, m: int, bits: int) -> torch.Tensor:
    """Inverse of pack_bits: uint8 [n, nbytes] -> int64 [n, m]."""
    n = packed.shape[0]
    shifts = torch.arange(7, -1, -1, device=packed.device)
    stream = ((packed.long().unsqueeze(-1) >> shifts) & 1).reshape(n, -1)[:, : m * bits].reshape(n, m, bits)
    weights = 2 ** torch.arange(bits - 1, -1, -1, device=packed.device)
    return (stream * weights).sum(-1)


def index_dtype(num_classes: int) -> torch.dtype:
    return torch.uint8 if num_classes <= 256 else torch.int16 if num_classes <= 32768 else torch.int32


def _quantise(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2 ** bits - 1
    scale = (hi - lo).clamp_min(1e-12)
    return torch.round((x - lo) / scale * levels).clamp_(0, levels).long()


def _dequantise(q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    return lo + q.float() / (2 ** bits - 1) * (hi - lo)


def _log_range(logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # The range is stored in fp16; quantise against the rounded values so decode sees the same numbers.
    lo = logp.min(1, keepdim=True).values.to(torch.float16).float()
    hi = logp.max(1, keepdim=True).values.to(torch.float16).float()
    return lo, hi


# -- codecs ------------------------------------------------------------------------------------------------------
@dataclass
class Codec:
    name: str
    dtype: str = "float16"      # float
    k: int | None = None        # topk, topk_quant
    bits: int | None = None     # quant, topk_quant
    rest: str = "uniform"       # topk: uniform | renorm
    space: str = "log"          # quant: log | prob
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in ("float", "topk", "quant", "topk_quant"):
            raise ValueError(f"unknown codec '{self.name}'; fix: codec=fp16|fp32|topk|quant|topk_quant")
        if self.name == "float" and self.dtype not in FLOAT_DTYPES:
            raise ValueError(f"codec dtype '{self.dtype}'; fix: float16 or float32")
        if self.name in ("topk", "topk_quant") and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"codec {self.name} needs k >= 1 (got {self.k}); fix: codec.k=N or label_budget with labels.codec.k=auto")
        if self.name in ("quant", "topk_quant") and (not isinstance(self.bits, int) or not 1 <= self.bits <= 16):
            raise ValueError(f"codec {self.name} needs 1 <= bits <= 16 (got {self.bits}); fix: labels.codec.bits=N")
        if self.rest not in ("uniform", "renorm"):
            raise ValueError(f"codec rest '{self.rest}'; fix: uniform or renorm")
        if self.space not in ("log", "prob"):
            raise ValueError(f"codec space '{self.space}'; fix: log or prob")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Codec":
        c = dict(cfg)
        return cls(name=c["name"], dtype=c.get("dtype", "float16"), k=c.get("k"), bits=c.get("bits"),
                   rest=c.get("rest", "uniform"), space=c.get("space", "log"))

    def spec(self) -> dict[str, Any]:
        keep = {"float": ("dtype",), "topk": ("k", "rest"), "quant": ("bits", "space"),
                "topk_quant": ("k", "bits", "rest")}[self.name]
        return {"name": self.name, **{f: getattr(self, f) for f in keep}}

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.spec().items())

    # -- sizes -------------------------------------------------------------------------------------------------
    def row_bytes(self, num_classes: int) -> int:
        c = num_classes
        idx = torch.empty((), dtype=index_dtype(c)).element_size()
        if self.name == "float":
            return c * FLOAT_DTYPES[self.dtype].itemsize
        if self.name == "topk":
            return min(self.k, c) * (2 + idx)
        if self.name == "quant":
            return math.ceil(c * self.bits / 8) + (4 if self.space == "log" else 0)
        return min(self.k, c) * idx + math.ceil(min(self.k, c) * self.bits / 8) + 4

    # -- encode / decode ---------------------------------------------------------------------------------------
    def encode(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        p = p.float()
        c = p.shape[1]
        if self.name == "float":
            return {"probs": p.to(FLOAT_DTYPES[self.dtype])}
        if self.name == "quant":
            if self.space == "prob":
                q = _quantise(p, torch.zeros(()), torch.ones(()), self.bits)
                return {"packed": pack_bits(q, self.bits)}
            logp = p.clamp_min(1e-30).log()
            lo, hi = _log_range(logp)
            return {"packed": pack_bits(_quantise(logp, lo, hi, self.bits), self.bits),
                    "range": torch.cat([lo, hi], 1).to(torch.float16)}
        k = min(self.k, c)
        vals, idx = p.topk(k, dim=1)
        out = {"indices": idx.to(index_dtype(c))}
        if self.name == "topk":
            out["values"] = vals.to(torch.float16)
            return out
        logv = vals.clamp_min(1e-30).log()
        lo, hi = _log_range(logv)
        out["packed"] = pack_bits(_quantise(logv, lo, hi, self.bits), self.bits)
        out["range"] = torch.cat([lo, hi], 1).to(torch.float16)
        return out

    def decode(self, t: Mapping[str, torch.Tensor], num_classes: int) -> torch.Tensor:
        """Stored rows -> float32 probabilities [n, C] (rows sum to 1 for every lossy codec)."""
        c = num_classes
        if self.name == "float":
            return t["probs"].float()
        if self.name == "quant":
            q = unpack_bits(t["packed"], c, self.bits)
            if self.space == "prob":
                p = q.float() / (2 ** self.bits - 1)
                return p / p.sum(1, keepdim=True).clamp_min(1e-12)
            rng = t["range"].float()
            return torch.softmax(_dequantise(q, rng[:, :1], rng[:, 1:], self.bits), dim=1)
        k = min(self.k, c)
        idx = t["indices"].long()
        if self.name == "topk":
            vals = t["values"].float()
        else:
            rng = t["range"].float()
            vals = _dequantise(unpack_bits(t["packed"], k, self.bits), rng[:, :1], rng[:, 1:], self.bits).exp()
        n = idx.shape[0]
        if self.rest == "renorm" or k == c:
            p = torch.zeros(n, c).scatter_(1, idx, vals)
            return p / p.sum(1, keepdim=True).clamp_min(1e-12)
        rest = ((1.0 - vals.sum(1, keepdim=True)).clamp_min(0.0) / (c - k)).expand(n, c).clone()
        return rest.scatter_(1, idx, vals)


PRESETS = {"fp32": {"name": "float", "dtype": "float32"}, "fp16": {"name": "float", "dtype": "float16"}}
