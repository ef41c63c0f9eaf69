"""Bit packing and n-bit log-range quantisation, shared by the quant and topk_quant codecs (and by the
label store, which bit-packs flip flags)."""
from __future__ import annotations

from typing import Mapping

import torch

# A log range is two fp16 numbers (min, max) per row.
LOG_RANGE_BYTES = 4


def check_bits(codec: str, bits: int | None) -> None:
    # past 16 bits a value takes more room than the fp16 it replaces (codec=fp16, topk)
    if not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"codec {codec} needs 1 <= bits <= 16 (got {bits}); fix: labels.codec.bits=N")


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


def quantise(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2 ** bits - 1
    scale = (hi - lo).clamp_min(1e-12)  # a constant row has hi == lo: every value maps to level 0
    return torch.round((x - lo) / scale * levels).clamp_(0, levels).long()


def dequantise(q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    return lo + q.float() / (2 ** bits - 1) * (hi - lo)


def encode_log(x: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """Positive values [n, m] -> log x quantised on each row's own [min, max]: relative precision, which
    flat (high-temperature) labels need, where a [0, 1] grid would round most classes to one level."""
    logx = x.clamp_min(1e-30).log()
    # The range is stored in fp16; quantise against the rounded values so decode sees the same numbers.
    lo = logx.min(1, keepdim=True).values.to(torch.float16).float()
    hi = logx.max(1, keepdim=True).values.to(torch.float16).float()
    return {"packed": pack_bits(quantise(logx, lo, hi, bits), bits), "range": torch.cat([lo, hi], 1).to(torch.float16)}


def decode_log(t: Mapping[str, torch.Tensor], m: int, bits: int) -> torch.Tensor:
    """Inverse of encode_log up to the quantisation step, in log space: float32 [n, m]."""
    rng = t["range"].float()
    return dequantise(unpack_bits(t["packed"], m, bits), rng[:, :1], rng[:, 1:], bits)
