"""Storage budgets: how many passes (SLI) and which codec parameters fit a number of bytes.

Two ways to ask:
- `slc=N`: SLI = N / ipc passes (exact; a clear error otherwise), with the configured codec.
- `label_budget=285MB`: the store's bytes on disk (shards + manifest) never exceed it. With fixed codec
  parameters the planner takes as many passes as fit. With `codec.k=auto` or `codec.bits=auto` it keeps
  SLI = slc / ipc and picks the largest k (or bits) that fits.
Shard sizes are exact (computed by the code that writes shards); the manifest gets a measured reserve.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from hald.labels.codecs import Codec
from hald.labels.store import shard_bytes
from hald.errors import InputError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class LabelBudgetError(InputError):
    """slc / ipc / batch size / byte budgets that do not make a valid store (one-line cause and fix)."""


def parse_bytes(value: Any) -> int:
    """'285MB' -> 285_000_000 (KB/MB/GB decimal, KiB/MiB/GiB binary); ints pass through."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMG]i?B|B)?\s*", str(value), flags=re.IGNORECASE)
    if not m:
        raise LabelBudgetError(f"label_budget={value!r} is not a size; fix: e.g. label_budget=285MB, 50KB, 2MiB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def plan_passes(slc: int, ipc: int) -> int:
    """SLI = slc / ipc passes over the images. No silent rounding: an inexact budget is an error."""
    if slc < ipc:
        raise LabelBudgetError(f"slc={slc} is below ipc={ipc}: every image needs at least one soft label; fix: "
                               f"slc>={ipc} (a multiple of ipc)")
    if slc % ipc:
        lo, hi = (slc // ipc) * ipc, (slc // ipc + 1) * ipc
        raise LabelBudgetError(f"slc={slc} is not a multiple of ipc={ipc} (SLI = slc/ipc passes over the images); "
                               f"fix: slc={lo} or slc={hi}")
    return slc // ipc


@dataclass
class Plan:
    sli: int
    codec: Codec
    shard_bytes: int
    manifest_reserve: int
    budget: int | None

    @property
    def planned_bytes(self) -> int:
        return self.sli * self.shard_bytes + self.manifest_reserve


def plan_store(codec_cfg: Mapping[str, Any], n_images: int, ipc: int, num_classes: int, batch_size: int,
               slc: int | None, budget: Any, manifest_bytes: Callable[[int, Codec], int]) -> Plan:
    """Decide SLI and codec parameters. manifest_bytes(sli, codec) estimates the manifest's size."""
    cfg = dict(codec_cfg)
    auto = [k for k in ("k", "bits") if cfg.get(k) == "auto"]
    if budget is None:
        if auto:
            raise LabelBudgetError(f"codec.{auto[0]}=auto needs a byte budget to choose it; fix: set label_budget "
                                   f"(e.g. label_budget=50KB) or labels.codec.{auto[0]}=N")
        codec = Codec.from_config(cfg)
        return Plan(plan_passes(int(slc), ipc), codec, shard_bytes(n_images, batch_size, codec, num_classes), 0, None)
    limit = parse_bytes(budget)

    def fits(sli: int, codec: Codec) -> tuple[bool, int, int]:
        sb, mb = shard_bytes(n_images, batch_size, codec, num_classes), manifest_bytes(sli, codec)
        return sli * sb + mb <= limit, sb, mb

    if auto:
        sli = plan_passes(int(slc), ipc)
        name = auto[0]
        top = num_classes if name == "k" else 16
        # The largest parameter that fits (= the most faithful labels). A store's bytes grow with k and with
        # bits, so a bisection finds it in log2(C) plans, not C (k=auto at C=1000 took minutes).
        lo, hi = 0, top  # fits(lo) holds (lo = 0: none checked yet), the answer is in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(sli, Codec.from_config({**cfg, name: mid}))[0]:
                lo = mid
            else:
                hi = mid - 1
        if lo >= 1:
            codec = Codec.from_config({**cfg, name: lo})
            _, sb, mb = fits(sli, codec)
            return Plan(sli, codec, sb, mb, limit)
        need = fits(sli, Codec.from_config({**cfg, name: 1}))
        raise LabelBudgetError(f"label_budget={budget} ({limit:,} B) cannot hold SLI={sli} even with labels.codec.{name}=1 "
                               f"(needs {sli * need[1] + need[2]:,} B); fix: a larger label_budget or a smaller slc")
    codec = Codec.from_config(cfg)
    ok, sb, mb = fits(1, codec)
    if not ok:
        raise LabelBudgetError(f"label_budget={budget} ({limit:,} B) is below the minimum of one label per image "
                               f"with codec {codec.describe()}: {sb + mb:,} B; fix: label_budget>={sb + mb} or a "
                               f"smaller codec (e.g. codec=topk_quant)")
    sli = max(1, (limit - manifest_bytes(1, codec)) // sb)  # a first guess; the manifest grows with SLI
    while sli > 1 and not fits(sli, codec)[0]:
        sli -= 1
    while fits(sli + 1, codec)[0]:
        sli += 1
    return Plan(sli, codec, sb, manifest_bytes(sli, codec), limit)
