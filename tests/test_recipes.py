"""The research surface (docs/architecture.md, "Where to add things"): each recipe is one new Python file plus
one config file, in a directory of the user's own, and runs end to end on mnist5k without touching hald.

Each test writes a toy plugin module and its config into tmp_path, puts the module on sys.path, points Hydra's
search path at the config dir and runs the pipeline with `plugins=[module]`, exactly as a user would
(`python src/run.py plugins=[mine] hydra.searchpath=[file://DIR/conf] ...`)."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import FAST, compose
from hald import pipeline
from hald.errors import InputError
from hald.pipeline.cache import training_identity


def plugin(tmp_path: Path, module: str, code: str, configs: dict[str, str]) -> list[str]:
    """Write `module`.py and conf files (group/name.yaml -> text); the overrides that load them."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(code))
    for rel, text in configs.items():
        path = tmp_path / "conf" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    sys.path.insert(0, str(tmp_path))
    return [f"plugins=[{module}]", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]


def run(tmp_path: Path, overrides: list[str]) -> dict:
    cfg = compose(FAST + overrides, tmp_path)
    out = pipeline.run(cfg)
    assert json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["top1"] == out["top1"]
    assert 0 <= out["top1"] <= 100
    return out


@pytest.fixture(autouse=True)
def clean_path():
    before = list(sys.path)
    yield
    sys.path[:] = before


def test_recipe_distill_method(tmp_path):
    """A method is a registered build function plus its record (real images it needs, cost, keys)."""
    loads = plugin(tmp_path, "toy_method", '''
        from dataclasses import dataclass
        from pathlib import Path

        import torch

        from hald.data.distilled import write_imagefolder
        from hald.distill import Cost, register


        @dataclass
        class ToyMeanConfig:
            method: str = "toy_mean"
            ipc: int = 1
            seed: int = 0
            group: int = 5


        def real_images(dcfg, dataset):
            return int(dcfg["ipc"]) * int(dcfg["group"])


        def cost(dcfg, dataset, ipc):
            return Cost("images averaged")


        @register("toy_mean", real_images=real_images, cost=cost, config=ToyMeanConfig)
        def build(source, dataset, out_dir, ipc, group, **_):
            """Each distilled image: the pixel mean of `group` real images of its class."""
            imgs, ys = [], []
            for c in range(int(dataset["num_classes"])):
                idx = [i for i, t in enumerate(source.targets) if t == c][: ipc * group]
                for k in range(ipc):
                    part = torch.stack([source[i][0] for i in idx[k * group:(k + 1) * group]]).float()
                    imgs.append(part.mean(0).round().to(torch.uint8))
                    ys.append(c)
            write_imagefolder(Path(out_dir) / "images", torch.stack(imgs), torch.tensor(ys))
            return {"method": "toy_mean", "ipc": ipc, "group": group, "images_dir": "images"}
    ''', {"distill/toy_mean.yaml": '''
        method: toy_mean
        ipc: ${ipc}
        seed: ${seed}
        group: 5
    '''})
    out = run(tmp_path, [*loads, "distill=toy_mean"])
    assert out["distill"] == "toy_mean" and out["ipc"] == 4
    manifest = json.loads((Path(out["images"]).parent / "manifest.json").read_text())
    assert manifest["group"] == 5 and manifest["stage"] == "distill"
    # the record's real_images reaches pre-flight: 4 x 1000 images per class stop the run before any work
    with pytest.raises(InputError, match="needs 4000 real training images"):
        pipeline.run(compose(FAST + [*loads, "distill=toy_mean", "distill.group=1000"], tmp_path))
    with pytest.raises(InputError, match="distill.grup"):  # its config dataclass is its schema
        pipeline.run(compose(FAST + [*loads, "distill=toy_mean", "+distill.grup=3"], tmp_path))


def test_recipe_soft_loss(tmp_path):
    """A soft loss is a callable (logits, target) -> loss, injected into the soft phase by a student config."""
    loads = plugin(tmp_path, "toy_loss", '''
        import torch

        CALLS = []


        class ProbMSE:
            """Squared error between the student's and the stored probabilities (x 100 for scale)."""

            def __init__(self, temperature, t2=True):
                self.temperature = float(temperature)

            def __call__(self, logits, target):
                CALLS.append(len(logits))
                return 100 * ((torch.softmax(logits / self.temperature, 1) - target) ** 2).sum(1).mean()
    ''', {"student/mse.yaml": '''
        defaults:
          - default
          - _self_
        phases:
          soft:
            loss:
              _target_: toy_loss.ProbMSE
    '''})
    out = run(tmp_path, [*loads, "student=mse"])
    import toy_loss

    assert toy_loss.CALLS and out["phase_audit"]
    mse, default = compose(FAST + [*loads, "student=mse"], tmp_path), compose(FAST, tmp_path)
    assert training_identity(mse) != training_identity(default)  # cached derived students see the loss change


def test_recipe_phase_kind(tmp_path):
    """A phase kind subclasses Phase (here: stored crops, trained on the teacher's top class as a hard label)
    and is scheduled by name with schedule.segments."""
    loads = plugin(tmp_path, "toy_phase", '''
        import torch.nn.functional as F

        from hald.train.phases import SoftReplay


        class ArgmaxReplay(SoftReplay):
            """Replayed stored batches with the teacher's argmax as a one-hot target."""

            def training_loss(self, module, batch):
                onehot = F.one_hot(batch["target"].argmax(1), batch["target"].shape[1]).float()
                return self.loss(module.micro_forward(batch["x"]), onehot), int(batch["x"].shape[0])
    ''', {"student/argmax.yaml": '''
        defaults:
          - default
          - _self_
        phases:
          argmax:
            _target_: toy_phase.ArgmaxReplay
            batch_size: ${train.soft_batch_size}
            loss:
              _target_: hald.train.losses.SoftTargetCE
              temperature: 1.0
    '''})
    out = run(tmp_path, [*loads, "student=argmax", "schedule.segments=[[soft,2],[argmax,2]]"])
    assert out["phase_audit"] == {0: ["soft"], 1: ["soft"], 2: ["argmax"], 3: ["argmax"]}
    assert out["schedule"] == "soft 0-1 | argmax 2-3"
    with pytest.raises(InputError, match="mixed"):  # a schedule may only name phases that exist
        pipeline.run(compose(FAST + [*loads, "student=argmax", "schedule.segments=[[soft,2],[mixed,2]]"], tmp_path))


def test_recipe_codec(tmp_path):
    """A codec is a frozen dataclass with @register_codec and a conf/codec file (`# @package labels.codec`)."""
    loads = plugin(tmp_path, "toy_codec", '''
        from dataclasses import dataclass

        import torch

        from hald.labels.codecs import Codec, register_codec


        @register_codec("toy_top1")
        @dataclass(frozen=True)
        class Top1(Codec):
            """The top class (uint8 id) and its probability (fp16); the rest spread evenly."""
            floor: float = 0.0

            def row_bytes(self, num_classes):
                return 1 + 2

            def encode(self, p):
                v, i = p.float().max(1)
                return {"index": i.to(torch.uint8)[:, None], "value": v.to(torch.float16)[:, None]}

            def decode(self, t, num_classes):
                v = t["value"].float().clamp(max=1.0)
                out = ((1 - v) / (num_classes - 1)).repeat(1, num_classes)
                return out.scatter(1, t["index"].long(), v)
    ''', {"codec/toy_top1.yaml": '''
        # @package labels.codec
        name: toy_top1
        floor: 0.0
    '''})
    out = run(tmp_path, [*loads, "codec=toy_top1"])
    assert out["codec"].startswith("name=toy_top1")
    with pytest.raises(InputError, match="labels.codec.k"):  # a key the codec does not take
        pipeline.run(compose(FAST + [*loads, "codec=toy_top1", "+labels.codec.k=3"], tmp_path))


def test_recipe_dataset(tmp_path):
    """A dataset is a registered builder of an ImageSource plus conf/dataset/<name>.yaml (scikit-learn's
    8x8 digits here, which ship inside the package)."""
    loads = plugin(tmp_path, "toy_digits", '''
        import numpy as np
        from sklearn.datasets import load_digits

        from hald.data.sources.base import ArraySource
        from hald.data.sources.registry import register_source

        CLASSES = [str(d) for d in range(10)]


        @register_source("digits8", classes=lambda cfg: list(CLASSES))
        def build(cfg, split):
            d = load_digits()
            images = np.rint(d.images * (255 / 16)).astype(np.uint8)[:, None]
            test = np.arange(len(images)) % 5 == 0  # every fifth image is the test split
            keep = test if split == "test" else ~test
            return ArraySource("digits8", split, CLASSES, d.target[keep].astype(np.int64), images[keep])
    ''', {"dataset/digits8.yaml": '''
        name: digits8
        root: null
        download: false
        num_classes: 10
        channels: 1
        input_size: 8
        mean: [0.3]
        std: [0.4]
        test_resize: null
        flip_p: 0.0
    '''})
    out = run(tmp_path, [*loads, "dataset=digits8"])
    assert out["dataset"] == "digits8" and out["ipc"] == 4
