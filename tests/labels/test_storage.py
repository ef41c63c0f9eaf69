"""Soft-label storage: codec round trips, byte budgets on disk, grouped-BN relabel, replay under compression."""
import pytest
import torch
from conftest import cold, file_rss_mb, page_accounting

from hald import pipeline
from hald.data.distilled import load_distilled
from hald.labels.budget import LabelBudgetError, parse_bytes, plan_store
from hald.labels.codecs import CODECS, Codec, make_codec, pack_bits, unpack_bits
from hald.labels.relabel import label_groups
from hald.labels.store import LabelStore
from hald.models import build_backbone
from hald.models.teachers import Committee


def soft_labels(n=64, c=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, c, generator=g) * 4 / 20 * 5, dim=1)  # T=20-like flat rows


@pytest.mark.parametrize("bits", [1, 3, 8, 13, 16])
def test_bit_packing_round_trip(bits):
    q = torch.randint(0, 2 ** bits, (7, 29))
    packed = pack_bits(q, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (7, -(-29 * bits // 8))
    assert torch.equal(unpack_bits(packed, 29, bits), q)


@pytest.mark.parametrize("c", [10, 200, 1000])
def test_codec_round_trips_and_sizes(c):
    p = soft_labels(c=c)
    codecs = {
        "fp32": (make_codec("float", dtype="float32"), 0.0),
        "fp16": (make_codec("float"), 2 ** -11),                    # fp16 rounding of values <= 1
        "quant_log8": (make_codec("quant", bits=8), None),
        "quant_prob14": (make_codec("quant", bits=14, space="prob"), 2.0 / (2 ** 14 - 1)),
        "topk": (make_codec("topk", k=min(10, c)), None),
        "topk_quant": (make_codec("topk_quant", k=min(10, c), bits=8), None),
    }
    for name, (codec, bound) in codecs.items():
        enc = codec.encode(p)
        assert all(v.shape[0] == len(p) for v in enc.values())
        assert sum(v[0].numel() * v.element_size() for v in enc.values()) == codec.row_bytes(c), name
        d = codec.decode(enc, c)
        assert d.shape == p.shape and d.dtype == torch.float32
        if name != "fp16" and name != "fp32":
            assert torch.allclose(d.sum(1), torch.ones(len(p)), atol=1e-5), name  # rows are distributions
        if bound is not None:
            assert (d - p).abs().max() <= bound, name
    # log-space quantisation: relative error bounded by half a step of the row's log range
    codec = make_codec("quant", bits=8)
    d = codec.decode(codec.encode(p), c)
    logp = p.log()
    step = (logp.max(1).values - logp.min(1).values) / 255
    assert ((d.log() - logp).abs().max(1).values <= step + 2e-3 + (d.log() - logp).mean(1).abs()).all()
    # top-k keeps exactly the k largest entries; with rest=uniform the others share the remaining mass
    k = min(10, c)
    d = make_codec("topk", k=k).decode(make_codec("topk", k=k).encode(p), c)
    top = p.topk(k, 1).indices
    assert torch.allclose(d.gather(1, top), p.gather(1, top), atol=2 ** -11)
    if k < c:
        rest = d.scatter(1, top, -1.0)
        others = rest[rest >= 0].view(len(p), c - k)
        assert torch.allclose(others, others[:, :1].expand_as(others))
    d = make_codec("topk", k=k, rest="renorm").decode(make_codec("topk", k=k, rest="renorm").encode(p), c)
    assert ((d > 0).sum(1) == k).all()


# Every parameter any codec takes, as the config group passes them all: each codec must take its own and
# ignore the others. A new codec with a new parameter adds it here.
ALL_PARAMS = [{"k": 7, "bits": 5}, {"k": 7, "bits": 12, "dtype": "float32", "rest": "renorm", "space": "prob"}]


@pytest.mark.parametrize("params", ALL_PARAMS, ids=["defaults", "alternatives"])
@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("c", [5, 300])  # k > C; class ids past uint8
def test_every_registered_codec_round_trips(name, params, c):
    codec = Codec.from_config({"name": name, **params})
    assert type(codec) is CODECS[name] and Codec.from_config(codec.spec()) == codec
    p = soft_labels(n=9, c=c, seed=c)
    enc = codec.encode(p)
    assert enc and all(v.shape[0] == len(p) for v in enc.values())
    assert sum(v[0].numel() * v.element_size() for v in enc.values()) == codec.row_bytes(c)
    d = codec.decode(enc, c)
    assert d.shape == p.shape and d.dtype == torch.float32 and (d >= 0).all()
    # fp16 probabilities are not renormalised: their sum is off by at most fp16 rounding (2**-11 relative)
    assert torch.allclose(d.sum(1), torch.ones(len(p)), rtol=0, atol=2 ** -11)


def test_bad_codec_parameters():
    for kw in ({"name": "zip"}, {"name": "topk"}, {"name": "quant", "bits": 0}, {"name": "quant", "bits": 4,
                                                                                  "space": "sqrt"}):
        with pytest.raises(ValueError, match="fix:"):
            Codec.from_config(kw)
    with pytest.raises(ValueError, match="unknown codec 'zip'; fix:"):
        make_codec("zip")
    with pytest.raises(TypeError):
        make_codec("float", k=3)  # in code, unlike in a config, a parameter the codec lacks is a mistake


def test_parse_bytes():
    assert parse_bytes("285MB") == 285_000_000 and parse_bytes("2MiB") == 2 ** 21 and parse_bytes(512) == 512
    assert parse_bytes("1.5 kb") == 1500
    with pytest.raises(LabelBudgetError, match="not a size"):
        parse_bytes("lots")


def test_planner_fills_the_budget_and_picks_auto_parameters():
    no_manifest = lambda sli, codec: 1000  # noqa: E731
    fp16 = {"name": "float", "dtype": "float16"}
    one = plan_store(fp16, 100, 10, 10, 16, None, "10KB", no_manifest)
    assert one.planned_bytes <= 10_000 < (one.sli + 1) * one.shard_bytes + 1000
    more = plan_store(fp16, 100, 10, 10, 16, None, "20KB", no_manifest)
    assert more.sli > one.sli
    auto = plan_store({"name": "topk", "k": "auto"}, 100, 10, 10, 16, 50, "12KB", no_manifest)
    assert auto.sli == 5 and auto.planned_bytes <= 12_000
    bigger = plan_store({"name": "topk", "k": auto.codec.k + 1}, 100, 10, 10, 16, 50, None, no_manifest)
    assert 5 * bigger.shard_bytes + 1000 > 12_000  # the chosen k is the largest that fits
    with pytest.raises(LabelBudgetError, match="minimum of one label per image"):
        plan_store(fp16, 100, 10, 10, 16, None, "2KB", no_manifest)
    with pytest.raises(LabelBudgetError, match="needs a byte budget"):
        plan_store({"name": "topk", "k": "auto"}, 100, 10, 10, 16, 50, None, no_manifest)


@pytest.mark.parametrize("name", ["convnet_w32", "resnet18_small", "mobilenetv2_100_small"])
def test_grouped_bssl_equals_one_forward_per_group(name):
    torch.manual_seed(0)
    net = build_backbone(name, 10, 3, 16).eval()
    committee = Committee([net], mode="bssl")
    xs = [torch.randn(16, 3, 16, 16) for _ in range(4)] + [torch.randn(5, 3, 16, 16)]  # short last batch
    grouped = label_groups(committee, xs, temperature=1.0)
    single = [label_groups(committee, [x], temperature=1.0)[0] for x in xs]
    for a, b in zip(grouped, single):
        assert (a - b).abs().max() <= 1e-4
    ev = Committee([net], mode="eval")
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(label_groups(ev, xs, 1.0),
                                                               [label_groups(ev, [x], 1.0)[0] for x in xs]))


@pytest.mark.parametrize("budget", ["6KB", "9KB"])
def test_label_budget_run_stays_within_budget_on_disk(fast_cfg, budget):
    out = pipeline.run(fast_cfg("train.epochs=1", f"label_budget={budget}"))
    store = LabelStore.open(out["store"])
    on_disk = sum(p.stat().st_size for p in pipeline.Path(out["store"]).iterdir())
    assert on_disk == out["label_bytes"] <= parse_bytes(budget)
    assert store.passes == out["sli"] >= 1 and out["slc"] == out["sli"] * out["ipc"]


def test_too_small_budget_says_the_minimum(fast_cfg):
    with pytest.raises(LabelBudgetError, match=r"minimum of one label per image .*fix: label_budget>="):
        pipeline.run(fast_cfg("label_budget=500B"))


def test_replay_is_identical_before_and_after_compression(fast_cfg):
    a = pipeline.run(fast_cfg("train.epochs=1"))
    b = pipeline.run(fast_cfg("train.epochs=1", "codec=topk_quant", "labels.codec.k=3", "labels.codec.bits=4"))
    sa, sb = LabelStore.open(a["store"]), LabelStore.open(b["store"])
    assert b["label_bytes"] < a["label_bytes"]
    for r in range(sa.num_records):
        ga, gb = sa[r].geometry, sb[r].geometry
        for f in ("index", "box", "flip", "mix_perm", "mix_box"):
            assert torch.equal(getattr(ga, f).long(), getattr(gb, f).long()), f
        assert not torch.equal(sa[r].labels, sb[r].labels)
        # the compressed label's top class is one of the 3 classes top-k kept
        top1 = sb[r].labels.argmax(1, keepdim=True)
        assert (sa[r].labels.gather(1, top1).squeeze(1) >= sa[r].labels.topk(3, 1).values[:, -1]).all()


@page_accounting
def test_reading_every_record_keeps_rss_flat(tmp_path, monkeypatch):
    """Over a run every record is read: without ShardView.release each rank's RSS grew by the store's size
    (file pages, shared, but in every rank's RSS); with it by about one record. Records are unchanged."""
    from hald.data.image_array import open_array
    from hald.labels.store import ShardView, open_store_for
    from hald_tools.bench_memory import class_list, generate, write_store

    generate(tmp_path, 1000, 32, 1000, jpeg=False)
    write_store(tmp_path, 32, 16, 0.06)  # float labels of 1,000 classes: 15 passes, 60 MB

    def read_all():
        store = open_store_for(tmp_path / "store", open_array(tmp_path / "set", tmp_path / "set" / "images",
                                                              class_list(1000)), deep=False)
        start, grown, records = file_rss_mb(), 0.0, []
        for r in range(len(store)):
            rec = store[r]
            if r % 97 == 0:
                records.append(rec)
            grown = max(grown, file_rss_mb() - start)
        return grown, records

    monkeypatch.setattr(ShardView, "release", lambda self: None)  # the control: the code before
    kept, before = read_all()
    monkeypatch.undo()
    released, after = read_all()
    assert kept > 40, kept
    assert released < 10, released
    assert all(torch.equal(a.labels, b.labels) and torch.equal(a.geometry.box, b.geometry.box)
               for a, b in zip(before, after))

    # From a cold cache a record reads its rows, not the disk's read-ahead around them (8 MB here; a shard is 4 MB)
    from hald_tools.page_cache import cached_mb

    shards = sorted((tmp_path / "store").glob("*.safetensors"))
    store = open_store_for(tmp_path / "store", open_array(tmp_path / "set", tmp_path / "set" / "images",
                                                          class_list(1000)), deep=False)
    warm = {r: store[r].labels for r in (5, 300, 700)}  # three shards
    store._shards = {}
    cold(shards)
    assert all(torch.equal(store[r].labels, labels) for r, labels in warm.items())
    record = 16 * 1000 * 4 / 2**20
    assert cached_mb(shards) < 3 * (record + 0.1), cached_mb(shards)  # + each shard's header, offsets and flips
