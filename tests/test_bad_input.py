"""Bad input stops before any training, with a one-line cause and fix; nothing written is damaged."""
import subprocess
import sys

import pytest
import torch

from hald import pipeline
from hald.data.distilled import DistilledError, load_distilled, write_imagefolder
from hald.errors import ConfigError, InputError
from hald.labels import relabel as relabel_mod
from hald.labels.budget import LabelBudgetError
from hald.labels.store import LabelStoreError

from conftest import ROOT


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and "fix:" in msg, msg
    return msg


@pytest.mark.parametrize("overrides, error, words", [
    (["slc=2"], LabelBudgetError, "below ipc"),
    (["slc=10"], LabelBudgetError, "slc=8 or slc=12"),
    (["train.soft_batch_size=12"], LabelStoreError, "multiple of the stored batch"),
    (["optimizer.on_phase_switch=maybe"], ConfigError, "on_phase_switch"),
    (["schedule.preset=S42"], ConfigError, "unknown schedule preset"),
    (["+colour=blue"], ConfigError, "unknown config key"),
    (["dataset=tiny_imagenet", "dataset.root=/nonexistent/tiny"], ValueError, "/nonexistent/tiny"),
    (["dataset=cifar10"], ValueError, "dataset.root"),
    (["teacher.checkpoints=[/nope.safetensors]"], ConfigError, "/nope.safetensors"),
    (["distill=folder"], ConfigError, "distill.path"),
    (["labels.groups_per_forward=0"], ConfigError, "groups_per_forward"),
])
def test_preflight_errors(fast_cfg, overrides, error, words):
    cfg = fast_cfg(*overrides)
    with pytest.raises(error) as e:
        pipeline.run(cfg)
    assert words in one_line(e.value)
    assert isinstance(e.value, InputError)
    assert not (pipeline.Path(cfg.paths.cache_dir) / "squeeze").exists()  # stopped before any work


def _folder(tmp_path, n_classes=10, per_class=2, size=28):
    imgs = (torch.rand(n_classes * per_class, 1, size, size) * 255).to(torch.uint8)
    write_imagefolder(tmp_path / "imgs", imgs, torch.arange(n_classes).repeat_interleave(per_class))
    return tmp_path / "imgs"


def test_distilled_folder_errors(tmp_path):
    classes = [str(i) for i in range(10)]
    root = _folder(tmp_path)
    assert load_distilled(root, classes, 1).ipc == 2
    with pytest.raises(DistilledError, match="11 classes"):
        load_distilled(root, classes + ["x"], 1)
    for p in (root / "00003").iterdir():
        p.unlink()
    with pytest.raises(DistilledError, match="no images"):
        load_distilled(root, classes, 1)
    (root / "00003" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DistilledError, match="cannot be read") as e:
        load_distilled(root, classes, 1)
    one_line(e.value)
    root2 = _folder(tmp_path / "b")
    from PIL import Image
    Image.new("L", (20, 20)).save(root2 / "00000" / "big.png")
    with pytest.raises(DistilledError, match="mixes image sizes"):
        load_distilled(root2, classes, 1)
    (root2 / "00000" / "big.png").unlink()
    (root2 / "00000").rename(root2 / "zebra")
    with pytest.raises(DistilledError, match="neither 5-digit"):
        load_distilled(root2, classes, 1)


def test_folder_with_wrong_class_count_stops_before_squeeze(fast_cfg, tmp_path):
    root = _folder(tmp_path, n_classes=9)
    cfg = fast_cfg("distill=folder", f"distill.path={root}")
    with pytest.raises(DistilledError, match="9 class folders"):
        pipeline.run(cfg)
    assert not (pipeline.Path(cfg.paths.cache_dir) / "squeeze").exists()


def test_store_for_other_images_is_rejected(fast_cfg, tmp_path):
    first = pipeline.run(fast_cfg("train.epochs=1"))
    other = _folder(tmp_path, per_class=4)
    with pytest.raises(LabelStoreError, match="images_sha256"):
        pipeline.run(fast_cfg("train.epochs=1", "distill=folder", f"distill.path={other}",
                              f"labels.store={first['store']}"))


def test_crash_mid_relabel_leaves_no_partial_artifact(fast_cfg, monkeypatch):
    cfg = fast_cfg("train.epochs=1", "slc=12")
    calls = {"n": 0}
    real = relabel_mod.write_shard

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(*a, **kw)

    monkeypatch.setattr(relabel_mod, "write_shard", flaky)
    with pytest.raises(OSError, match="simulated"):
        pipeline.run(cfg)
    cache = pipeline.Path(cfg.paths.cache_dir)
    # no store and no temp dir: only the work dir with the one finished, verified pass (resume unit), and the
    # builders' lock file (artifacts.exclusive), which stays by design
    [partial] = [p for p in (cache / "relabel").iterdir() if not p.name.endswith(".lock")]
    assert partial.name.startswith(".partial-")
    assert sorted(p.relative_to(partial).as_posix() for p in partial.rglob("*") if p.is_file()) == [
        "pass_0000.safetensors", "units/pass_0000.safetensors.json"]
    first_pass = (partial / "pass_0000.safetensors").stat().st_ino
    squeeze_manifest = next((cache / "squeeze").glob("*/manifest.json")).read_text()
    monkeypatch.undo()
    out = pipeline.run(cfg)  # the next run reuses the finished stages and pass 0, and completes
    assert out["sli"] == 3 and out["images_reused"]
    assert (pipeline.Path(out["store"]) / "pass_0000.safetensors").stat().st_ino == first_pass  # linked, not redone
    assert not partial.exists()
    assert next((cache / "squeeze").glob("*/manifest.json")).read_text() == squeeze_manifest


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "src/run.py", "slc=15", f"paths.cache_dir={tmp_path}",
                        f"hydra.run.dir={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "slc=10 or slc=20" in errors[0] and "fix:" in errors[0]
    assert "Traceback" not in r.stderr


def test_cli_unknown_key_is_refused_by_hydra(tmp_path):
    r = subprocess.run([sys.executable, "src/run.py", "colour=blue", f"hydra.run.dir={tmp_path}/run"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Could not override 'colour'" in r.stderr


class _RunsCode:
    """A pickle whose loading would run code (the classic malicious checkpoint): it touches a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name, content, words", [
    ("garbage.pt", b"\x00\x13\x37" * 50, "not a readable torch checkpoint"),
    ("notes.ckpt", b"this is a text file, not weights\n", "not a"),
    ("empty.pt", b"", "is empty (0 bytes)"),
    ("garbage.safetensors", b"\x00\x13\x37" * 50, "not a readable safetensors file"),
    ("empty.safetensors", b"", "is empty (0 bytes)"),
])
def test_a_teacher_checkpoint_that_is_not_one_is_refused_in_one_line(fast_cfg, tmp_path, name, content, words):
    ck = tmp_path / name
    ck.write_bytes(content)
    cfg = fast_cfg(f"teacher.checkpoints=[{ck}]")
    with pytest.raises(ConfigError) as e:
        pipeline.run(cfg)
    assert words in one_line(e.value) and str(ck) in str(e.value)
    assert not (pipeline.Path(cfg.paths.cache_dir) / "squeeze").exists()


def test_a_pickled_teacher_checkpoint_never_runs_its_code(fast_cfg, tmp_path):
    """A state dict with a pickled object beside its tensors: torch.load(weights_only=False) would run it."""
    from hald.models import build_backbone

    marker, ck = tmp_path / "pwned", tmp_path / "teacher.pt"
    torch.save({"state_dict": build_backbone("convnet_w32", 10, 1, 28).state_dict(), "extra": _RunsCode(marker)}, ck)
    cfg = fast_cfg(f"teacher.checkpoints=[{ck}]")
    with pytest.raises(ConfigError) as e:
        pipeline.run(cfg)
    msg = one_line(e.value)
    assert "pickled Python objects" in msg and "save_file" in msg and f"{ck}.safetensors" in msg
    assert not marker.exists()  # the file's code did not run


def test_a_plain_torch_state_dict_and_a_lightning_ckpt_are_read(tmp_path):
    from hald.models import build_backbone
    from hald.models.build import read_state

    net = build_backbone("convnet_w32", 10, 1, 28)
    torch.save(net.state_dict(), tmp_path / "a.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, tmp_path / "b.ckpt")
    for f in ("a.pt", "b.ckpt"):
        state = read_state(tmp_path / f)
        assert state.keys() == net.state_dict().keys() and all(torch.equal(state[k], v)
                                                               for k, v in net.state_dict().items())


# -- image modes and sizes of a set passed in (data/distilled.py) --------------------------------------------------
def _one_image_set(tmp_path, make, n_classes=10, suffix=".png"):
    """A distill=folder set whose every image is make(class) (a PIL image)."""
    from PIL import Image  # noqa: F401

    root = tmp_path / "set"
    for c in range(n_classes):
        (root / f"{c:05d}").mkdir(parents=True)
        make(c).save(root / f"{c:05d}" / f"00000{suffix}")
    return root


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    ramp = (np.arange(28 * 28).reshape(28, 28) * 83).astype(np.uint16)  # 0 .. 65,001
    root = _one_image_set(tmp_path, lambda c: Image.fromarray(ramp))
    assert Image.open(root / "00000" / "00000.png").mode == "I;16"
    got = load_distilled(root, [str(c) for c in range(10)], 1, 28).images[0, 0].numpy()
    want = np.round(ramp / 65535 * 255).astype(np.uint8)
    assert np.abs(got.astype(int) - want).max() == 0
    assert (got == 255).mean() < 0.01  # convert("L") made 99% of the pixels 255


@pytest.mark.parametrize("mode, words", [("I", "32-bit integer image"), ("F", "32-bit float image")])
def test_32_bit_images_have_no_agreed_range_and_are_refused(tmp_path, mode, words):
    import numpy as np
    from PIL import Image

    a = np.full((28, 28), 7, dtype=np.int32 if mode == "I" else np.float32)
    root = _one_image_set(tmp_path, lambda c: Image.fromarray(a), suffix=".tif")
    with pytest.raises(DistilledError) as e:
        load_distilled(root, [str(c) for c in range(10)], 1, 28)
    assert words in one_line(e.value)


def test_one_bit_and_palette_images_are_read_as_their_pixels(tmp_path):
    import numpy as np
    from PIL import Image

    bits = np.zeros((28, 28), bool)
    bits[::2] = True
    root = _one_image_set(tmp_path, lambda c: Image.fromarray(bits))
    got = load_distilled(root, [str(c) for c in range(10)], 1, 28).images[0, 0].numpy()
    assert set(np.unique(got)) == {0, 255} and (got[::2] == 255).all()
    rgb = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(16)
    root = _one_image_set(tmp_path / "p", lambda c: pal)
    got = load_distilled(root, [str(c) for c in range(10)], 3, 32).images[0].permute(1, 2, 0).numpy()
    assert (got == np.asarray(pal.convert("RGB"))).all()


def test_a_one_pixel_set_is_refused_and_a_huge_one_warned_about_with_numbers(tmp_path, caplog, monkeypatch):
    import logging

    from PIL import Image

    from hald.data import distilled

    root = _one_image_set(tmp_path / "tiny", lambda c: Image.new("L", (1, 1), 9))
    with pytest.raises(DistilledError) as e:
        load_distilled(root, [str(c) for c in range(10)], 1, 28)
    assert "is 1x1 px, the dataset's input size is 28" in one_line(e.value)
    root = _one_image_set(tmp_path / "big", lambda c: Image.new("L", (400, 300), 9))
    with caplog.at_level(logging.WARNING):
        load_distilled(root, [str(c) for c in range(10)], 1, 28)
    assert any("400x300 px, the dataset's input size is 28" in r.getMessage() and "0.00 GB decoded for 10 images"
               in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(distilled, "_available_bytes", lambda: 2_000_000)  # 2 MB free: 1.2 MB is over half
    with pytest.raises(DistilledError) as e:
        load_distilled(root, [str(c) for c in range(10)], 1, 28)
    assert "more than half of this machine's" in one_line(e.value)
    # The array writer streams one image at a time: the same set is mapped, not refused
    from hald.data.image_array import open_array, write_array

    (tmp_path / "art").mkdir()
    write_array(tmp_path / "art", root, [str(c) for c in range(10)], 1, 28)
    assert open_array(tmp_path / "art", root, [str(c) for c in range(10)]).images.shape == (10, 1, 300, 400)


def test_available_memory_counts_the_reclaimable_page_cache(tmp_path):
    """After a large array or store is read the page cache fills the memory: MemFree is small, MemAvailable is
    not, and decoding a set that fits must not be refused (it was: SC_AVPHYS_PAGES is MemFree)."""
    from hald.data.distilled import _available_bytes

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24641020 kB\nMemFree:         3012172 kB\nMemAvailable:   24142804 kB\n")
    assert _available_bytes(meminfo) == 24142804 * 1024
    assert _available_bytes(tmp_path / "missing") is None or _available_bytes(tmp_path / "missing") > 0


def test_imagefolder_with_num_classes_null_and_a_teacher_checkpoint_passes_preflight(tmp_path):
    """num_classes: null = the class folders found, resolved once before pre-flight (it was int(None))."""
    from PIL import Image

    from conftest import compose
    from hald.models import build_backbone, save_weights
    from hald.pipeline.preflight import preflight, resolve_class_count

    for split in ("train", "test"):
        for c in "abc":
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (32, 32), (i * 90, 0, 0)).save(tmp_path / split / c / f"{i}.png")
    save_weights(build_backbone("convnet_w32", 3, 3, 32), tmp_path / "t.safetensors")
    cfg = compose(["dataset=imagefolder", f"dataset.root={tmp_path}", "dataset.input_size=32",
                   "dataset.test_resize=null", "model=convnet_w32", "teacher.models=[convnet_w32]",
                   f"teacher.checkpoints=[{tmp_path}/t.safetensors]", "ipc=1", "slc=1"], tmp_path)
    assert cfg.dataset.num_classes is None
    resolved = resolve_class_count(cfg)
    assert resolved.dataset.num_classes == 3 and cfg.dataset.num_classes is None  # a copy
    preflight(resolved)
    save_weights(build_backbone("convnet_w32", 5, 3, 32), tmp_path / "t.safetensors")
    with pytest.raises(ConfigError, match="5 output classes"):
        preflight(resolve_class_count(cfg))
