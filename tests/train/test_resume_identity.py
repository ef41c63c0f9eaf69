"""train.resume=true continues only the same run (train/identity.py): a checkpoint knows what it is of."""
from pathlib import Path

import pytest
import torch

from hald import pipeline
from hald.errors import ConfigError
from hald.train.identity import STATE_KEY, changes, check_resume, config_identity, flatten
from conftest import compose


def test_identity_keeps_what_trains_and_drops_where_files_go(tmp_path):
    a = config_identity(compose(["slc=50"], tmp_path))
    b = config_identity(compose(["slc=20", "train.num_workers=3", "logger=none", "train.resume=true",
                                 "trainer.enable_progress_bar=false", "evaluate=fair"], tmp_path))
    assert changes(a, b) == {"slc": (50, 20)}
    assert not any(k.startswith(("paths.", "logger", "evaluate.")) for k in a)
    assert "optimizer.lr" in a and "train.epochs" in a and "labels.temperature" in a and "seed" in a
    assert flatten({"a": {"b": [1, 2]}, "c": 3}) == {"a.b": [1, 2], "c": 3}


def test_check_resume_names_the_changed_keys_and_accepts_only_listed_ones(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    old = {"config": {"slc": 50, "optimizer.lr": 0.001, "train.epochs": 300}}
    new = {"config": {"slc": 20, "optimizer.lr": 0.001, "train.epochs": 400}}
    with pytest.raises(ConfigError, match=r"slc 50 -> 20, train.epochs 300 -> 400\); fix: .*"
                                          r"train.resume_across=\[slc,train.epochs\]"):
        check_resume(old, new, "config", [], ckpt)
    with pytest.raises(ConfigError, match=r"\(slc 50 -> 20\)"):
        check_resume(old, new, "config", ["train.epochs"], ckpt)
    assert check_resume(old, new, "config", ["slc", "train.epochs"], ckpt) == {"slc": (50, 20),
                                                                                 "train.epochs": (300, 400)}
    assert check_resume(old, new, "config", ["*"], ckpt) == {"slc": (50, 20), "train.epochs": (300, 400)}
    assert check_resume(old, old, "config", [], ckpt) == {}
    with pytest.raises(ConfigError, match=r"does not record what run.*resume_across=\['\*'\]"):
        check_resume(None, new, "config", [], ckpt)


def relabel_dirs(cfg) -> list[str]:
    return sorted(p.name for p in (Path(cfg.paths.cache_dir) / "relabel").glob("[!.]*"))


def test_resume_with_another_slc_or_lr_stops_before_any_stage_and_resume_across_continues(fast_cfg):
    first = fast_cfg("train.epochs=2")
    pipeline.run(first)
    stores = relabel_dirs(first)
    for change, shown in (("slc=4", "slc 8 -> 4"), ("optimizer.lr=0.002", "optimizer.lr auto -> 0.002"),
                          ("train.epochs=3", "train.epochs 2 -> 3")):
        with pytest.raises(ConfigError, match=f"checkpoint of another run \\({shown}\\)"):
            pipeline.run(fast_cfg("train.epochs=2", "train.resume=true", change))
        assert relabel_dirs(first) == stores  # nothing built for the other run
    same = pipeline.run(fast_cfg("train.epochs=2", "train.resume=true"))
    assert same["resumed"] == {"from_epoch": 1, "across": {}}  # the finished run: nothing to train, same result
    more = pipeline.run(fast_cfg("train.epochs=3", "train.resume=true", "train.resume_across=[train.epochs]"))
    assert more["resumed"] == {"from_epoch": 1, "across": {"train.epochs": [2, 3]}}
    assert [e["epoch"] for e in more["eval_log"]][-1] == 2  # trained on to the new last epoch


def test_a_checkpoint_that_does_not_say_what_it_is_of_is_refused_unless_asked(fast_cfg):
    cfg = fast_cfg("train.epochs=2")
    pipeline.run(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    del state[STATE_KEY]["identity"]  # as an older hald wrote it
    torch.save(state, ckpt)
    with pytest.raises(ConfigError, match="does not record what run it is of"):
        pipeline.run(fast_cfg("train.epochs=2", "train.resume=true"))
    out = pipeline.run(fast_cfg("train.epochs=2", "train.resume=true", "train.resume_across=['*']"))
    assert out["resumed"]["across"] == {"identity": ["unknown (an older checkpoint)", "this run"]}
