"""The synthesis methods inside the pipeline, on tiny mnist5k: distill=cvdd end to end with priors measured on
held-out train images (never the test split), and the single-teacher methods."""
import pytest

from conftest import FAST, compose
from hald import artifacts, pipeline
from hald.data.sources import SOURCES
from hald.distill.committee import voter_weights
from hald.pipeline.cache import Context
from hald.pipeline.stages import distill_teachers, stage_distill, stage_squeeze

# A recover that still moves: few iterations, few real images scored, priors from a tiny set and 2 epochs.
TINY = ["distill.iterations=8", "distill.rded.mipc=20", "distill.prior.ipc=2", "distill.prior.slc=4",
        "distill.prior.epochs=2", "train.epochs=2"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cache for the module: teachers are squeezed once (1 epoch, 50 images per digit)."""
    return tmp_path_factory.mktemp("synthesis")


def test_distill_cvdd_end_to_end_with_priors_on_held_out_train_images(shared, monkeypatch):
    cfg = compose(FAST + ["distill=cvdd", *TINY], shared)
    real_priors, real_source = pipeline.stage_priors, SOURCES["mnist5k"]
    seen = []

    def train_split_only(c, split):
        assert split == "train", "priors touched the test split"
        return real_source(c, split)

    def guarded_priors(*args, **kwargs):  # the test split is out of reach while priors are measured
        with monkeypatch.context() as m:
            m.setitem(SOURCES, "mnist5k", train_split_only)
            seen.append(real_priors(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(pipeline, "stage_priors", guarded_priors)
    out = pipeline.run(cfg)
    assert 0 <= out["top1"] <= 100 and out["ipc"] == 4
    manifest = artifacts.read_manifest(pipeline.Path(out["images"]).parent)
    pool = list(cfg.distill.pool.models)
    assert manifest["method"] == "cvdd" and manifest["iterations"] == 8
    assert [t["name"] for t in manifest["teachers"]] == pool and manifest["priors"] == seen[0]
    committees = list(manifest["committee"]["per_ipc_index"].values())
    assert [c["members"] for c in committees][:3] == [pool[:2], [pool[0], pool[2]], pool[1:]]  # pairs in turn
    for c in committees:
        assert c["weights"] == pytest.approx(voter_weights([seen[0][pool.index(n)] for n in c["members"]]).tolist(),
                                             abs=1e-5)
    assert len(manifest["units"]) == 4 and len({u["seed"] for u in manifest["units"]}) == 4
    assert len(list(pipeline.Path(out["images"]).rglob("*.png"))) == 40
    assert (pipeline.Path(cfg.paths.output_dir) / "distilled_grid.png").is_file()
    # priors: one cached artifact per pool teacher, measured on 10% of the train split (5 of 50 per digit)
    priors = [artifacts.read_manifest(p) for p in (shared / "cache" / "priors").iterdir() if not p.name.startswith(".")]
    assert sorted(p["teacher"] for p in priors) == sorted(pool)
    held = set(priors[0]["holdout_indices"])
    assert priors[0]["measured_on"] == "train-holdout" and len(held) == 50
    for p in priors:  # each teacher's own single-model set never drew from the held-out images
        single = artifacts.read_manifest(shared / "cache" / "distill" / p["upstream"]["images"])
        used = {i for sel in single["init_selection"] for i in sel["train_indices"]}
        assert single["method"] == "sre2lpp" and used and not used & held
    # priors given by hand skip the measurement and make other images
    hand_cfg = compose(FAST + ["distill=cvdd", *TINY, "distill.priors=[90,50,10]"], shared)
    ctx = Context(hand_cfg, shared / "cache")
    hand, _, _ = stage_distill(ctx, distill_teachers(ctx))
    assert str(hand) != out["images"] and len(seen) == 1
    assert artifacts.read_manifest(hand.parent)["priors"] == [90.0, 50.0, 10.0]


@pytest.mark.parametrize("method", ["rded", "sre2l", "sre2lpp"])
def test_single_teacher_methods_make_an_image_folder(shared, method):
    cfg = compose(FAST + [f"distill={method}", "distill.iterations=8", "distill.rded.mipc=20"]
                  if method != "rded" else FAST + ["distill=rded", "distill.mipc=20"], shared)
    ctx = Context(cfg, shared / "cache")
    images, _, _ = stage_distill(ctx, stage_squeeze(ctx))
    manifest = artifacts.read_manifest(images.parent)
    assert manifest["method"] == method and manifest["teachers"][0]["name"] == "convnet_w32"
    assert sorted(p.name for p in images.iterdir()) == [f"{c:05d}" for c in range(10)]
    assert all(sorted(p.name for p in (images / f"{c:05d}").iterdir()) == [f"{i:05d}.png" for i in range(4)]
               for c in range(10))
    assert (images.parent / "grid.png").is_file()
