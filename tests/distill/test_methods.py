"""Every registered method's record (distill/registry.py), over sorted(METHODS) as timm tests its registry: a
config file that names it and passes its schema, a cost the estimator can price, a real-image need pre-flight
can check, and a teacher pool exactly when it uses a teacher."""
from __future__ import annotations

from dataclasses import fields

import pytest
from omegaconf import OmegaConf

from conftest import FAST, ROOT, compose
from hald.distill import METHODS, Cost, method_of
from hald.errors import ConfigError
from hald.schema import validate

MNIST = {"name": "mnist5k", "num_classes": 10, "channels": 1, "input_size": 28, "mean": [0.1307], "std": [0.3081]}


def composed(name: str, tmp_path):
    extra = ["distill.path=/a/set"] if METHODS[name].given else []
    return compose(FAST + [f"distill={name}", *extra], tmp_path)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_a_config_that_passes_its_schema(tmp_path, name):
    assert (ROOT / "conf" / "distill" / f"{name}.yaml").is_file()
    cfg = composed(name, tmp_path)
    assert cfg.distill.method == name
    validate(cfg)
    m = method_of(name)
    assert m.config is not None and {f.name for f in fields(m.config)} >= set(cfg.distill)
    assert ("pool" in cfg.distill) == m.uses_teacher  # the teachers that enter the image key


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_prices_its_work_and_states_its_real_images(tmp_path, name):
    cfg = composed(name, tmp_path)
    dcfg = OmegaConf.to_container(cfg.distill, resolve=True)
    cost = method_of(name).cost(dcfg, MNIST, int(cfg.ipc))
    assert isinstance(cost, Cost) and cost.unit
    assert all(w.images >= 0 and w.units >= 0 for w in cost.work)
    assert (sum(w.images for w in cost.work) > 0) == method_of(name).uses_teacher  # a teacher's forwards
    need = method_of(name).real_images(dcfg, MNIST)
    assert isinstance(need, int) and 0 <= need <= 400  # mnist5k has 400 train images per digit (FAST: 50)


def test_an_unknown_method_names_the_registered_ones():
    with pytest.raises(ConfigError, match="cvdd") as e:
        method_of("sre3l")
    assert "fix:" in str(e.value)
