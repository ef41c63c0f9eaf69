"""Backbones, all reachable through timm's registry (`timm.create_model(name, ...)`).

Registered here:
- `convnet`, `convnet_w32`, `convnet_w64`: the dataset-distillation ConvNet (depth 3, conv3x3 -> BatchNorm ->
  ReLU -> 2x2 avg-pool per block, linear head), width 128 / 32 / 64. The small ones keep the 2-core default
  run fast; `convnet` is the field's ConvNetW128 (with BatchNorm instead of instance norm, so BSSL applies).
- `resnet18_small`, `resnet50_small`, `resnet101_small`: timm ResNets with a 3x3 stride-1 stem and no
  max-pool, the CIFAR/Tiny-ImageNet variant used by SRe2L, CV-DD and HALD for inputs of 64 px and below.
- `mobilenetv2_100_small`: timm MobileNetV2 with stride-1 stem and stride-1 second stage.
- `resnet10_w16_small`, `densenet_k12_tiny`: a quarter-width ResNet-10 and a three-block DenseNet-BC
  (growth rate 12), the CPU-sized committee members of `teacher=cvdd_pool` / `distill=cvdd` next to
  `convnet_w64` (each squeezes in about a minute on one core at 28 px).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models import register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet


class ConvNet(nn.Module):
    """Depth-d ConvNet; `img_size` fixes the flattened feature size of the linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 128, depth: int = 3,
                 img_size: int = 32, **_: object) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch, side = in_chans, img_size
        for _ in range(depth):
            layers += [nn.Conv2d(ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2)]
            ch, side = width, side // 2
        self.features = nn.Sequential(*layers)
        self.num_features = width * side * side
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def _convnet(width: int, pretrained: bool, kwargs: dict) -> ConvNet:
    if pretrained:
        raise ValueError("convnet has no pretrained weights; pass a local checkpoint instead (teacher.checkpoints)")
    return ConvNet(width=width, **kwargs)


@register_model
def convnet(pretrained: bool = False, **kwargs) -> ConvNet:
    return _convnet(128, pretrained, kwargs)


@register_model
def convnet_w64(pretrained: bool = False, **kwargs) -> ConvNet:
    return _convnet(64, pretrained, kwargs)


@register_model
def convnet_w32(pretrained: bool = False, **kwargs) -> ConvNet:
    return _convnet(32, pretrained, kwargs)


def _model_kwargs(kwargs: dict) -> dict:
    """Drop what timm's factory adds for pretrained-weight handling (these models have none) and img_size."""
    for k in ("img_size", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(k, None)
    return kwargs


def _small_resnet(block: type, layers: list[int], pretrained: bool, kwargs: dict, width: int = 64) -> ResNet:
    if pretrained:
        raise ValueError("small-resolution ResNets have no pretrained weights; pass a local checkpoint")
    kwargs = _model_kwargs(kwargs)
    in_chans = kwargs.get("in_chans", 3)
    if width != 64:
        # timm's plain stem is always 64 wide; its "deep" stem ends at 2 * stem_width channels, which sets
        # the first stage's input width. The deep stem itself is replaced below.
        kwargs.update(stem_type="deep", stem_width=width // 2, channels=tuple(width * 2 ** i for i in range(4)))
    model = ResNet(block=block, layers=layers, **kwargs)
    # Why: a 7x7/2 stem plus max-pool throws away 3/4 of a 32-px image before the first block.
    model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_model
def resnet18_small(pretrained: bool = False, **kwargs) -> ResNet:
    return _small_resnet(BasicBlock, [2, 2, 2, 2], pretrained, kwargs)


@register_model
def resnet50_small(pretrained: bool = False, **kwargs) -> ResNet:
    return _small_resnet(Bottleneck, [3, 4, 6, 3], pretrained, kwargs)


@register_model
def resnet101_small(pretrained: bool = False, **kwargs) -> ResNet:
    return _small_resnet(Bottleneck, [3, 4, 23, 3], pretrained, kwargs)


@register_model
def resnet10_w16_small(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-10 (one BasicBlock per stage) at a quarter width (16-128 channels): a committee member that
    trains in seconds per epoch on a CPU at 28 px."""
    return _small_resnet(BasicBlock, [1, 1, 1, 1], pretrained, kwargs, width=16)


@register_model
def densenet_k12_tiny(pretrained: bool = False, **kwargs) -> nn.Module:
    """DenseNet-BC, growth rate 12, three dense blocks of two layers, with a 3x3 stride-2 stem and no max-pool
    (28/32-px inputs reach the blocks at 14/16 px). CV-DD's pools include a DenseNet; timm's MobileNetV2 at
    half width reached only 25-59% top-1 on mnist5k with the bundled 6-epoch recipe, this one about 95%."""
    from timm.models.densenet import DenseNet

    if pretrained:
        raise ValueError("densenet_k12_tiny has no pretrained weights; pass a local checkpoint")
    kwargs = _model_kwargs(kwargs)
    model = DenseNet(growth_rate=12, block_config=(2, 2, 2), **kwargs)
    model.features.conv0 = nn.Conv2d(kwargs.get("in_chans", 3), 24, kernel_size=3, stride=2, padding=1, bias=False)
    model.features.pool0 = nn.Identity()
    return model


@register_model
def mobilenetv2_100_small(pretrained: bool = False, **kwargs) -> nn.Module:
    import timm

    if pretrained:
        raise ValueError("mobilenetv2_100_small has no pretrained weights; pass a local checkpoint")
    kwargs = _model_kwargs(kwargs)
    model = timm.create_model("mobilenetv2_100", pretrained=False, **kwargs)
    model.conv_stem.stride = (1, 1)
    model.blocks[1][0].conv_dw.stride = (1, 1)
    return model
