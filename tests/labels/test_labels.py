"""Label store and relabel: replay fidelity, budgets, corruption and mismatch detection."""
import json
import struct

import pytest
import torch
from omegaconf import OmegaConf

from hald import artifacts
from hald.labels.store import open_store_for
from hald.train.phases import SoftReplayDataset
from hald.data.distilled import load_distilled, write_imagefolder
from hald.data.replay import render
from hald.labels.budget import LabelBudgetError, plan_passes, plan_store
from hald.labels.relabel import relabel
from hald.labels.store import LabelStore, LabelStoreError, store_bytes
from hald.models import build_backbone
from hald.models.teachers import Committee, batch_stat_bn, committee_weights

DS = {"name": "toy", "input_size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "channels": 3}
CLASSES = ["a", "b", "c"]


def labels_cfg(**kw):
    base = dict(slc=8, batch_size=5, temperature=20.0, teacher_mode="eval", codec={"name": "float"},
                crop_scale=[0.08, 1.0], crop_ratio=[0.75, 4 / 3], flip_p=0.5, cutmix_alpha=1.0, seed=7,
                num_workers=0, groups_per_forward=2)
    base.update(kw)
    return OmegaConf.create(base)


@pytest.fixture
def distilled(tmp_path):
    g = torch.Generator().manual_seed(0)
    imgs = (torch.rand(12, 3, 20, 20, generator=g) * 255).to(torch.uint8)  # 4 per class, 20 px sources
    write_imagefolder(tmp_path / "images", imgs, torch.arange(3).repeat_interleave(4))
    return load_distilled(tmp_path / "images", CLASSES, 3)


def teacher(seed=0):
    torch.manual_seed(seed)
    net = build_backbone("convnet_w32", 3, 3, 16)
    with torch.no_grad():  # non-trivial running statistics so eval and BSSL differ
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def make_store(tmp_path, distilled, committee, **kw):
    out = tmp_path / "store"
    out.mkdir()
    cfg = labels_cfg(**kw)
    plan = plan_store(cfg.codec, len(distilled), distilled.ipc, 3, cfg.batch_size, cfg.slc, None, lambda *_: 0)
    fields = relabel(distilled, committee, plan, cfg, DS, out, {"accelerator": "cpu", "devices": 1,
                                                                "enable_progress_bar": False})
    artifacts.finish(out, "relabel", "k", cfg, {}, **fields)
    return out


@pytest.mark.parametrize("mode", ["eval", "bssl"])
def test_replay_reproduces_stored_labels(tmp_path, distilled, mode):
    net = teacher()
    committee = Committee([net], mode=mode)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    store = open_store_for(make_store(tmp_path, distilled, committee, teacher_mode=mode), distilled)
    for k, v in net.state_dict().items():  # BSSL must leave running statistics untouched
        assert torch.equal(v, before[k]), k
    assert store.num_records == 2 * 3  # SLI = 8/4 = 2 passes of ceil(12/5) = 3 batches
    worst = 0.0
    for r in range(store.num_records):
        rec = store[r]
        x = render(distilled.images, rec.geometry, 16, torch.tensor(DS["mean"]), torch.tensor(DS["std"]))
        again = torch.softmax(committee(x) / 20.0, 1)
        worst = max(worst, (again - rec.labels).abs().max().item())
    assert worst <= 2 ** -11  # fp16 rounding of probabilities in [0, 1]
    # the training loader's replay gives the same pixels and labels
    ds = SoftReplayDataset(store, distilled.images, [[0, 1]], 16, DS["mean"], DS["std"])
    item = ds[0]
    x0 = render(distilled.images, store[0].geometry, 16, torch.tensor(DS["mean"]), torch.tensor(DS["std"]))
    assert torch.equal(item["x"][: len(x0)], x0)
    assert torch.equal(item["target"][: len(x0)], store[0].labels)


def test_replay_with_the_accelerators_kernel_stays_close_to_stored_labels(tmp_path, distilled, monkeypatch):
    """Rendering on an accelerator uses the float resize with the CPU's rounding (data/replay._resize); forced
    on the CPU here, the teacher's labels on its pixels stay close to the stored ones."""
    from hald.data import replay

    committee = Committee([teacher()], mode="eval")
    store = open_store_for(make_store(tmp_path, distilled, committee), distilled)
    cpu_resize = replay._resize
    monkeypatch.setattr(replay, "_resize", lambda crop, size, uint8_kernel=None: cpu_resize(crop, size, False))
    worst = 0.0
    for r in range(store.num_records):
        rec = store[r]
        x = render(distilled.images, rec.geometry, 16, torch.tensor(DS["mean"]), torch.tensor(DS["std"]))
        worst = max(worst, (torch.softmax(committee(x) / 20.0, 1) - rec.labels).abs().max().item())
    assert worst <= 1e-3


def test_store_of_another_format_version_is_refused(tmp_path, distilled, monkeypatch):
    """Format 2 stores labelled the float roi_align renderer's pixels: replaying them with this renderer would
    train on labels of other pixels."""
    from hald.labels import relabel as relabel_module
    from hald.labels.store import FORMAT_VERSION

    (tmp_path / "new").mkdir(), (tmp_path / "old").mkdir()
    manifest = LabelStore.open(make_store(tmp_path / "new", distilled, Committee([teacher()]))).manifest
    assert manifest["format_version"] == FORMAT_VERSION == 3 and "uint8" in manifest["crop"]["interpolation"]
    with monkeypatch.context() as m:  # a store as the previous hald wrote it
        m.setattr(relabel_module, "FORMAT_VERSION", 2)
        old = make_store(tmp_path / "old", distilled, Committee([teacher()]))
    with pytest.raises(LabelStoreError, match="format version 2, this hald reads 3; fix: relabel"):
        LabelStore.open(old)


def test_bssl_depends_on_batch_and_differs_from_eval():
    net = teacher()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        ev = net(x)
        with batch_stat_bn(net):
            b1 = net(x)
            b2 = net(x[:3])
        again = net(x)
    assert not torch.allclose(ev, b1, atol=1e-4)
    assert not torch.allclose(b1[:3], b2, atol=1e-4)  # batch-specific
    assert torch.equal(ev, again) and not net.training


def test_committee_weights():
    assert torch.allclose(committee_weights(3), torch.full((3,), 1 / 3))
    w = committee_weights(2, [80.0, 70.0])
    assert torch.allclose(w, torch.softmax(torch.tensor([8.0, 7.0]), 0))
    a, b = teacher(0), teacher(1)
    x = torch.randn(4, 3, 16, 16)
    z = Committee([a, b], w)(x)
    with torch.no_grad():
        assert torch.allclose(z, w[0] * a(x) + w[1] * b(x), atol=1e-5)


def test_bytes_on_disk_match_manifest_and_formula(tmp_path, distilled):
    path = make_store(tmp_path, distilled, Committee([teacher()]))
    manifest = json.loads((path / "manifest.json").read_text())
    LabelStore.open(path)
    n, c, nb = 12, 3, 3
    # per image: index uint16 2 + box 8 + partner uint8 1 + fp16 labels 2C; per batch: mix box 8 + offset 4;
    # per shard: one more offset 4 and the bit-packed flips ceil(n/8)
    payload = n * (2 + 8 + 1 + 2 * c) + nb * 12 + 4 + (n + 7) // 8
    for shard in manifest["shards"]:
        f = path / shard["file"]
        assert f.stat().st_size == shard["bytes"] == manifest["files"][shard["file"]]["bytes"]
        header = struct.unpack("<Q", f.read_bytes()[:8])[0]  # safetensors: 8-byte length + JSON header + data
        assert shard["bytes"] == 8 + header + payload
    # what the budget counts: every shard plus the manifest
    assert store_bytes(path) == manifest["shard_bytes"] + (path / "manifest.json").stat().st_size


def test_larger_slc_gives_proportionally_more_passes(tmp_path, distilled):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = LabelStore.open(make_store(tmp_path / "a", distilled, Committee([teacher()]), slc=4))
    b = LabelStore.open(make_store(tmp_path / "b", distilled, Committee([teacher()]), slc=12))
    assert (a.passes, b.passes) == (1, 3)
    assert b.manifest["shard_bytes"] == 3 * a.manifest["shard_bytes"]
    # pass p is seeded seed + p: the first pass of the bigger store is the smaller store's pass
    assert torch.equal(a[0].labels, b[0].labels)


def test_plan_passes_errors():
    assert plan_passes(50, 10) == 5
    with pytest.raises(LabelBudgetError, match="below ipc"):
        plan_passes(5, 10)
    with pytest.raises(LabelBudgetError, match="slc=20 or slc=30"):
        plan_passes(25, 10)


def test_truncated_corrupted_and_foreign_stores_are_rejected(tmp_path, distilled):
    path = make_store(tmp_path, distilled, Committee([teacher()]))
    shard = path / "pass_0001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(LabelStoreError, match="truncated"):
        LabelStore.open(path)
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(LabelStoreError, match="sha256"):
        LabelStore.open(path)
    shard.write_bytes(data)
    LabelStore.open(path)
    other = distilled.__class__(distilled.images.flip(0), distilled.targets, distilled.files, CLASSES, "f" * 64)
    with pytest.raises(LabelStoreError, match="images_sha256"):
        open_store_for(path, other)
    (path / "manifest.json").unlink()
    with pytest.raises(LabelStoreError, match="manifest"):
        LabelStore.open(path)
