"""CIM's defining step as pure functions (distill/cim.py uses them): the mosaic of real anchors, its quadrant
views, the shared augmentation of anchors and views, the features at the observer's feature layer, and the
per-pair mean absolute feature difference (LINs-lab/CIM @ea71377; docs/fidelity.md "CIM")."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hald.distill.rded import stitch
from hald.errors import ConfigError


# -- the defining step -----------------------------------------------------------------------
def mosaic(anchors: torch.Tensor, ipc: int, factor: int = 2) -> torch.Tensor:
    """[factor^2 * ipc, C, H, W] anchors -> [ipc, C, H, W] mosaics: image j, tile q (row-major) = anchor
    q * ipc + j, nearest-downsampled to H / factor (CIM's `mix_images`; RDED's `stitch` places the tiles)."""
    size = anchors.shape[-1]
    t = size // factor
    return stitch(F.interpolate(anchors, size=(t, t), mode="nearest"), factor, size)


def quadrant_views(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """[B, C, H, W] -> [factor^2 * B, C, H, W]: tile q (row-major) of image j, bilinearly upsampled to H x W
    (align_corners False), at q * B + j, so view i is the view of anchor i (CIM's `decode_zoom`)."""
    b, c, h, w = x.shape
    th, tw = h // factor, w // factor
    tiles = x.reshape(b, c, factor, th, factor, tw).permute(2, 4, 0, 1, 3, 5).reshape(factor * factor * b, c, th, tw)
    return F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)


def cim_loss(features_views: torch.Tensor, features_real: torch.Tensor) -> torch.Tensor:
    """sum over pairs i of mean over feature dims d of |f(view_i)_d - f(real_i)_d| (CIM's "l1_mean")."""
    n = features_views.shape[0]
    return (features_views.reshape(n, -1) - features_real.reshape(n, -1)).abs().mean(dim=1).sum()


def shared_augment(x: torch.Tensor, flip_p: float = 0.5, shift: float = 0.125, cutout: float = 0.5) -> torch.Tensor:
    """One random draw for the whole batch (global torch RNG: seed it outside), differentiable, as CIM's
    DiffAug("crop_cutout_flip", batch=True): a horizontal flip with probability flip_p; a shift by an integer
    in [-round(shift * H), round(shift * H)] per axis, zero fill; a square of side round(cutout * H) centred at
    a point drawn in [0, H] (clipped at the border) set to 0. Zero is the mean colour: x is normalised."""
    h, w = x.shape[-2:]
    if flip_p > 0 and float(torch.rand(())) < flip_p:
        x = x.flip(-1)
    sh, sw = int(h * shift + 0.5), int(w * shift + 0.5)
    if sh or sw:
        dy, dx = int(torch.randint(-sh, sh + 1, ())), int(torch.randint(-sw, sw + 1, ()))
        x = F.pad(x, (sw, sw, sh, sh))[..., sh + dy:sh + dy + h, sw + dx:sw + dx + w]  # out[y] = in[y + dy] or 0
    ch, cw = int(h * cutout + 0.5), int(w * cutout + 0.5)
    if ch and cw:
        cy, cx = int(torch.randint(0, h + 1 - ch % 2, ())), int(torch.randint(0, w + 1 - cw % 2, ()))
        mask = torch.ones(h, w, dtype=x.dtype, device=x.device)
        mask[max(cy - ch // 2, 0):cy - ch // 2 + ch, max(cx - cw // 2, 0):cx - cw // 2 + cw] = 0
        x = x * mask
    return x


# -- the observer's features ----------------------------------------------------------------------------------
class _Reached(Exception):
    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value


def layer_input(net: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The input of module `layer` of net on x, flattened per image (CIM's hook on a child's input). The
    forward stops there: what follows cannot change the feature or its gradient."""
    module = dict(net.named_modules())[layer]

    def hook(_m, args):
        raise _Reached(args[0])

    handle = module.register_forward_pre_hook(hook)
    try:
        net(x)
    except _Reached as r:
        return r.value.flatten(1)
    finally:
        handle.remove()
    raise RuntimeError(f"cim: module '{layer}' of {type(net).__name__} was not reached by the forward pass")


def resolve_feature_layer(net: nn.Module, layer: str = "auto") -> str:
    """The module whose input is matched. auto = CIM's depth per architecture: a ResNet with the ImageNet stem
    (7x7/2 convolution + max-pool: torchvision's, timm's resnet18/50, resnet18_tv) -> `layer3`, i.e. the
    output of layer2 (its depth -4 on torchvision's ResNet-18, scripts/imagenet-1k/*_res.sh); anything else
    -> the classifier, i.e. the pooled penultimate feature (its -1 on resnet18_modified at 32 / 64 px) and
    a ConvNet's last block, flattened (its depth 3 on conv4 / 2 on conv3: the last block)."""
    modules = dict(net.named_modules())
    if layer != "auto":
        if layer not in modules or not layer:
            children = [n for n, _ in net.named_children()]
            raise ConfigError(f"distill.feature_layer={layer!r} is not a module of {type(net).__name__}; fix: auto, "
                              f"or a dotted module name such as one of {children}")
        return layer
    if isinstance(getattr(net, "maxpool", None), nn.MaxPool2d) and "layer3" in modules:
        return "layer3"
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    for name, m in modules.items():
        if name and head is not None and m is head:
            return name
    for name in ("fc", "head", "classifier"):
        if isinstance(modules.get(name), nn.Linear):
            return name
    raise ConfigError(f"distill.feature_layer=auto: no classifier found in {type(net).__name__}; fix: "
                      f"distill.feature_layer=<the module whose input is the feature>")
