"""The phase schedule (pure), the soft-batch pool, and the phase callback."""
import math
from types import SimpleNamespace

import pytest
import torch

from hald.train.callbacks import PhaseScheduler
from hald.train.module import cosine_eta
from hald.train.phases import standard_phases
from hald.train.schedule import HARD, SOFT, Schedule, make_schedule, soft_pool


def phases(s: Schedule):
    return "".join("S" if s.phase_at(e) == SOFT else "H" for e in range(s.total_epochs))


def test_presets_match_the_hald_code():
    assert phases(make_schedule("S6", 8)) == "SSHHHHSS"  # soft floor(S/2) -> hard H -> soft rest
    assert make_schedule("hald", 300).timeline() == "soft 0-74 | hard 75-224 | soft 225-299"
    assert phases(make_schedule("S1", 6)) == "HHHSSS"
    assert phases(make_schedule("S2", 7, block=2)) == "HHSSHHS"
    assert phases(make_schedule("S3", 7, block=2)) == "HHHHSSS"
    assert phases(make_schedule("S4", 5, block=2)) == "SSHHS"
    assert phases(make_schedule("S5", 9, block=2)) == "SSSSHHHHS"
    assert phases(make_schedule("S7", 8)) == "HHSSSSHH"
    assert phases(make_schedule("S8", 4)) == "SSHH"
    assert phases(make_schedule("soft_only", 3)) == "SSS" and phases(make_schedule("hard_only", 2)) == "HH"
    assert make_schedule("S6", 8).switches() == [2, 6]
    assert make_schedule("S6", 12, soft_fraction=0.25).timeline() == "soft 0-0 | hard 1-9 | soft 10-11"


def test_bad_schedules():
    with pytest.raises(ValueError, match="unknown schedule preset"):
        make_schedule("S9", 10)
    with pytest.raises(ValueError, match="no epochs"):
        make_schedule("S6", 0)


def test_soft_pool_uses_each_stored_batch_once_per_sli_soft_epochs():
    s = make_schedule("S6", 20)  # 5 soft, 10 hard, 5 soft
    soft = [e for e in range(20) if s.phase_at(e) == SOFT]
    passes, nb = 3, 4
    seen = [soft_pool(s, e, passes, nb, seed=1) for e in soft]
    assert all(len(ids) == nb for ids in seen)
    for start in range(0, len(seen) - passes + 1, passes):  # cycles of SLI soft epochs, across segments
        block = sum(seen[start:start + passes], [])
        assert sorted(block) == list(range(passes * nb))
    assert seen[0] != seen[passes]  # a new random order each cycle
    assert soft_pool(s, soft[4], passes, nb, 1) == seen[4]  # pure: same answer when asked again


def test_cosine_eta():
    assert cosine_eta(0, 100, 2) == 1.0
    assert abs(cosine_eta(100, 100, 2) - 0.5) < 1e-9
    assert abs(cosine_eta(100, 100, 1)) < 1e-9


def _fake(epoch, opt):
    logged = {}
    module = SimpleNamespace(phases=standard_phases(1, 1), log=lambda k, v, **_: logged.__setitem__(k, v))
    trainer = SimpleNamespace(current_epoch=epoch, optimizers=[opt], check_val_every_n_epoch=1)
    return trainer, module, logged


@pytest.mark.parametrize("mode", ["reset", "keep"])
def test_phase_callback_sets_phase_resets_moments_and_schedules_eval(mode):
    s = make_schedule("S6", 8)  # SSHHHHSS
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w])
    cb = PhaseScheduler(s, mode, eval_every=0)
    for epoch in range(8):
        w.grad = torch.ones(3)
        opt.step()
        trainer, module, logged = _fake(epoch, opt)
        cb.on_train_epoch_start(trainer, module)
        assert logged["train/phase"] == float(s.phase_at(epoch) == SOFT)
        switched = epoch in (2, 6)
        assert (len(opt.state) == 0) == (switched and mode == "reset")
        # validation exactly at the last epoch of each phase and at the end
        validates = (epoch + 1) % trainer.check_val_every_n_epoch == 0
        assert validates == (epoch in (1, 5, 7))
    with pytest.raises(ValueError):
        PhaseScheduler(s, "sometimes")


def test_hard_loss_temperature():
    """T = 1 is plain soft-target CE (the paper); T > 1 is CE of softmax(z / T), times T^2 only with t2, and its
    optimum keeps logits T times wider (the soft phase's scale)."""
    import torch.nn.functional as F

    from hald.train.losses import cutmix_smoothed_targets, soft_target_ce

    torch.manual_seed(0)
    z = torch.randn(8, 10) * 5
    _, t = cutmix_smoothed_targets(torch.zeros(8, 1, 4, 4), torch.arange(8) % 10, 10, 0.0, 0.8)
    assert torch.equal(soft_target_ce(z, t), F.cross_entropy(z, t))
    assert torch.equal(soft_target_ce(z, t, 1.0, True), F.cross_entropy(z, t))
    assert torch.allclose(soft_target_ce(z, t, 20.0, False), F.cross_entropy(z / 20, t))
    assert torch.allclose(soft_target_ce(z, t, 20.0, True), 400 * F.cross_entropy(z / 20, t))
    # minimiser: log-ratio of the smoothed target (0.28 / 0.08) at T = 1, T times that at T = 20
    for temp in (1.0, 20.0):
        w = torch.zeros(1, 10, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = soft_target_ce(w, t[:1], temp)
            loss.backward()
            return loss

        opt.step(closure)
        gap = (w.max() - w.min()).item()
        assert abs(gap - temp * math.log(0.28 / 0.08)) < 1e-2 * temp, (temp, gap)
