"""The valid values of the config's keys: the range of every numeric key by field name, and the one-line
errors (`cause; fix: key=value`) that schema.validate raises when a value is outside it."""
from __future__ import annotations

from typing import Any

from hald.errors import ConfigError


def positive(where: str, **values: Any) -> None:
    """Counts that must be positive integers, named by their key (prefixed by `where` unless it is empty)."""
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(range_message(f"{where}.{key}" if where else key, value, COUNT))


def one_of(where: str, key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{where}.{key}={value!r}; fix: one of {list(choices)}")


# The valid range of every numeric key, by field name (the names mean the same in every group and method):
# `validate` walks the built config and checks each value (each element of a list) against it; a test walks
# the schema and tries an out-of-range value for every one, and fails on a numeric key missing here.
COUNT, NONNEG, POS, UNIT = ">=1", ">=0", ">0", "[0,1]"
RANGES = {
    **dict.fromkeys(("epochs", "batch_size", "ipc", "slc", "iterations", "mipc", "num_crops", "factor", "class_chunk",
                     "devices", "cpu_threads", "units_run", "log_every", "lvsd_crops", "consistency_pairs",
                     "checkpoint_every", "soft_batch_size", "hard_batch_size", "micro_batch_size",
                     "eval_batch_size", "channels", "input_size", "num_classes", "test_resize", "train_per_class",
                     "block", "bssl_group_size", "step_size", "max_steps", "budgets", "input_sizes", "groups_per_forward"), COUNT),
    **dict.fromkeys(("num_workers", "eval_every", "eval_offset", "grad_sim_every", "weight_decay", "r_bn", "first_bn_multiplier",
                     "cutmix_alpha", "warmup_epochs", "pad", "offset", "every"), NONNEG),
    **dict.fromkeys(("lr", "eta", "default_lr", "default_eta", "temperature", "std", "images_on_device_max_gb",
                     "crop_ratio", "gamma", "lr_grid", "real_lr"), POS),
    **dict.fromkeys(("flip_p", "label_smoothing", "soft_fraction", "alpha", "shift", "cutout", "weight",
                     "warmup_decay", "crop_scale", "ars_gamma"), UNIT),
    **dict.fromkeys(("momentum", "betas"), "[0,1)"),
    "top1": "[0,100]",
}
FREE = ("seed", "split_seed", "seeds", "mean", "scores", "priors", "std_ddof")  # any value (std_ddof: 0 or 1, checked by its group)


def in_range(value: Any, spec: str) -> bool:
    if spec.startswith(">="):
        return value >= float(spec[2:])
    if spec.startswith(">"):
        return value > float(spec[1:])
    lo, hi = (float(x) for x in spec[1:-1].split(","))
    return (lo <= value if spec[0] == "[" else lo < value) and (value <= hi if spec[-1] == "]" else value < hi)


# what each range means, and a value the user can type in the fix
_MEANING = {COUNT: ("a positive integer", "1 or more"), NONNEG: ("0 or more", "0 or more"),
            POS: ("greater than 0", "a value > 0"), UNIT: ("between 0 and 1", "a value in [0, 1]"),
            "[0,1)": ("in [0, 1)", "a value in [0, 1)"), "[0,100]": ("a percentage", "a value in [0, 100]")}


def range_message(key: str, shown: Any, spec: str, each: bool = False) -> str:
    meaning, fix = _MEANING[spec]
    return f"{key}={shown} must be {'each ' if each else ''}{meaning}; fix: {key}={fix}"


def check_ranges(obj: Any, where: str) -> None:
    """Every field of a built config dataclass (recursively) whose name has a RANGES entry: the value, or each
    element of a list of numbers, in range; `auto` and null (where a key allows them) pass."""
    from dataclasses import fields, is_dataclass

    for f in fields(obj):
        value, key = getattr(obj, f.name), f"{where}.{f.name}" if where else f.name
        if is_dataclass(value):
            check_ranges(value, key)
            continue
        spec = RANGES.get(f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if spec is None or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        bad = [v for v in values if not in_range(v, spec)]
        if bad:
            shown = value if isinstance(value, (list, tuple)) else bad[0]
            raise ConfigError(range_message(key, shown, spec, each=values is value))
        if f.name == "crop_scale" and len(values) == 2 and values[0] > values[1]:
            raise ConfigError(f"{key}={value}: the smaller scale comes first; fix: {key}=[{values[1]}, {values[0]}]")
