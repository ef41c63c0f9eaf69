"""Build a backbone by name and move weights in and out of artifact directories."""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from hald.artifacts import atomic_write

# Models whose constructor needs the input side (the ConvNet's linear head depends on it).
_NEEDS_IMG_SIZE = ("convnet",)


def backbone_kwargs(name: str, num_classes: int, in_chans: int, img_size: int) -> dict[str, Any]:
    """The `timm.create_model(name, **kwargs)` arguments of a backbone: what an exported student records, so
    timm alone rebuilds it outside hald."""
    kwargs: dict[str, Any] = {"num_classes": int(num_classes), "in_chans": int(in_chans)}
    if name.startswith(_NEEDS_IMG_SIZE):
        kwargs["img_size"] = int(img_size)
    return kwargs


def build_backbone(name: str, num_classes: int, in_chans: int, img_size: int, **kwargs: Any) -> nn.Module:
    """A randomly initialised backbone from timm's registry (including hald's small-resolution variants)."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown backbone '{name}'; similar names in timm's registry: {close}; "
                         f"fix: model.name=<one of timm.list_models()>")
    return timm.create_model(name, pretrained=False, **backbone_kwargs(name, num_classes, in_chans, img_size),
                             **kwargs)


def save_weights(model: nn.Module, path: Path) -> None:
    # safetensors: no pickle, so loading a teacher never executes code from the checkpoint.
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(state, str(tmp))


CONVERT = ("python -c \"import torch; from safetensors.torch import save_file; o = torch.load('{p}', "
           "weights_only=False); s = o.get('state_dict', o); save_file({{k.removeprefix('model.'): v.contiguous() "
           "for k, v in s.items()}}, '{p}.safetensors')\" (only for a file you trust), then pass {p}.safetensors")


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint a user passed in, never executing code from it: safetensors, or a torch file
    (a state dict, or a Lightning .ckpt whose state_dict has a 'model.' prefix) loaded with weights_only=True.
    Anything else stops with one line saying what the file is and how to convert it."""
    from hald.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"teacher checkpoint '{path}' does not exist; fix: pass an existing file")
    if path.stat().st_size == 0:
        raise ConfigError(f"teacher checkpoint '{path}' is empty (0 bytes); fix: pass the complete file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001  (SafetensorError, OSError: a damaged or foreign file)
            raise ConfigError(f"teacher checkpoint '{path}' is not a readable safetensors file "
                              f"({' '.join(str(e).split())[:100]}); fix: pass the teacher.safetensors squeeze wrote, "
                              f"or a torch state dict") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))  # torch's weights-only unpickler met a class or function
        if found:
            raise ConfigError(f"teacher checkpoint '{path}' holds pickled Python objects beside its tensors "
                              f"({found.group(1)}), which torch can only load by running code from the file "
                              f"(refused); fix: convert it once: " + CONVERT.format(p=path)) from None
        raise ConfigError(f"teacher checkpoint '{path}' is not a readable torch checkpoint (not a pickle torch "
                          f"reads); fix: pass a safetensors file or a torch state dict") from None
    except Exception as e:  # noqa: BLE001  (EOFError, RuntimeError from zip: text, garbage, truncated)
        raise ConfigError(f"teacher checkpoint '{path}' is not a readable torch checkpoint ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:80]}); fix: pass a safetensors file or a torch state "
                          f"dict (a truncated copy: copy it again)") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"teacher checkpoint '{path}' holds no tensors by name ({type(obj).__name__}); fix: pass "
                          f"a state dict (model.state_dict()), a Lightning .ckpt or a safetensors file")
    return {k.removeprefix("model."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a safetensors file, a Lightning .ckpt (state_dict with a 'model.' prefix) or a plain state dict."""
    path = Path(path)
    state = read_state(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint '{path}' does not fit the backbone: missing {list(missing)[:4]}, "
                         f"unexpected {list(unexpected)[:4]}; fix: check teacher.models / dataset.num_classes")
    return model


def torchvision_weights(pretrained: str) -> str:
    """`torchvision:IMAGENET1K_V1` -> "IMAGENET1K_V1": the weights enum is always named. A bare `torchvision`
    is refused: torchvision's DEFAULT is IMAGENET1K_V2 for ResNet-50 / MobileNetV2 (other numbers), while HALD
    and CV-DD load IMAGENET1K_V1 (`load_online_model` in both repos)."""
    kind, _, enum = str(pretrained).partition(":")
    if kind != "torchvision" or not enum:
        raise ValueError(f"teacher.pretrained={pretrained!r}; fix: torchvision:IMAGENET1K_V1 (the weights the papers "
                         f"used) or another torchvision weights name, e.g. torchvision:IMAGENET1K_V2")
    return enum


def load_teacher(name: str, num_classes: int, in_chans: int, img_size: int, checkpoint: str | None = None,
                 pretrained: str | None = None) -> nn.Module:
    """A teacher in eval mode: from a local checkpoint, or torchvision's ImageNet-1K weights named by their
    enum (`pretrained="torchvision:IMAGENET1K_V1"`; downloads once)."""
    if pretrained:
        import torchvision

        enum = torchvision_weights(pretrained)
        if num_classes != 1000:
            raise ValueError(f"torchvision pretrained weights are ImageNet-1K (1000 classes), dataset has "
                             f"{num_classes}; fix: train teachers with squeeze or pass teacher.checkpoints")
        model = torchvision.models.get_model(name, weights=enum)
    else:
        model = build_backbone(name, num_classes, in_chans, img_size)
        if checkpoint is not None:
            load_weights(model, Path(checkpoint))
            check_finite(model, f"teacher checkpoint '{checkpoint}'")
    return model.eval()


def check_finite(model: nn.Module, what: str) -> None:
    """Weights with NaN or inf would label everything NaN; refused before they are used (or saved)."""
    from hald.errors import ConfigError

    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ConfigError(f"{what} has non-finite values in {bad[0]} ({len(bad)} tensor(s)); fix: pass an intact "
                          f"checkpoint (or retrain the teacher)")


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a checkpoint without loading its data where the format allows (safetensors)."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file() and path.stat().st_size > 0:
        from safetensors import safe_open

        try:
            f = safe_open(str(path), framework="pt")
        except Exception:  # noqa: BLE001  (not safetensors: read_state says so in one line)
            return {k: tuple(v.shape) for k, v in read_state(path).items()}
        with f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return {k: tuple(v.shape) for k, v in read_state(path).items()}


def check_checkpoint(name: str, path: Path, dataset: Any, where: str = "teacher") -> None:
    """Pre-flight: the checkpoint fits `name` built for this dataset (class count first), and a checkpoint made
    by squeeze (its manifest beside it) was trained on this dataset."""
    import json

    from hald.errors import ConfigError

    path, nc = Path(path), int(dataset["num_classes"])
    manifest = path.parent / "manifest.json"
    if manifest.is_file():
        made = json.loads(manifest.read_text())
        other = ((made.get("config") or {}).get("dataset") or {}).get("name")
        if made.get("stage") == "squeeze" and other and other != dataset["name"]:
            raise ConfigError(f"teacher checkpoint '{path}' was trained on {other} (its manifest), this run's "
                              f"dataset is {dataset['name']}; fix: {where}.checkpoints=[a teacher of {dataset['name']}]")
    with torch.device("meta"):
        net = build_backbone(name, nc, int(dataset["channels"]), int(dataset["input_size"]))
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    have = checkpoint_shapes(path)
    wrong = [(k, have[k], want[k]) for k in want if k in have and have[k] != want[k]]
    head = [(k, h, w) for k, h, w in wrong if len(w) and w[0] == nc and h[0] != nc and k.endswith(("weight", "bias"))]
    if head:
        raise ConfigError(f"teacher checkpoint '{path}' has {head[-1][1][0]} output classes, dataset "
                          f"{dataset['name']} has {nc}; fix: {where}.checkpoints=[a teacher trained on these "
                          f"{nc} classes] (or the dataset it was trained on)")
    if wrong:
        k, h, w = wrong[0]
        raise ConfigError(f"teacher checkpoint '{path}' does not fit {name}: '{k}' is {list(h)}, the model needs "
                          f"{list(w)}; fix: {where}.models=[the checkpoint's architecture]")
    missing = [k for k in want if k not in have]
    if missing:
        raise ConfigError(f"teacher checkpoint '{path}' lacks {len(missing)} tensors of {name} (e.g. "
                          f"'{missing[0]}'); fix: {where}.models=[the checkpoint's architecture]")
