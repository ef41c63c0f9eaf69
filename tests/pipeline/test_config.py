"""Every config group option composes; every student backbone builds and runs a step."""
from pathlib import Path

import pytest
import torch

from conftest import FAST, ROOT, compose
from hald.models import build_backbone

GROUPS = ["dataset", "model", "teacher", "distill", "labels", "codec", "schedule", "train", "trainer", "compute", "logger",
          "experiment"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))]


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option, tmp_path):
    cfg = compose([f"{group}={option}"], tmp_path)
    for key in ("dataset", "model", "teacher", "distill", "labels", "schedule", "train", "trainer", "optimizer"):
        assert key in cfg
    assert cfg.labels.slc == cfg.slc


def test_defaults_are_the_documented_ones(tmp_path):
    cfg = compose([], tmp_path)
    assert (cfg.dataset.name, cfg.schedule.preset, cfg.ipc, cfg.slc) == ("mnist5k", "S6", 10, 50)
    assert (cfg.labels.temperature, cfg.labels.batch_size, cfg.hard_loss.label_smoothing) == (20, 16, 0.8)
    assert cfg.labels.teacher_mode == "eval" and cfg.labels.codec.dtype == "float16"


@pytest.mark.parametrize("name", sorted({p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")}))
def test_every_student_backbone_trains_a_step(name):
    size = 224 if name in ("resnet18", "resnet50") else 32
    net = build_backbone(name, num_classes=10, in_chans=3, img_size=size)
    x = torch.randn(2, 3, size, size)
    loss = net(x).logsumexp(1).mean()
    loss.backward()
    assert net(x).shape == (2, 10)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet19_tiny", 10, 3, 32)


def test_student_objects_are_instantiated_from_the_config_and_follow_its_groups(tmp_path):
    """conf/student: the LightningModule is built by Hydra, its values interpolated from the loss groups."""
    from hydra.utils import instantiate

    from hald.train.module import StudentModule
    from hald.train.schedule import make_schedule

    cfg = compose(["hard_loss.label_smoothing=0.3", "soft_loss.t2=false", "labels.temperature=4"], tmp_path)
    phases = instantiate(cfg.student.phases)
    module = instantiate(cfg.student.module)(net=build_backbone("convnet_w32", 10, 1, 28), num_classes=10,
                                             schedule=make_schedule("S6", 4), phases=phases, lr=0.01, eta=1.0)
    assert isinstance(module, StudentModule)
    hp = module.hparams
    soft, hard = phases["soft"], phases["hard"]
    assert (hard.label_smoothing, soft.loss.t2, soft.loss.temperature, hard.loss.temperature) == (0.3, False, 4, 4)
    assert list(hp.betas) == list(cfg.optimizer.betas) and hp.weight_decay == cfg.optimizer.weight_decay
    assert cfg.student.datamodule._target_ == "hald.train.datamodule.HALDDataModule"
