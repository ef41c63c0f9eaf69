"""schedule.pool: which stored batches each soft epoch replays (run / HALD's segment / CV-DD's pass)."""
import pytest

from conftest import compose
from hald.train.schedule import make_schedule, soft_pool


def _epochs(sched, passes, bpp, seed=0):
    return {e: soft_pool(sched, e, passes, bpp, seed) for e in range(sched.total_epochs)
            if sched.phase_at(e) == "soft"}


@pytest.mark.parametrize("pool", ["run", "segment", "pass"])
def test_every_stored_batch_once_per_sli_soft_epochs_of_a_segment(pool):
    sched = make_schedule("S6", 40, 0.5, pool=pool)  # soft 0-9 | hard 10-29 | soft 30-39
    got = _epochs(sched, passes=5, bpp=4)
    for start in (0, 5, 30, 35):
        ids = [r for e in range(start, start + 5) for r in got[e]]
        assert sorted(ids) == list(range(20))


def test_segment_restarts_the_pool_where_run_continues_it():
    run, seg = (make_schedule("S6", 30, 0.5, pool=p) for p in ("run", "segment"))  # soft 0-6 | hard 7-21 | soft 22-29
    r, s = _epochs(run, 4, 3), _epochs(seg, 4, 3)
    # HALD: the last segment starts a fresh cycle; the run-wide pool is in the middle of one (7 % 4 = 3)
    assert sorted(x for e in range(22, 26) for x in s[e]) == list(range(12))
    assert sorted(x for e in range(22, 26) for x in r[e]) != list(range(12))


def test_pass_replays_each_pass_whole_in_stored_order():
    sched = make_schedule("soft_only", 6, pool="pass")
    got = _epochs(sched, passes=3, bpp=4)
    assert got[0] == [0, 1, 2, 3] and got[1] == [4, 5, 6, 7] and got[3] == [0, 1, 2, 3]


def test_presets_choose_the_official_pools(tmp_path):
    assert compose([], tmp_path).schedule.pool == "run"
    assert compose(["experiment=hald_tiny_slc50"], tmp_path).schedule.pool == "segment"
    assert compose(["experiment=cvdd_in1k"], tmp_path).schedule.pool == "pass"
    with pytest.raises(ValueError, match="schedule.pool"):
        make_schedule("S6", 10, pool="epoch")
