"""The papers' students and teachers as their code builds them (models/official.py), and torchvision weights
named by enum."""
import pytest
import torch
import torch.nn as nn

from hald.models import build_backbone
from hald.models.build import load_teacher, torchvision_weights


def _bn(net):
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("name, size, n_bn", [("resnet18_cifar", 64, 20), ("resnet50_cifar", 64, 53),
                                              ("mobilenetv2_cifar", 64, 52), ("shufflenetv2_cifar", 64, 56),
                                              ("densenet121_cifar", 64, 120), ("resnet18_modified", 64, 20),
                                              ("resnet18_tv", 224, 20)])
def test_official_backbones_build_run_and_keep_the_resolution(name, size, n_bn):
    net = build_backbone(name, 200, 3, size)
    assert net(torch.randn(2, 3, size, size)).shape == (2, 200)
    assert len(_bn(net)) == n_bn  # DenseNet-121: 120 BN layers, as CV-DD's (its BN loss weight)
    if size == 64:  # CIFAR-style: no stride before the first block
        first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        assert first.stride == (1, 1) and first.kernel_size == (3, 3)


def test_default_init_is_pytorchs_not_timms():
    torch.manual_seed(0)
    ours, timms = build_backbone("resnet18_cifar", 10, 3, 32), build_backbone("resnet18_small", 10, 3, 32)
    assert all(torch.all(b.weight == 1) for b in _bn(ours))  # no zero-init of the last BN of a block
    assert any(torch.all(b.weight == 0) for b in _bn(timms))  # timm's zero_init_last
    conv = ours.layer1[0].conv1.weight
    bound = 1 / (conv[0].numel() ** 0.5)  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert conv.abs().max() <= bound + 1e-6
    tv = build_backbone("resnet18_tv", 10, 3, 224)
    assert all(torch.all(b.weight == 1) for b in _bn(tv))


def test_torchvision_weights_are_named(monkeypatch):
    import torchvision

    assert torchvision_weights("torchvision:IMAGENET1K_V1") == "IMAGENET1K_V1"
    for bad in ("torchvision", "torchvision:", "timm:x"):
        with pytest.raises(ValueError, match="IMAGENET1K_V1"):
            torchvision_weights(bad)
    seen = {}
    monkeypatch.setattr(torchvision.models, "get_model",
                        lambda name, weights=None: seen.update(name=name, weights=weights) or nn.Linear(1, 1))
    load_teacher("resnet50", 1000, 3, 224, pretrained="torchvision:IMAGENET1K_V1")
    assert seen == {"name": "resnet50", "weights": "IMAGENET1K_V1"}  # not DEFAULT (= V2 for ResNet-50)


def test_paper_presets_never_ask_for_default_weights(tmp_path):
    from conftest import ROOT, compose

    for p in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
        cfg = compose([f"experiment={p.stem}"], tmp_path)
        for where in (cfg.teacher, cfg.distill.get("pool") or {}):
            if where.get("pretrained"):
                assert torchvision_weights(where.pretrained) == "IMAGENET1K_V1", p.stem
