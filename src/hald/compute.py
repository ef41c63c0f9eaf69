"""How the arithmetic runs: precision per stage, memory layout, compiled forwards (conf/compute, docs/speed.md).

Precision is a named choice per stage, Lightning's own names:
- `32-true`: fp32, what SRe2L, RDED, CV-DD and HALD run (their presets pin it: `compute=fp32`);
- `bf16-mixed`: autocast to bfloat16 (convolutions and matmuls in bf16, reductions and the loss in fp32);
  fast on GPUs from Ampere on and on CPUs with avx512_bf16 / AMX;
- `16-mixed`: autocast to float16 with a gradient scaler (GPUs only);
- `fast`: bf16-mixed where the device runs bf16 natively, else 16-mixed on a GPU, else 32-true. Resolved
  once per process (`resolve`), and the resolved name is what enters cache keys and results.

The Trainer stages (squeeze, student, relabel) take it through Lightning's precision plugin; recover (a
Fabric loop) through `autocast`. Channels-last changes the memory layout of the weights and activations
only: the same convolutions, summed in another order (the float rounding differs, as with any other kernel
choice), so it is not part of any cache key; precision is, when it is not 32-true.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from hald.errors import ConfigError

log = logging.getLogger("hald")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "fast")
FP32 = "32-true"


@dataclass
class ComputeConfig:
    """The `compute` group's schema (hald/schema.py); each precision is checked against the accelerator when
    the stage resolves it (`resolve`)."""
    name: str = "fast"
    squeeze: str = "fast"
    relabel: str = "fast"
    recover: str = FP32
    student: str = "fast"
    channels_last: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        for stage in ("squeeze", "relabel", "recover", "student"):
            if str(getattr(self, stage)) not in PRECISIONS:
                raise ConfigError(f"compute.{stage}={getattr(self, stage)} is not a precision; fix: one of "
                                  f"{', '.join(PRECISIONS)}")


def accelerator_type(accelerator: str | None) -> str:
    """cpu | cuda | mps for a Lightning accelerator name (auto = what this process would get)."""
    acc = str(accelerator or "auto")
    if acc in ("gpu", "cuda"):
        return "cuda"
    if acc == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    return acc


def native_bf16(device_type: str) -> bool:
    """Whether the device has bf16 arithmetic in hardware (else autocast emulates it, slower than fp32)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve(value: Any, accelerator: str | None, key: str) -> str:
    """A stage's precision setting -> the Lightning precision it runs with on this accelerator. One-line
    error for a name that is not a choice or a choice the device cannot run."""
    v = str(value)
    if v not in PRECISIONS:
        raise ConfigError(f"{key}={value} is not a precision; fix: one of {', '.join(PRECISIONS)}")
    device = accelerator_type(accelerator)
    scaled = key != "compute.recover"  # recover steps its pixels with loss.backward(): no gradient scaler
    if v == "fast":
        if native_bf16(device):
            return "bf16-mixed"
        return "16-mixed" if device == "cuda" and scaled else FP32
    if v == "16-mixed" and not scaled:
        raise ConfigError(f"{key}=16-mixed: recover optimises its pixels without a gradient scaler, which float16 "
                          f"needs; fix: {key}=bf16-mixed or {key}=32-true")
    if v == "16-mixed" and device != "cuda":
        raise ConfigError(f"{key}=16-mixed needs a CUDA GPU (float16 autocast with a gradient scaler); this run is "
                          f"on {device}; fix: {key}=bf16-mixed or {key}=fast")
    if v == "bf16-mixed" and device == "cpu" and not native_bf16("cpu"):
        log.warning("%s=bf16-mixed on a CPU without native bf16: emulated, slower than fp32 (fast picks 32-true "
                    "here)", key)
    return v


def key_part(precision: str) -> dict[str, str]:
    """What a resolved precision adds to a cache key: nothing for fp32 (keys made before the choice existed
    stay valid), the name otherwise."""
    return {} if precision == FP32 else {"precision": precision}


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """torch.autocast for a resolved precision, for code that is not a Trainer (recover); fp32: no-op."""
    device_type = torch.device(device).type
    if precision == "bf16-mixed":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device_type, dtype=torch.float16)
    return contextlib.nullcontext()


def channels_last(net: nn.Module, enabled: bool = True) -> nn.Module:
    """The module's 4-D weights in channels-last (NHWC) layout, in place; PyTorch then runs its convolutions
    channels-last when their input is (`as_input`)."""
    if enabled:
        net.to(memory_format=torch.channels_last)
    return net


def as_input(x: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """A 4-D batch in channels-last layout (no copy when it already is: replay renders it that way), or in
    the planar NCHW layout when channels-last is off (PyTorch picks a convolution's layout from its input)."""
    if x.dim() != 4:
        return x
    return x.contiguous(memory_format=torch.channels_last if enabled else torch.contiguous_format)


def compiled(net: nn.Module, enabled: bool, what: str) -> nn.Module:
    """`torch.compile` of the module in place (`nn.Module.compile`: parameter names, state dicts and
    checkpoints stay the same). The compilation runs at the first forward of each shape (minutes on a
    small CPU): the run's first steps include it."""
    if enabled:
        log.info("%s: torch.compile on (the first step of each shape compiles)", what)
        net.compile()
    return net

