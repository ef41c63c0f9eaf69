"""CV-DD committees: which teachers vote for an IPC index, and with which weights.

Modes (``committee.mode``):
- ``fixed``: the same members (``committee.fixed``, names or pool indices) for every IPC index
  (CV-DD's IPC-1 setting; with one member this is SRe2L / SRe2L++);
- ``pairs``: all C(n, size) combinations in turn, IPC index i uses combination i mod C(n, size)
  (CV-DD's IPC-10 setting, which crashed for i >= 10: here it wraps around);
- ``random``: ``size`` members drawn without replacement, seeded by (seed, IPC index)
  (CV-DD's IPC-50 setting, unseeded in the official code).

Weights over the chosen committee only: softmax(alpha / T) of the members' priors (T = 5), or equal.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch

from hald.errors import ConfigError
from hald.models.teachers import softmax_weights

MODES = ("fixed", "pairs", "random")
WEIGHTINGS = ("prior", "equal")


def voter_weights(priors: Sequence[float] | None, temperature: float = 5.0) -> torch.Tensor:
    """w_i = exp(alpha_i / T) / sum_j exp(alpha_j / T) over the committee; equal weights when priors is None."""
    if priors is None:
        raise ConfigError("voter weights need priors; fix: distill.committee.weights=equal or give distill.priors")
    return softmax_weights(priors, temperature)


def member_index(pool: Sequence[str], member: str | int) -> int:
    if isinstance(member, int):
        if not 0 <= member < len(pool):
            raise ConfigError(f"committee member {member} is outside the pool of {len(pool)}; fix: an index "
                              f"in 0..{len(pool) - 1} or a name from {list(pool)}")
        return member
    if member not in pool:
        raise ConfigError(f"committee member '{member}' is not in the pool {list(pool)}; fix: "
                          f"distill.committee.fixed=[names from distill.pool.models]")
    return list(pool).index(member)


class CommitteeSchedule:
    """members(i) -> pool indices voting for IPC index i; weights(i) -> their voter weights."""

    def __init__(self, pool: Sequence[str], size: int, mode: str, fixed: Sequence[str | int] | None = None,
                 seed: int = 0, weighting: str = "prior", priors: Sequence[float] | None = None,
                 temperature: float = 5.0):
        n = len(pool)
        if mode not in MODES:
            raise ConfigError(f"distill.committee.mode={mode}; fix: one of {list(MODES)}")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"distill.committee.weights={weighting}; fix: one of {list(WEIGHTINGS)}")
        if not 1 <= size <= n:
            raise ConfigError(f"distill.committee.size={size} with a pool of {n} teachers; fix: a size in 1..{n} "
                              f"or more teachers in distill.pool.models")
        if priors is not None and len(priors) != n:
            raise ConfigError(f"{len(priors)} priors for a pool of {n} teachers; fix: distill.priors=[one per "
                              f"teacher] or null to measure them")
        if weighting == "prior" and priors is None and size > 1:
            raise ConfigError("committee weights softmax(alpha / T) need the teachers' priors alpha; fix: "
                              "distill.priors=[one per teacher] (the pipeline measures them when null) or "
                              "distill.committee.weights=equal")
        self.pool, self.size, self.mode, self.seed = list(pool), size, mode, seed
        self.weighting, self.priors, self.temperature = weighting, priors, temperature
        if mode == "fixed":
            chosen = [member_index(pool, m) for m in (fixed if fixed is not None else range(size))]
            if len(chosen) != size or len(set(chosen)) != size:
                raise ConfigError(f"distill.committee.fixed={list(fixed or [])} must name {size} different "
                                  f"teachers; fix: give committee.size distinct members")
            self._fixed = chosen
        self._pairs = list(itertools.combinations(range(n), size))

    def members(self, ipc_index: int) -> list[int]:
        if self.mode == "fixed":
            return list(self._fixed)
        if self.mode == "pairs":
            return list(self._pairs[ipc_index % len(self._pairs)])
        rng = np.random.default_rng([self.seed, ipc_index])
        return sorted(rng.choice(len(self.pool), self.size, replace=False).tolist())

    def weights(self, ipc_index: int) -> torch.Tensor:
        members = self.members(ipc_index)
        if self.weighting == "equal" or len(members) == 1:
            return torch.full((len(members),), 1.0 / len(members))
        return voter_weights(None if self.priors is None else [self.priors[m] for m in members], self.temperature)
