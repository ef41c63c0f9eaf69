"""The registry of distillation methods: `distill=<name>` is METHODS[name], one record per method.

A record says everything the pipeline asks of a method, so nothing outside the method's own file branches on
its name (tests run over `sorted(METHODS)`):

- `build`: makes the images. Called as ``build(source=<train ImageSource>, dataset=<dataset cfg>,
  out_dir=<artifact dir>, teachers=[Teacher...], trainer_kwargs=<device settings>, work_dir=<stable per-key
  scratch dir>, **cfg.distill)``; returns the manifest fields of its artifact, at least ``images_dir`` (a PNG
  ImageFolder under out_dir). For a `given` method (an existing set on disk) there is nothing to build:
  ``build(dcfg, dataset, cache=None)`` opens and verifies the set and returns its DistilledImages (keyed by
  content; with `cache`, mapped from an array cached there).
- `uses_teacher`: the teachers of `distill.pool` make the images, so their keys enter the image artifact's key.
  A fact about the code, not a user knob.
- `collective`: runs on every rank of the pipeline's DDP world and shares its units out itself (recover);
  the others run on rank 0 while the rest wait (hald/dist.py).
- `check(dcfg, dataset)`: pre-flight validation of the method's config, before any stage runs.
- `real_images(dcfg, dataset)`: real training images per class it must find (pre-flight compares the train
  split with it before any teacher is trained).
- `cost(dcfg, dataset, ipc)`: the work of one build as `Work` items (model forwards and training passes), which
  the cost estimator (tools/rehearse) multiplies by FLOPs.
- `needs_priors(dcfg)` / `single_teacher(dcfg)`: committee methods whose votes are weighted by measured priors
  (CV-DD): whether this config needs them, and the config of the one-teacher run that measures one.
- `mixed_precision`: its unit loop runs the teachers under `compute.recover`'s autocast (SRe2L / CV-DD recover);
  the precision then enters the image key. Others run fp32 whatever compute.recover says.
- `config`: a dataclass of the method's `distill.*` keys: unknown keys and wrong types fail in pre-flight with
  the key named (hald/schema.py). `pool` (a teacher config) is checked as one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from hald.errors import ConfigError

Cfg = Mapping[str, Any]


@dataclass(frozen=True)
class Work:
    """Part of a build's cost: `images` forward passes of `model` (x3 for training passes when `train`),
    counted as `units` of the method's unit."""
    model: str
    images: float
    train: bool = False
    pretrained: Any = None
    units: float = 0.0
    label: str = ""


@dataclass(frozen=True)
class Cost:
    unit: str                       # what `units` count, e.g. "crops scored", "unit iterations"
    work: tuple[Work, ...] = ()
    label: str = ""                 # a summary for the rehearsal table, e.g. "20 of 20 units x 4000 iterations"


def _never(dcfg: Cfg) -> bool:
    return False


def _no_images(dcfg: Cfg, dataset: Cfg) -> int:
    return 0


def _no_cost(dcfg: Cfg, dataset: Cfg, ipc: int) -> Cost:
    return Cost("images")


@dataclass(frozen=True)
class Method:
    name: str
    build: Callable[..., Any]
    uses_teacher: bool = False
    collective: bool = False
    given: bool = False
    check: Callable[[Cfg, Cfg], None] | None = None
    real_images: Callable[[Cfg, Cfg], int] = _no_images
    cost: Callable[[Cfg, Cfg, int], Cost] = _no_cost
    needs_priors: Callable[[Cfg], bool] = _never
    single_teacher: Callable[[Cfg], dict[str, Any]] | None = None
    config: type | None = None      # a dataclass of its `distill.*` keys (hald/schema.py checks them)
    mixed_precision: bool = False   # its teachers' forwards run in compute.recover's precision (hald/compute.py)


METHODS: dict[str, Method] = {}


def register(*names: str, **record: Any):
    """Register a build function under one or more names (SRe2L, SRe2L++ and CV-DD share one recover
    function); `record` holds the other fields of `Method`."""
    def deco(fn):
        for name in names:
            if name in METHODS:
                raise ValueError(f"distill method '{name}' is registered twice")
            METHODS[name] = Method(name, fn, **record)
        return fn
    return deco


def method_of(name: str) -> Method:
    """The record of `distill.method`, or a one-line error naming the registered ones."""
    if name not in METHODS:
        raise ConfigError(f"unknown distill method '{name}'; fix: distill=one of {sorted(METHODS)} (a new method: "
                          f"@register in a module listed in `plugins`, docs/architecture.md)")
    return METHODS[name]


def check_method(dcfg: Cfg, dataset: Cfg) -> None:
    """Run the method's pre-flight check, if it has one."""
    m = method_of(dcfg["method"])
    if m.check is not None:
        m.check(dcfg, dataset)
