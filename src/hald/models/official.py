"""Backbones built the way the official code of the papers builds them, registered with timm by name.

The papers' students and teachers are not timm's: timm initialises convolutions with Kaiming-normal (fan-out)
and zero-initialises the last BatchNorm of every residual block, which changes what a 300-epoch training on
a few thousand images reaches. These names keep the papers' architectures *and* initialisation:

- `resnet18_cifar`, `resnet50_cifar`, `resnet101_cifar`: the CIFAR-style ResNet (3x3 stride-1 stem, no
  max-pool) of CV-DD / HALD `models/resnet.py` (`ResNet18(ncls)`), with PyTorch's own layer initialisation
  (every Conv/Linear/BatchNorm as its constructor leaves it: no Kaiming-normal, no zero-init of the last BN).
  Students and teachers at <= 64 px in HALD and CV-DD.
- `mobilenetv2_cifar`, `shufflenetv2_cifar`, `densenet121_cifar`: the other members of CV-DD's 64-px pool
  (`models/mobilenetv2.py`, `models/shufflenetv2.py` with net_size 0.5, `models/densenet.py` DenseNet121),
  CIFAR-style (stride-1 stems, no stem pooling), PyTorch's default initialisation.
- `resnet18_modified`: torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, torchvision's own
  initialisation: the Tiny-ImageNet teacher of SRe2L (`SRe2L/*small_dataset/README_TINY.md`) and RDED's
  `resnet18_modified` (`synthesize/utils.py` `load_model`).
- `resnet18_tv`, `resnet50_tv`: torchvision's ResNet-18 / -50 with the head sized to the classes (the 224-px
  students of HALD / CV-DD `validate/train_fkd.py`: `models.resnet18(pretrained=False)`), torchvision's own
  initialisation (Kaiming-normal convolutions, BN 1/0, no zero-init of the last BN).
- `densenet121_tv`, `shufflenet_v2_x1_0_tv`, `mobilenet_v2_tv`: torchvision's DenseNet-121, ShuffleNetV2 x1.0
  and MobileNetV2 with the head sized to the classes and torchvision's own initialisation: FADRM+'s ImageNette
  / ImageWoof pool (FADRM recover/utils_recover.py:261-287, `models.__dict__[name](num_classes=...)` loaded from
  offline checkpoints), trained here (experiment=fadrm_plus_nette, fadrm_plus_woof).

timm's initialisation stays available under the timm names (`resnet18`, `resnet18_small`, ...).
Remaining architectural differences to the official modules (all documented in docs/fidelity.md): timm's
MobileNetV2 lacks two parts of the official CIFAR MobileNetV2 (CV-DD / FADRM models/mobilenetv2.py): the first
block's 1x1 expansion conv (the official block always opens with one, even at expansion 1) and the 1x1
projection shortcuts of its stride-1 channel-changing blocks (2,480,072 against 2,540,312 parameters at 200
classes); DenseNet's stem is one 3x3 convolution with no BatchNorm, as in the official code.
"""
from __future__ import annotations

import torch.nn as nn
from timm.models import register_model
from timm.models.resnet import BasicBlock, Bottleneck

from hald.models.backbones import _model_kwargs, _small_resnet

_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def default_init(model: nn.Module) -> nn.Module:
    """Every Conv/Linear/BatchNorm re-initialised by its own `reset_parameters`: the network as PyTorch's
    layer constructors leave it (what the official CIFAR-style models get, having no init code)."""
    for m in model.modules():
        if isinstance(m, _LAYERS):
            m.reset_parameters()
    return model


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights here; pass a local checkpoint (teacher.checkpoints) "
                         f"or teacher.pretrained=torchvision:IMAGENET1K_V1 with a torchvision name")


def _stem(in_chans: int, out: int) -> nn.Conv2d:
    return nn.Conv2d(in_chans, out, kernel_size=3, stride=1, padding=1, bias=False)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    _no_pretrained("resnet18_cifar", pretrained)
    return default_init(_small_resnet(BasicBlock, [2, 2, 2, 2], False, kwargs))


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    _no_pretrained("resnet50_cifar", pretrained)
    return default_init(_small_resnet(Bottleneck, [3, 4, 6, 3], False, kwargs))


@register_model
def resnet101_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    _no_pretrained("resnet101_cifar", pretrained)
    return default_init(_small_resnet(Bottleneck, [3, 4, 23, 3], False, kwargs))


@register_model
def mobilenetv2_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    """MobileNetV2 (width 1.0) with ReLU, a stride-1 stem and a stride-1 second stage (the official CIFAR
    variant's two stride changes), PyTorch's default initialisation."""
    import timm

    _no_pretrained("mobilenetv2_cifar", pretrained)
    model = timm.create_model("mobilenetv2_100", pretrained=False, act_layer="relu", **_model_kwargs(kwargs))
    model.conv_stem.stride = (1, 1)
    model.blocks[1][0].conv_dw.stride = (1, 1)
    return default_init(model)


@register_model
def shufflenetv2_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    """ShuffleNetV2 x0.5 (stages of 4 / 8 / 4 units, 48 / 96 / 192 / 1024 channels) with a 3x3 stride-1 stem
    and no max-pool: CV-DD's `ShuffleNetV2(net_size=0.5)` for 32 / 64 px (torchvision's module, which has
    no init code of its own, so PyTorch's defaults as in the official one)."""
    import torchvision

    _no_pretrained("shufflenetv2_cifar", pretrained)
    kwargs = _model_kwargs(kwargs)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=int(kwargs.get("num_classes", 1000)))
    model.conv1[0] = _stem(int(kwargs.get("in_chans", 3)), 24)
    model.maxpool = nn.Identity()
    return model


@register_model
def densenet121_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    """DenseNet-121 (growth 32, blocks 6 / 12 / 24 / 16, compression 0.5) with one 3x3 stride-1 stem
    convolution of 64 channels and no stem norm or pooling, as CV-DD's CIFAR `DenseNet121`."""
    from timm.models.densenet import DenseNet

    _no_pretrained("densenet121_cifar", pretrained)
    kwargs = _model_kwargs(kwargs)
    model = DenseNet(growth_rate=32, block_config=(6, 12, 24, 16), **kwargs)
    model.features.conv0 = _stem(int(kwargs.get("in_chans", 3)), 64)
    model.features.norm0 = nn.Identity()
    model.features.pool0 = nn.Identity()
    return default_init(model)


def _torchvision(name: str, kwargs: dict) -> nn.Module:
    import torchvision

    kwargs = _model_kwargs(kwargs)
    model = torchvision.models.get_model(name, weights=None, num_classes=int(kwargs.get("num_classes", 1000)))
    if int(kwargs.get("in_chans", 3)) != 3:
        model.conv1 = nn.Conv2d(int(kwargs["in_chans"]), 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


@register_model
def resnet18_modified(pretrained: bool = False, **kwargs) -> nn.Module:
    _no_pretrained("resnet18_modified", pretrained)
    model = _torchvision("resnet18", kwargs)
    model.conv1 = _stem(int(kwargs.get("in_chans", 3)), 64)
    model.maxpool = nn.Identity()
    return model


@register_model
def resnet18_tv(pretrained: bool = False, **kwargs) -> nn.Module:
    _no_pretrained("resnet18_tv", pretrained)
    return _torchvision("resnet18", kwargs)


@register_model
def resnet50_tv(pretrained: bool = False, **kwargs) -> nn.Module:
    _no_pretrained("resnet50_tv", pretrained)
    return _torchvision("resnet50", kwargs)


def _torchvision_rgb(name: str, tv_name: str, kwargs: dict) -> nn.Module:
    """A torchvision architecture whose stem is not a ResNet's `conv1`: RGB input only."""
    if int(kwargs.get("in_chans", 3)) != 3:
        raise ValueError(f"{name} takes RGB input (3 channels), got in_chans={kwargs['in_chans']}; fix: an RGB "
                         f"dataset, or a ResNet (resnet18_tv)")
    return _torchvision(tv_name, kwargs)


@register_model
def densenet121_tv(pretrained: bool = False, **kwargs) -> nn.Module:
    _no_pretrained("densenet121_tv", pretrained)
    return _torchvision_rgb("densenet121_tv", "densenet121", kwargs)


@register_model
def shufflenet_v2_x1_0_tv(pretrained: bool = False, **kwargs) -> nn.Module:
    _no_pretrained("shufflenet_v2_x1_0_tv", pretrained)
    return _torchvision_rgb("shufflenet_v2_x1_0_tv", "shufflenet_v2_x1_0", kwargs)


@register_model
def mobilenet_v2_tv(pretrained: bool = False, **kwargs) -> nn.Module:
    _no_pretrained("mobilenet_v2_tv", pretrained)
    return _torchvision_rgb("mobilenet_v2_tv", "mobilenet_v2", kwargs)
