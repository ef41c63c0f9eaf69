"""The registry of distillation methods: `distill=<name>` calls METHODS[name].

A method is called by the pipeline as
``fn(source=<train ImageSource>, dataset=<dataset cfg>, out_dir=<artifact dir>, teachers=[...],
trainer_kwargs=<device settings>, work_dir=<stable per-key scratch dir>, **cfg.distill)`` and returns the
manifest fields of its artifact, at least ``images_dir`` (a PNG ImageFolder under out_dir).
An optional ``check(distill_cfg, dataset_cfg)`` validates the config before any stage runs (pre-flight).
A ``collective`` method runs on every rank of the pipeline's DDP world and shares its units out itself
(recover); the others run on rank 0 while the rest wait (hald/dist.py).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

METHODS: dict[str, Callable[..., dict[str, Any]]] = {}
CHECKS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], None]] = {}
COLLECTIVE: set[str] = set()


def register(*names: str, check: Callable[[Mapping[str, Any], Mapping[str, Any]], None] | None = None,
             collective: bool = False):
    """Register a method under one or more names (SRe2L, SRe2L++ and CV-DD share one recover function)."""
    def deco(fn):
        for name in names:
            if name in METHODS:
                raise ValueError(f"distill method '{name}' is registered twice")
            METHODS[name] = fn
            if check is not None:
                CHECKS[name] = check
            if collective:
                COLLECTIVE.add(name)
        return fn
    return deco


def check_method(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> None:
    """Run the method's pre-flight check, if it has one."""
    check = CHECKS.get(dcfg["method"])
    if check is not None:
        check(dcfg, dataset)
