"""The image array (data/image_array.py): the mapped pixels are the decoded PNGs' pixels, train and relabel
exactly as they did, pickle by path, and a given folder's array is built once, reused, and never served stale."""
import logging
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from hald import artifacts
from hald.data import image_array
from hald.data.distilled import DistilledError, load_distilled, write_imagefolder
from hald.data.image_array import ARRAY, array_beside, open_array, write_array
from hald.data.replay import render_layout
from hald.data.sources import build_source, class_names
from hald.distill import folder as folder_mod
from hald.labels.budget import plan_store
from hald.labels.relabel import relabel
from hald.labels.store import open_store_for, shard_name
from hald.models import build_backbone
from hald.models.teachers import Committee
from conftest import cold, file_rss_mb, page_accounting

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def mnist(fast_cfg, tmp_path):
    """4 real mnist5k digits per class as a PNG set, its decoded form and its array (in an artifact dir)."""
    cfg = fast_cfg()
    source = build_source(cfg.dataset, "train")
    chosen = [i for c in range(10) for i in [j for j, t in enumerate(source.targets) if t == c][:4]]
    imgs = torch.stack([source[i][0] for i in chosen])
    art = tmp_path / "art"
    write_imagefolder(art / "images", imgs, torch.arange(10).repeat_interleave(4))
    classes = class_names(cfg.dataset)
    write_array(art, art / "images", classes, 1)
    return cfg, load_distilled(art / "images", classes, 1), open_array(art, art / "images", classes)


def test_mapped_pixels_are_the_decoded_ones(mnist):
    _, decoded, mapped = mnist
    assert mapped.array and not decoded.array
    assert torch.equal(mapped.images, decoded.images) and mapped.images.dtype == torch.uint8
    assert (mapped.sha256, mapped.files, mapped.classes) == (decoded.sha256, decoded.files, decoded.classes)
    assert torch.equal(mapped.targets, decoded.targets)
    assert mapped.images.is_contiguous(memory_format=torch.channels_last)
    assert render_layout(mapped.images).data_ptr() == mapped.images.data_ptr()  # no second copy
    assert isinstance(np.load(mapped.array, mmap_mode="r"), np.memmap)


def test_a_mapped_set_pickles_by_path(mnist):
    _, decoded, mapped = mnist
    blob = pickle.dumps(mapped)
    assert len(blob) < 4096 < mapped.images.nbytes  # the pixels never travel
    back = pickle.loads(blob)
    assert torch.equal(back.images, decoded.images) and back.sha256 == decoded.sha256
    assert len(pickle.dumps(decoded)) > decoded.images.nbytes  # an in-memory set still pickles its pixels


def test_relabel_and_training_from_the_map_are_byte_identical(mnist, tmp_path):
    cfg, decoded, mapped = mnist
    ds = {"name": "mnist5k", "input_size": 28, "mean": list(cfg.dataset.mean), "std": list(cfg.dataset.std),
          "channels": 1}
    lcfg = OmegaConf.create(dict(slc=8, batch_size=8, temperature=20.0, teacher_mode="eval", codec={"name": "float"},
                                 crop_scale=[0.08, 1.0], crop_ratio=[0.75, 4 / 3], flip_p=0.5, cutmix_alpha=1.0,
                                 seed=7, num_workers=0, groups_per_forward=1))
    plan = plan_store(lcfg.codec, 40, 4, 10, 8, 8, None, lambda *_: 0)
    stores = []
    for name, images in (("decoded", decoded), ("mapped", mapped)):
        torch.manual_seed(0)
        committee = Committee([build_backbone("convnet_w32", 10, 1, 28).eval()])
        out = tmp_path / name
        out.mkdir()
        fields = relabel(images, committee, plan, lcfg, ds, out, {"accelerator": "cpu", "devices": 1,
                                                                  "enable_progress_bar": False})
        artifacts.finish(out, "relabel", "k", lcfg, {}, **fields)
        stores.append(open_store_for(out, images))
    assert (stores[0].path / shard_name(0)).read_bytes() == (stores[1].path / shard_name(0)).read_bytes()
    one, m1 = fit(decoded, stores[0], ds)
    two, m2 = fit(mapped, stores[1], ds)
    assert one.epoch_paths == two.epoch_paths and m1 == m2 and "train/loss_soft" in m1
    for (name, x), y in zip(one.state_dict().items(), two.state_dict().values()):
        assert torch.equal(x, y), name


def fit(images, store, ds):
    """A short student training (soft, hard, soft epoch) on `images`; its module and last metrics."""
    import lightning as L
    from torch.utils.data import TensorDataset

    from hald.train.callbacks import PhaseScheduler
    from hald.train.datamodule import HALDDataModule
    from hald.train.module import StudentModule
    from hald.train.phases import standard_phases
    from hald.train.resume import StepSeed
    from hald.train.schedule import HARD, SOFT, Schedule

    schedule = Schedule(((SOFT, 1), (HARD, 1), (SOFT, 1)))
    torch.manual_seed(0)
    dm = HALDDataModule(images, store, ds, schedule, standard_phases(8, 8),
                        TensorDataset(images.images[:8], images.targets[:8]), seed=3, images_on_device=False)
    module = StudentModule(build_backbone("convnet_w32", 10, 1, 28), 10, schedule, dm.phases, lr=1e-3)
    trainer = L.Trainer(max_epochs=schedule.total_epochs, reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0,
                        callbacks=[PhaseScheduler(schedule), StepSeed(3)], logger=False, enable_checkpointing=False,
                        accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    return module, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_an_array_that_disagrees_with_its_metadata_is_refused(mnist, tmp_path):
    _, decoded, mapped = mnist
    art = tmp_path / "art"
    with pytest.raises(DistilledError, match="another dataset or class order"):
        open_array(art, art / "images", [str(i) for i in range(10)][::-1])
    np.save(art / ARRAY, np.zeros((40, 28, 27, 1), np.uint8))
    with pytest.raises(DistilledError, match=r"its metadata says uint8 \[40, 28, 28, 1\].*fix: delete") as e:
        open_array(art, art / "images")
    assert "\n" not in str(e.value)


def test_a_folder_is_decoded_once_then_mapped_and_a_change_is_never_served(mnist, tmp_path, monkeypatch, caplog):
    cfg, decoded, _ = mnist
    folder = tmp_path / "given"
    shutil.copytree(tmp_path / "art" / "images", folder)
    classes, cache = class_names(cfg.dataset), tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="hald"):
        first = folder_mod.folder_array(cache, folder, classes, 1, 28)
    assert "decoding" in caplog.text and first.array and torch.equal(first.images, decoded.images)
    [made] = [p for p in (cache / "images").iterdir() if p.is_dir()]
    assert artifacts.read_manifest(made)["images_sha256"] == decoded.sha256

    def no_decoding(*a, **kw):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folder_mod, "write_array", no_decoding)
    again = folder_mod.folder_array(cache, folder, classes, 1, 28)  # mapped, not decoded
    assert again.array == first.array and torch.equal(again.images, decoded.images)
    monkeypatch.undo()
    png = folder / decoded.files[0]
    png.write_bytes((tmp_path / "art" / "images" / decoded.files[1]).read_bytes())  # another image's bytes
    changed = folder_mod.folder_array(cache, folder, classes, 1, 28)
    assert changed.sha256 != decoded.sha256 and changed.array != first.array
    assert torch.equal(changed.images[0], decoded.images[1])
    # a change the stat fingerprint would not show (forged here): HALD_VERIFY=full recomputes the content
    monkeypatch.setattr(folder_mod, "fingerprint", lambda root: [])
    stale = folder_mod.folder_array(cache, folder, classes, 1, 28)
    png.write_bytes((tmp_path / "art" / "images" / decoded.files[2]).read_bytes())
    assert folder_mod.folder_array(cache, folder, classes, 1, 28).array == stale.array  # sampled: not rehashed
    monkeypatch.setenv("HALD_VERIFY", "full")
    with pytest.raises(DistilledError, match="changed since its array"):
        folder_mod.folder_array(cache, folder, classes, 1, 28)


def test_an_artifact_from_an_earlier_hald_gets_its_array_once(mnist, tmp_path, caplog):
    from hald.pipeline.cache import Context
    from hald.pipeline.stages import distilled_images

    cfg, decoded, _ = mnist
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "art" / "images", old / "images")  # PNGs only, as before the array
    assert not array_beside(old / "images") and array_beside(tmp_path / "art" / "images")
    with caplog.at_level(logging.INFO, logger="hald"):
        images = distilled_images(Context(cfg, tmp_path / "cache"), old / "images")
    assert "made by an earlier hald" in caplog.text and images.array
    assert torch.equal(images.images, decoded.images) and images.sha256 == decoded.sha256
    assert image_array.open_images(old / "images", images.classes, 1).array == ""  # analysis scripts: decoded


def test_a_mapped_tensor_pickles_by_path(tmp_path):
    """Recover's RDED init images reach its spawned ranks as a path, not as pixels."""
    init = (torch.rand(3, 2, 1, 28, 28) * 255).to(torch.uint8)
    shared = image_array.MappedTensor.write(init, tmp_path / "init.npy")
    blob = pickle.dumps(shared)
    assert len(blob) < 1024 < init.numel()
    back = pickle.loads(blob)
    assert torch.equal(back[[0, 2], 1], init[[0, 2], 1]) and back.shape == init.shape
    assert not [p for p in tmp_path.iterdir() if p.name != "init.npy"]  # no temp file left


@page_accounting
def test_reading_a_mapped_tensor_keeps_rss_flat(tmp_path):
    """Recover reads each init image once over a long run: what it read does not stay in its RSS."""
    init = torch.rand(100, 2, 3, 224, 224)  # 120 MB of float32
    shared = image_array.MappedTensor.write(init, tmp_path / "init.npy")
    start = file_rss_mb()
    for c in range(100):
        for k in range(2):
            assert torch.equal(shared[c, k], init[c, k])
    assert file_rss_mb() - start < 20


@page_accounting
def test_rendering_a_mapped_set_releases_its_pages_and_the_pixels_stay(tmp_path, monkeypatch):
    """Over an epoch every image is read: without release_pages the process's RSS grows by the whole array
    (shared file pages, but counted in every rank's RSS); with it by about one batch. Pixels are unchanged."""
    from hald.data.distilled import map_array, release_pages
    from hald.data.replay import Geometry, render

    n, size = 600, 224  # 90 MB
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    in_memory = map_array(tmp_path / "a.npy").clone(memory_format=torch.channels_last)
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])

    def epoch(images):
        grown, start = 0.0, file_rss_mb()
        for lo in range(0, n, 16):  # whole-image crops: every byte of the array is read
            idx = torch.arange(lo, min(lo + 16, n))
            g = Geometry(index=idx, box=torch.tensor([[0, 0, size, size]] * len(idx), dtype=torch.int16),
                         flip=torch.zeros(len(idx), dtype=torch.bool), mix_perm=torch.arange(len(idx), dtype=torch.int16),
                         mix_box=torch.zeros(4, dtype=torch.int16))
            x = render(images, g, size, mean, std)
            if lo == 0:
                assert torch.equal(x, render(in_memory, g, size, mean, std))
            grown = max(grown, file_rss_mb() - start)
        return grown

    import hald.data.replay as replay
    monkeypatch.setattr(replay, "release_pages", lambda images: None)  # the control: the code before
    kept = epoch(map_array(tmp_path / "a.npy"))
    monkeypatch.undo()
    released = epoch(map_array(tmp_path / "a.npy"))
    print(f"file RSS growth over an epoch: {kept:.0f} MB kept, {released:.0f} MB released")
    assert kept > 80, kept  # the control: the test can fail
    assert released < 40, released
    before = in_memory.clone()
    release_pages(in_memory)  # not a mapping: a no-op (MADV_DONTNEED would zero anonymous memory)
    assert torch.equal(in_memory, before)


@page_accounting
def test_a_batch_from_a_cold_cache_reads_its_images_not_the_read_ahead(tmp_path, monkeypatch):
    """A page fault on a mapping reads around the page (8 MB on this machine's disk): a random batch from a
    cold cache pulled ~45x its bytes. replay asks for exactly the batch's images first (distilled.prefetch)."""
    from hald.data.distilled import map_array
    from hald.data.replay import Geometry, render
    from hald_tools.page_cache import cached_mb

    n, size, b = 400, 224, 8  # a 60 MB array, 8 images of 147 KB
    rng = np.random.default_rng(0)
    path = tmp_path / "a.npy"
    np.save(path, rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())  # written pages are dirty until then, and dirty pages stay cached
    idx = torch.tensor(rng.choice(n, b, replace=False))
    g = Geometry(index=idx, box=torch.tensor([[10, 20, 150, 120]] * b, dtype=torch.int16),
                 flip=torch.zeros(b, dtype=torch.bool), mix_perm=torch.arange(b, dtype=torch.int16),
                 mix_box=torch.zeros(4, dtype=torch.int16))
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])
    want = render(map_array(path).clone(memory_format=torch.channels_last), g, 112, mean, std)

    def read_cold():
        cold([path])
        x = render(map_array(path), g, 112, mean, std)
        assert torch.equal(x, want)
        return cached_mb([path])

    import hald.data.replay as replay
    monkeypatch.setattr(replay, "prefetch", lambda images, index: None)  # the control: faults alone
    around = read_cold()
    monkeypatch.undo()
    asked = read_cold()
    batch = b * size * size * 3 / 2**20
    print(f"cold batch of {batch:.1f} MB of images: {around:.1f} MB read with faults alone, {asked:.1f} MB asked for")
    assert asked <= batch + b * 8 * 4096 / 2**20, asked  # its images, give or take the pages at their ends


@pytest.mark.parametrize("bad", ["fortran", "float", "truncated"])
def test_a_damaged_array_file_is_refused_in_one_line(tmp_path, bad):
    from hald.data.distilled import map_array

    a = np.zeros((4, 8, 8, 3), np.uint8)
    if bad == "fortran":
        a = np.asfortranarray(a)
    np.save(tmp_path / "a.npy", a.astype(np.float32) if bad == "float" else a)
    if bad == "truncated":
        with open(tmp_path / "a.npy", "r+b") as f:
            f.truncate(f.seek(0, 2) - 10)
    with pytest.raises(DistilledError, match=r"cannot be read.*fix: delete") as e:
        map_array(tmp_path / "a.npy")
    assert "\n" not in str(e.value)
