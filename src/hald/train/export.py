"""The trained student outside Lightning: `student.safetensors` plus `student.json`, what rebuilds it.

Lightning's last.ckpt holds the student inside a pickled training state. A researcher who wants the model for
another tool gets plain weights and the four facts every loader needs (timm name and arguments, input size,
normalisation, class order), so timm alone rebuilds it:

    meta = json.load(open("student.json"))
    net = timm.create_model(meta["backbone"], **meta["timm_kwargs"])   # `import hald.models` first for hald's
    net.load_state_dict(safetensors.torch.load_file("student.safetensors"))  # small-resolution variants
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch.nn as nn

from hald.artifacts import write_json_atomic
from hald.models.build import backbone_kwargs, save_weights

FORMAT = "hald-student/1"


def export_student(net: nn.Module, out_dir: Path, backbone: str, dataset: Mapping[str, Any], classes: Sequence[str],
                   **extra: Any) -> Path:
    """Write `out_dir/student.safetensors` and `out_dir/student.json`; returns the weights' path."""
    out_dir = Path(out_dir)
    weights = out_dir / "student.safetensors"
    save_weights(net, weights)
    write_json_atomic(out_dir / "student.json", {
        "format": FORMAT, "backbone": backbone,
        "timm_kwargs": backbone_kwargs(backbone, len(classes), int(dataset["channels"]), int(dataset["input_size"])),
        "input_size": int(dataset["input_size"]), "channels": int(dataset["channels"]),
        "mean": [float(v) for v in dataset["mean"]], "std": [float(v) for v in dataset["std"]],
        "classes": [str(c) for c in classes], "weights": weights.name, **extra})
    return weights
