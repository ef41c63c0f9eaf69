"""The HALD code's [lr, eta] table (hyper.yaml) for the paper datasets, keyed by dataset, student, ipc."""
from __future__ import annotations

# (dataset, model family) -> {ipc: (lr, eta)}; "*" = any other ipc
LR_ETA: dict[tuple[str, str], dict] = {
    ("cifar100", "R18"): {1: (5e-4, 2), 10: (1e-3, 2), 50: (1e-3, 1)},
    ("cifar100", "R50"): {1: (1e-3, 1), 10: (1e-3, 2), 50: (1e-3, 1)},
    ("cifar100", "R101"): {1: (5e-4, 1), 10: (5e-4, 1), 50: (5e-4, 1)},
    ("tiny_imagenet", "R18"): {1: (1e-3, 2), 10: (1e-3, 2), 50: (1e-3, 1)},
    ("tiny_imagenet", "R50"): {1: (5e-4, 2), 10: (5e-4, 2), 50: (5e-4, 1)},
    ("tiny_imagenet", "R101"): {1: (5e-4, 2), 10: (5e-4, 2), 50: (5e-4, 1)},
    ("imagewoof", "R18"): {1: (5e-4, 2), 10: (5e-4, 1), 50: (1e-3, 2)},
    ("imagewoof", "R50"): {1: (5e-4, 2), 10: (5e-3, 1), 50: (5e-4, 1)},
    ("imagewoof", "R101"): {1: (1e-3, 1), 10: (5e-4, 2), 50: (5e-4, 1)},
    ("imagenette", "R18"): {1: (5e-4, 2), 10: (5e-4, 1), 50: (5e-4, 2)},
    ("imagenette", "R50"): {1: (5e-4, 2), 10: (5e-4, 1), 50: (5e-4, 1)},
    ("imagenette", "R101"): {1: (5e-4, 2), 10: (5e-4, 2), 50: (1e-3, 2)},
    ("imagenet1k", "R18"): {1: (1e-3, 2), 10: (1e-3, 2), 50: (1e-3, 1), "*": (1e-3, 2)},
    ("imagenet1k", "R50"): {1: (5e-4, 2), 10: (1e-3, 2), 50: (1e-3, 1)},
    ("imagenet1k", "R101"): {1: (3.5e-3, 2), 10: (1e-3, 2), 50: (5e-4, 1)},
    ("imagenet1k", "MobileNetV2"): {10: (1e-3, 2), 50: (1e-3, 2), "*": (1e-3, 2)},
    ("imagenet1k", "DenseNet121"): {10: (1e-3, 2), 50: (1e-3, 2), "*": (1e-3, 2)},
}


def family(model_name: str) -> str:
    n = model_name.lower()
    for key, fam in (("resnet101", "R101"), ("resnet50", "R50"), ("resnet18", "R18"),
                     ("mobilenetv2", "MobileNetV2"), ("mobilenet_v2", "MobileNetV2"), ("densenet121", "DenseNet121")):
        if key in n:
            return fam
    return model_name


def paper_lr_eta(dataset: str, model_name: str, ipc: int) -> tuple[float, float] | None:
    """(lr, eta) from the table, or None when the paper has no entry for this combination."""
    row = LR_ETA.get((dataset, family(model_name)))
    if row is None:
        return None
    return row.get(ipc, row.get("*"))
