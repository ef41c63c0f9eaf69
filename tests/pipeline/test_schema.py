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
