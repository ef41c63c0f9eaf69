"""LPQLD's soft-label training as a phase kind (src/hald/train/lpqld.py, student=lpqld): the spec's hand-computed
case (the LPQLD specification's section 8, read from the official code at 107c7a5), the DKR temperature schedule, exact re-tempering of renorm top-k labels,
the per-epoch stored-batch draw, the refusals, the ImageNet-1K presets and their exact bytes, and one run on
mnist5k end to end."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import FAST, compose
from hald.labels.codecs import Codec
from hald.train.lpqld import (LPQLDReplay, StudentKL, check_retemperable, draw_records, kl_at, lpqld_temperature,
                              retemper, search_temperature)
from hald.train.schedule import make_schedule

Z = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])  # the spec's logit row, C = 5, MR-2
ROWS = {1: [0.268941, 0, 0, 0, 0.731059], 2: [0.377541, 0, 0, 0, 0.622459], 20: [0.487503, 0, 0, 0, 0.512497]}
KL_AT_ZERO = {1: 1.027235, 2: 0.946591, 20: 0.916603}  # KL(batchmean) of those rows against s = 0, T_s = 1
GRID = [float(t) for t in np.linspace(0.01, 1, 100)]
MR2 = {"name": "topk", "k": 2, "rest": "renorm"}


# -- the hand-computed case ---------------------------------------------------------------------------------------
def test_stored_bytes_of_the_hand_case():
    """hald's topk k=2: 2 fp16 values + 2 class ids per row; uint8 ids at C = 5 (6 B), int16 at C = 1000 (8 B, as
    LPQLD's fp16 logits + int16 ids: 4 + 4 B)."""
    codec = Codec.from_config(MR2)
    enc = codec.encode(torch.softmax(Z, 1))
    assert enc["indices"].tolist() == [[4, 0]] and enc["indices"].dtype == torch.uint8
    assert enc["values"].dtype == torch.float16
    assert sum(t.numel() * t.element_size() for t in enc.values()) == codec.row_bytes(5) == 6
    assert codec.row_bytes(1000) == 2 * (2 + 2) == 8
    assert Codec.from_config({**MR2, "k": 100}).row_bytes(1000) * 128 == 51_200  # an MR-100 batch's payload


@pytest.mark.parametrize("t0, atol", [(1.0, 3e-5), (20.0, 1e-3)])
def test_decoded_hand_row_at_t1_t2_t20(t0, atol):
    """Stored at T0 (fp16 probabilities of softmax(z / T0)), decoded and re-tempered to T: softmax of the top-2
    logits / T on classes 4 and 0, 0 elsewhere. fp16 rounds p here (LPQLD rounds z): the error grows with T0 / T."""
    codec = Codec.from_config(MR2)
    p = codec.decode(codec.encode(torch.softmax(Z / t0, 1)), 5)
    for t, row in ROWS.items():
        q = retemper(p, t0 / t)
        assert torch.allclose(q, torch.tensor([row]), atol=atol), (t0, t, q)
        assert q[0, 1:4].eq(0).all()
        assert kl_at(torch.zeros(1, 5), q, 1.0).item() == pytest.approx(KL_AT_ZERO[t], abs=8 * atol)


def test_hand_kl_and_the_student_temperature_search():
    exact = {t: torch.tensor([row], dtype=torch.float32) for t, row in ROWS.items()}
    for t, want in KL_AT_ZERO.items():
        assert StudentKL(1.0, t2=False)(torch.zeros(1, 5), exact[t]).item() == pytest.approx(want, abs=2e-6)
    t_s, kl = search_temperature(torch.tensor([[1.0, 0, 0, 0, 2.0]]), exact[20], GRID)  # the spec's CA check
    assert t_s == pytest.approx(0.78) and kl == pytest.approx(0.343239, abs=2e-6)
    loss = StudentKL(0.5, t2=True)
    loss.teacher_temperature = 14.0  # t2: times T_t^2 (LPQLD's 'tiny' branch), KL at T_s
    assert loss(torch.ones(1, 5), exact[2]).item() == pytest.approx(196 * kl_at(torch.ones(1, 5), exact[2], 0.5).item())
    same = StudentKL(None)  # null: the student at the teacher's T
    same.teacher_temperature = 2.0
    assert same(torch.zeros(1, 5), exact[2]).item() == pytest.approx(kl_at(torch.zeros(1, 5), exact[2], 2.0).item())


# -- the schedule and re-tempering --------------------------------------------------------------------------------
def test_temperature_schedule():
    """T_t(e) = max(2, 20 * 0.7 ** (e // 30)) at LPQLD's epoch e (train_FKD_LPQLD.py:515-518)."""
    want = {0: 20.0, 29: 20.0, 30: 14.0, 60: 9.8, 209: 2.35298, 210: 2.0, 300: 2.0}
    for e, t in want.items():
        assert lpqld_temperature(e) == pytest.approx(t), e
    phase = LPQLDReplay(StudentKL(1.0), 8, label_temperature=20.0, codec=MR2)
    assert [phase.teacher_temperature(e) for e in (0, 28, 29, 59, 299)] == pytest.approx([20, 20, 14, 9.8, 2])
    off = LPQLDReplay(StudentKL(1.0), 8, label_temperature=20.0, retemper=False)
    assert off.teacher_temperature(299) == 20.0


def test_retempering_is_softmax_of_the_topk_logits():
    """Renorm top-k probabilities at T0, re-tempered to T, are softmax(z_topk / T) on the top-k classes and 0
    elsewhere: exact (float64), and within fp16 rounding through the codec at ImageNet's shape."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 1000, generator=g, dtype=torch.float64) * 3
    k, t0 = 100, 20.0
    top = z.topk(k, 1)

    def reference(t):
        return torch.zeros_like(z).scatter(1, top.indices, torch.softmax(top.values / t, 1))

    p0 = reference(t0)  # = top-k of softmax(z / T0), renormalised
    codec = Codec.from_config({"name": "topk", "k": k, "rest": "renorm"})
    stored = codec.decode(codec.encode(torch.softmax(z / t0, 1).float()), 1000)
    for t in (20.0, 14.0, 9.8, 2.0):
        assert torch.allclose(retemper(p0, t0 / t), reference(t), atol=1e-12, rtol=0)
        q = retemper(stored, t0 / t)
        assert q.gt(0).eq(reference(t).gt(0)).all()  # the same kept classes, zeros stay zero
        assert torch.allclose(q.double(), reference(t), atol=2e-4 * t0 / t, rtol=0)
        assert torch.allclose(q.sum(1), torch.ones(64))


# -- the per-epoch draw -------------------------------------------------------------------------------------------
def fake_data(n=10_000, b=128, passes=30, codec=None, temperature=20.0, seed=0, schedule=None):
    codec = Codec.from_config(codec or {"name": "topk", "k": 100, "rest": "renorm"})
    bpp = -(-n // b)
    store = SimpleNamespace(path="STORE", codec=codec, batch_size=b, passes=passes, batches_per_pass=bpp,
                            num_records=passes * bpp, manifest={"temperature": temperature, "num_images": n})
    return SimpleNamespace(store=store, seed=seed, schedule=schedule or make_schedule("soft_only", 300))


def bound(data, **kwargs):
    phase = LPQLDReplay(StudentKL(1.0), 128, label_temperature=20.0, **kwargs)
    phase.bind("soft", data)
    return phase


def test_draw_per_epoch_without_replacement_independent_and_reproducible():
    """IN-1K IPC 10 at SLI 30: 79 stored batches per pass, the last of 16 images; each epoch draws 78 full
    batches (floor(10000 / 128), utils_fkd.py:453) from all 2,340 full ones, without replacement, afresh."""
    phase = bound(fake_data())
    assert phase.per_epoch == 78 and len(phase.full) == 30 * 78
    assert all(r % 79 != 78 for r in phase.full)  # drop last: no partial batch is drawn
    epochs = [phase.records(e) for e in range(300)]
    for ids in epochs:
        assert len(ids) == len(set(ids)) == 78 and set(ids) <= set(phase.full)
    assert epochs[5] == bound(fake_data()).records(5)  # a pure function of (seed, epoch): resume-safe
    assert epochs[5] != bound(fake_data(seed=1)).records(5)
    assert len({tuple(ids) for ids in epochs}) == 300
    assert any(set(epochs[e]) & set(epochs[e + 1]) for e in range(299))  # independent: not a partition of passes
    counts = np.bincount(np.concatenate(epochs), minlength=30 * 79)[phase.full]
    assert counts.sum() == 300 * 78 and counts.mean() == pytest.approx(10.0) and counts.max() > counts.min()
    assert draw_records(list(range(10)), 10, 0, 3) != list(range(10)) and sorted(draw_records(list(range(10)), 10, 0, 3)) == list(range(10))
    whole = bound(fake_data(), drop_last=False)  # every stored batch, the partial ones too
    assert whole.per_epoch == 79 and len(whole.full) == 30 * 79
    hald = bound(fake_data(), sampling="schedule")  # hald's schedule.pool, partial batches left out
    ids = hald.records(0)
    assert set(ids) <= set(hald.full) and 70 <= len(ids) <= 79


# -- refusals -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", [{"name": "topk", "k": 100, "rest": "uniform"}, {"name": "float", "dtype": "float16"},
                                   {"name": "topk_quant", "k": 100, "bits": 4, "rest": "renorm"}])
def test_refuses_a_store_that_is_not_topk_renorm(codec):
    with pytest.raises(ValueError, match="fix: codec=topk labels.codec.rest=renorm"):
        bound(fake_data(codec=codec), retemper=True)
    with pytest.raises(ValueError, match="fix:"):  # from the config too, before any relabel
        LPQLDReplay(StudentKL(1.0), 128, label_temperature=20.0, retemper=True, codec=codec)
    assert bound(fake_data(codec=codec), retemper=False).per_epoch == 78  # at the stored T: any codec
    auto = bound(fake_data(codec=codec))  # auto: no re-tempering for these labels (a warning), T_t = T0
    assert not auto.retemper and auto.teacher_temperature(299) == 20.0
    assert bound(fake_data()).retemper  # auto on topk renorm labels: re-tempered
    check_retemperable({"name": "topk", "k": 3, "rest": "renorm"}, "x")


def test_student_lpqld_passes_the_schema_and_refuses_retempering_fp16_labels(tmp_path):
    """student=lpqld with the default fp16 labels is valid (retemper=auto: trained at the stored T); asking for
    re-tempering of them stops at pre-flight's schema check, before any relabel."""
    from hald.errors import ConfigError
    from hald.schema import validate

    validate(compose(["student=lpqld"], tmp_path))
    validate(compose(["student=lpqld", "student.phases.soft.retemper=true", "codec=topk",
                      "labels.codec.rest=renorm"], tmp_path))
    with pytest.raises(ConfigError, match="fix: codec=topk labels.codec.rest=renorm"):
        validate(compose(["student=lpqld", "student.phases.soft.retemper=true"], tmp_path))


def test_refuses_other_mismatches():
    with pytest.raises(ValueError, match="fix: label_temperature"):
        bound(fake_data(temperature=4.0))
    with pytest.raises(ValueError, match="fix:"):
        bound(fake_data(n=100))  # drop last with no full batch of 128
    with pytest.raises(ValueError, match="fix:"):
        LPQLDReplay(StudentKL(None), 128, label_temperature=20.0)  # a search needs a start
    with pytest.raises(ValueError, match="fix:"):
        LPQLDReplay(StudentKL(1.0), 128, label_temperature=20.0, sampling="shuffled")


# -- presets ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ipc, shard, stored", [(10, 4_112_858, 123_385_740), (50, 20_561_618, 616_848_540)])
def test_in1k_presets_compose_validate_and_their_bytes(ipc, shard, stored, tmp_path):
    """LPQLD's x40 rows (MR-100, r = 0.9): hald's store of topk k=100 renorm at SLI 30 and batch 128. LPQLD's
    0.13 / 0.63 GB are 4 KiB-block GiB of torch.save files: 0.125 / 0.633 GiB."""
    from hald.pipeline.stages import plan_relabel
    from hald.schema import validate

    cfg = compose([f"experiment=lpqld_in1k_ipc{ipc}", "trainer=gpu"], tmp_path)
    validate(cfg)
    soft = cfg.student.phases.soft
    assert soft._target_ == "hald.train.lpqld.LPQLDReplay" and soft.label_temperature == 20 and not soft.loss.t2
    assert soft.retemper is True
    assert (cfg.ipc, cfg.slc, cfg.labels.batch_size, cfg.train.soft_batch_size) == (ipc, 30 * ipc, 128, 128)
    assert dict(cfg.labels.codec) == {"name": "topk", "k": 100, "rest": "renorm"} and cfg.schedule.preset == "soft_only"
    plan = plan_relabel(cfg, ipc * 1000, ipc, [f"n{i:08d}" for i in range(1000)])
    assert (plan.sli, plan.shard_bytes, plan.sli * plan.shard_bytes) == (30, shard, stored)
    assert round(stored / 1e9, 2) == {10: 0.12, 50: 0.62}[ipc]


# -- end to end ---------------------------------------------------------------------------------------------------
def test_student_lpqld_runs_end_to_end_on_mnist5k(tmp_path, monkeypatch):
    """student=lpqld on a topk renorm store (k=3), soft only, the temperature stepped every 2 (LPQLD's 1-based)
    epochs, so that the 4 epochs see 20, 14, 14, 9.8; the student T is searched after every epoch."""
    from hald import pipeline

    phases = []
    bind = LPQLDReplay.bind
    monkeypatch.setattr(LPQLDReplay, "bind", lambda self, name, data: (phases.append(self), bind(self, name, data)))
    cfg = compose(FAST + ["student=lpqld", "codec=topk", "labels.codec.k=3", "labels.codec.rest=renorm",
                          "schedule.preset=soft_only", "student.phases.soft.step=2", "train.crop_consistency=false"],
                  tmp_path)
    out = pipeline.run(cfg)
    assert 0 <= out["top1"] <= 100 and out["phase_audit"] == {e: ["soft"] for e in range(4)}
    (phase,) = phases
    assert phase.retemper  # auto: the store is topk renorm
    assert [h["epoch"] for h in phase.history] == [0, 1, 2, 3]
    assert [h["teacher_temperature"] for h in phase.history] == pytest.approx([20, 14, 14, 9.8])
    t_s = [h["student_temperature"] for h in phase.history]
    assert t_s[0] == 1.0 and all(any(math.isclose(t, g) for g in GRID) for t in t_s[1:])
    assert phase.per_epoch == 5 and phase.data.store.codec.spec() == {"name": "topk", "k": 3, "rest": "renorm"}
