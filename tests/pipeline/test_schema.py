"""The config schema (hald/schema.py): every shipped config passes it, and every kind of wrong key or value
fails with the key named: top level, nested, `+added`, a method's own keys, a codec's, Lightning's Trainer's,
the student's `_target_` objects, and keys set by a derived run."""
from __future__ import annotations

import pytest

from conftest import FAST, ROOT, compose
from hald.errors import ConfigError
from hald.pipeline.derived import derive
from hald.schema import validate

GROUPS = ["dataset", "model", "teacher", "distill", "codec", "train", "trainer", "logger", "evaluate", "student"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))]
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# options that only make sense with another choice (pre-flight refuses them alone: tests/train/test_lpqld.py)
COMPANIONS = {("student", "lpqld"): ["codec=topk", "labels.codec.rest=renorm"]}


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_passes_the_schema(tmp_path, group, option):
    validate(compose([f"{group}={option}", *COMPANIONS.get((group, option), [])], tmp_path))


@pytest.mark.parametrize("name", PRESETS)
def test_every_experiment_preset_passes_the_schema(tmp_path, name):
    cfg = compose([f"experiment={name}"], tmp_path)
    if cfg.distill.method == "folder":  # a published set: its path is the user's
        cfg = compose([f"experiment={name}", "distill.path=/published/set"], tmp_path)
    validate(cfg)


@pytest.mark.parametrize("overrides, key", [
    (["+colour=blue"], "colour"),
    (["+train.fooo=1"], "train.fooo"),
    (["+teacher.squeeze.lrr=0.1"], "teacher.squeeze.lrr"),
    (["train.epochs=abc"], "train.epochs"),
    (["train.epochs=0"], "train.epochs"),
    (["labels.teacher_mode=bsssl"], "labels.teacher_mode"),
    (["schedule.pool=epoch"], "schedule.pool"),
    (["optimizer.lr=-1"], "optimizer.lr"),
    (["labels.temperature=0"], "labels.temperature"),
    (["distill=sre2l", "+distill.itrations=5"], "distill.itrations"),
    (["distill=cvdd", "+distill.pool.squeze.epochs=1"], "distill.pool.squeze"),
    (["codec=topk", "+labels.codec.bits=4"], "labels.codec.bits"),
    (["+trainer.max_epoch=3"], "trainer.max_epoch"),
    (["+student.phases.soft.loss.temprature=3"], "temprature"),
])
def test_a_wrong_key_or_value_is_named(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        validate(compose(FAST + overrides, tmp_path))
    assert "\n" not in str(e.value) and "fix:" in str(e.value)


def test_a_derived_run_only_changes_existing_keys_and_passes_the_schema(tmp_path):
    cfg = compose(FAST, tmp_path)
    assert derive(cfg, **{"train.epochs": 2}).train.epochs == 2 and cfg.train.epochs == 4
    with pytest.raises(KeyError, match="train.epoch'"):  # a misspelled key in derived code: never a new key
        derive(cfg, **{"train.epoch": 2})
    with pytest.raises(ConfigError, match="train.epochs"):
        derive(cfg, **{"train.epochs": -3})


# -- every numeric key has a range, and an out-of-range value fails with its key -----------------------------------
def _numeric_fields(schema, where):
    """(dotted key, field) of every field of a config dataclass tree whose type holds a number."""
    import re
    from dataclasses import MISSING, fields, is_dataclass

    out = []
    for f in fields(schema):
        key = f"{where}.{f.name}" if where else f.name
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if is_dataclass(default):
            out += _numeric_fields(type(default), key)
        elif re.search(r"\b(int|float)\b", str(f.type)) or (str(f.type) == "Any" and f.name in RANGES):
            out.append((key, f))
    return out


def _bad(spec, like):
    """A value just outside `spec`, shaped like the key's value (a list: one bad element)."""
    from hald.ranges import in_range

    for v in (0, -1, 1.5, 1.0, 101, 0.5):
        if not in_range(v, spec):
            return [v] * len(like) if isinstance(like, (list, tuple)) and like else v
    raise AssertionError(spec)


def _method_cases():
    from hald.distill import METHODS

    seen, out = set(), []
    for name, m in sorted(METHODS.items()):
        if m.config is None or m.config in seen:
            continue
        seen.add(m.config)
        out += [(f"distill={name}", f"distill.{f.name}", f) for _, f in _numeric_fields(m.config, "")
                if f.name not in ("ipc", "seed")]  # distill.ipc / seed interpolate the top level's
    return out


from hald.ranges import FREE, RANGES  # noqa: E402
from hald.schema import HaldConfig  # noqa: E402

TOP = [("", key, f) for key, f in _numeric_fields(HaldConfig, "")]
CASES = [c for c in TOP + _method_cases() if c[2].name not in FREE]


def test_every_numeric_key_of_the_schema_has_a_range_or_is_free():
    missing = sorted({key for _, key, f in TOP + _method_cases() if f.name not in RANGES and f.name not in FREE})
    assert not missing, f"numeric keys without a range in schema.RANGES: {missing}"


@pytest.mark.parametrize("choice, key, f", CASES, ids=[k for _, k, _ in CASES])
def test_an_out_of_range_value_of_every_numeric_key_stops_with_the_key_named(tmp_path, choice, key, f):
    from omegaconf import OmegaConf, open_dict

    cfg = compose(FAST + ([choice] if choice else []), tmp_path)
    current = OmegaConf.select(cfg, key, default=None)
    with open_dict(cfg):
        OmegaConf.update(cfg, key, _bad(RANGES[f.name], current), force_add=True)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + "="):
        validate(cfg)
