"""Evaluation protocols (evaluate/protocols.py, conf/evaluate/protocol): DD-Ranking's procedure point by point
against hand-computed cases (LR grid, accuracy rule, seed count, std ddof, ARS), the protocol card on every
result, and report.py refusing to put numbers of different cards in one column."""
from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from conftest import compose
from hald.evaluate.fair import ars, lrs, mean_std, normalised
from hald.evaluate.protocols import Protocol, comparable

LOG = [{"epoch": e, "top1": t} for e, t in [(0, 10.0), (9, 30.0), (10, 35.0), (19, 50.0), (29, 70.0), (39, 60.0),
                                             (49, 55.0), (59, 52.0)]]


def protocol(name: str, tmp_path, *extra: str) -> Protocol:
    return Protocol.of(compose([f"evaluate/protocol={name}", *extra], tmp_path).evaluate.protocol)


def test_ddranking_is_its_package_defaults(tmp_path):
    p = protocol("ddranking", tmp_path)
    assert p.lr_grid == (0.001, 0.005, 0.01, 0.05, 0.1)  # soft_label.py:211, 240
    assert len(p.seeds) == 5 and p.std_ddof == 0  # num_eval = 5, np.std
    assert (p.accuracy, p.every, p.offset, p.include_last) == ("best_every", 20, 19, False)  # (epoch+1) % 20 == 0
    assert p.optimizer == {"name": "sgd", "momentum": 0.9, "weight_decay": 0.0005, "lr_schedule": "step",
                           "step_size": None, "gamma": 0.1}
    assert not p.hard_augment and p.batch_size == 256 and p.real == "cached" and p.ars and p.ars_gamma == 0.5
    assert {"syn_hard", "syn_recipe", "random_recipe"} <= set(p.search)  # syn_lr not given: searched too


def test_the_ddranking_accuracy_is_the_best_check_after_every_20_epochs(tmp_path):
    p = protocol("ddranking", tmp_path)
    assert p.check_epochs(300) == list(range(19, 300, 20))  # after epochs 20, 40, ..., 300: 299 is a check
    assert p.check_epochs(60) == [19, 39, 59]
    got = p.top1(LOG, final=52.0, total=60)
    assert got["top1"] == 60.0 and got["epoch"] == 39  # 19: 50, 39: 60, 59: 52; epoch 29's 70 is no check
    short = p.top1([{"epoch": 9, "top1": 40.0}], final=40.0, total=10)  # no check within 10 epochs
    assert short["top1"] == 40.0 and short["rule"].startswith("final (no check")


def test_the_papers_accuracy_is_the_best_of_every_10_and_the_last(tmp_path):
    p = protocol("papers", tmp_path)
    assert p.check_epochs(45) == [0, 10, 20, 30, 40, 44]
    got = p.top1(LOG, final=52.0, total=60)  # checks 0, 10, 20, ..., 50 and the last, 59: 10, 35, 52
    assert got["top1"] == 52.0 and got["epoch"] == 59  # 29's 70 and 39's 60 are no checks
    assert p.top1(LOG[:3], final=35.0, total=11)["top1"] == 35.0


def test_the_hald_accuracy_is_the_final_epoch(tmp_path):
    p = protocol("hald", tmp_path)
    assert p.top1(LOG, final=52.0, total=60) == {"top1": 52.0, "epoch": 59, "rule": "final"}
    assert p.check_epochs(60) == [59] and p.lrs_for("syn_hard", 0.003) == [0.003]  # no search: the run's LR


def test_std_ddof_population_and_sample():
    rows = [{"x": v} for v in (0.50, 0.60, 0.70, 0.90, 1.00)]
    xs = [r["x"] for r in rows]
    assert mean_std(rows, ("x",), 0)[1]["x"] == pytest.approx(statistics.pstdev(xs))
    assert mean_std(rows, ("x",), 1)[1]["x"] == pytest.approx(statistics.stdev(xs))
    m = sum(xs) / 5
    assert mean_std(rows, ("x",), 0)[1]["x"] == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in xs) / 5))
    assert mean_std([{"x": 0.3}], ("x",), 1)[1]["x"] == 0.0  # one seed: no spread, not an error


def test_ars_and_lrs_against_hand_computed_values():
    # a = 0.5 * 0.10 - 0.5 * 0.20 = -0.05
    assert lrs(0.20, 0.10) == pytest.approx((math.exp(-0.05) - math.exp(-1)) / (math.e - math.exp(-1)))
    # b = 0.5 * (0.80 - 0.70) + 0.5 * (0.60 - 0.65) = 0.025
    assert ars(0.80, 0.70, 0.60, 0.65) == pytest.approx((math.exp(0.025) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert ars(0.8, 0.7, 0.6, 0.65, gamma=1.0) == pytest.approx(normalised(0.1))
    assert normalised(1.0) == pytest.approx(1.0) and normalised(-1.0) == pytest.approx(0.0)
    # DD-Ranking's package takes exp of percent points: its 'LRS' for the same case is far outside [0, 1]
    assert normalised(-5.0) < 0 and normalised(2.5) > 1


def test_the_lr_grid_keeps_the_best_and_the_smaller_of_a_tie(tmp_path, monkeypatch):
    from hald.pipeline import fair as fair_mod

    cfg = compose(["evaluate=fair", "evaluate/protocol=ddranking", "train.epochs=40"], tmp_path)
    acc = {0.001: 40.0, 0.005: 70.0, 0.01: 70.0, 0.05: 65.0, 0.1: 20.0}
    seen = []

    def fake_trained(ctx, stage, run, made, describe):
        lr = float(run.optimizer.lr)
        seen.append((lr, run.optimizer.name, run.optimizer.lr_schedule, describe["checks"]))
        return {"top1": 0.0, "eval_log": [{"epoch": 19, "top1": acc[lr] - 5}, {"epoch": 39, "top1": acc[lr]}]}

    monkeypatch.setattr(fair_mod, "trained", fake_trained)
    base = fair_mod.derive(cfg, **fair_mod.protocol_optimizer(cfg))
    got = fair_mod.top1(None, "syn_hard", base, None)
    assert got == {"top1": 70.0, "lr": 0.005, "by_lr": {"0.001": 40.0, "0.005": 70.0, "0.01": 70.0,
                                                        "0.05": 65.0, "0.1": 20.0}}
    assert [s[0] for s in seen] == [0.001, 0.005, 0.01, 0.05, 0.1]
    assert all(s[1:] == ("sgd", "step", [19, 39]) for s in seen)  # DD-Ranking's optimizer, its checks


def test_ddranking_hard_labels_are_whole_images_in_batches_of_256(tmp_path):
    from hald.pipeline.fair import hard_labels

    changes = hard_labels(compose(["evaluate=fair", "evaluate/protocol=ddranking"], tmp_path), 300)
    assert changes["hard_loss.crop_scale"] == [1.0, 1.0] and changes["hard_loss.flip_p"] == 0.0
    assert changes["train.hard_batch_size"] == 256 and changes["hard_loss.cutmix_alpha"] == 0.0
    assert "hard_loss.crop_scale" not in hard_labels(compose(["evaluate=fair"], tmp_path), 300)  # hald: crops


def test_sgd_and_step_schedule_build_what_ddranking_trains_with(tmp_path):
    from hald.train.module import StudentModule, step_factor
    from hald.train.schedule import make_schedule

    assert [step_factor(e, 300, None, 0.1) for e in (0, 150, 151, 299)] == pytest.approx([1, 1, 0.1, 0.1])
    assert step_factor(100, 300, 50, 0.1) == pytest.approx(0.01)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    m = StudentModule(net, 3, make_schedule("soft_only", 300), {}, lr=0.05, weight_decay=5e-4, optimizer="sgd",
                      momentum=0.9, lr_schedule="step", step_size=None, gamma=0.1)
    conf = m.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert all(g["weight_decay"] == 5e-4 for g in opt.param_groups)  # on every parameter, biases too
    assert sched.lr_lambdas[0](151) == pytest.approx(0.1)


def test_every_result_carries_its_protocol_card(fast_cfg):
    from hald import pipeline

    out = pipeline.run(fast_cfg("evaluate/protocol=papers", "train.epochs=12", "train.crop_consistency=false"))
    card = out["protocol"]
    assert card["name"] == "papers" and card["accuracy"].startswith("best of the evaluations at epochs 0, 10")
    assert card["std"] == "ddof=1 (sample)" and card["units"] == "fractions" and card["lr"] == out["lr"]
    saved = json.loads((pipeline.Path(out["output_dir"]) / "results.json").read_text())
    assert saved["protocol"] == card
    by_epoch = {e["epoch"]: e["top1"] for e in out["eval_log"]}
    assert {0, 10, 11} <= set(by_epoch)  # the protocol's checks were evaluated
    assert out["top1_protocol"]["top1"] == max(by_epoch[0], by_epoch[10], by_epoch[11])


def _run_dir(root, name: str, card: dict | None, top1: float):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text("schedule:\n  preset: S6\nslc: 50\n")
    res = {"top1": top1, "top5": 99.0, "eval_log": [], "label_bytes": 100, "schedule": "soft 0-9"}
    if card:
        res["protocol"] = card
        res["top1_protocol"] = {"top1": top1, "epoch": 9, "rule": card["accuracy"]}
    (d / "results.json").write_text(json.dumps(res))


def test_report_refuses_numbers_of_different_cards_in_one_column(tmp_path, capsys):
    from hald.evaluate.report import main

    hald_card = protocol("hald", tmp_path).card({}, 0.001)
    dd_card = protocol("ddranking", tmp_path).card({}, 0.001)
    assert comparable(hald_card) != comparable(dd_card)
    _run_dir(tmp_path / "runs", "a", hald_card, 90.0)
    _run_dir(tmp_path / "runs", "b", dd_card, 80.0)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "runs"), "--print"])
    msg = str(e.value)
    assert "different evaluation protocols" in msg and "hald" in msg and "ddranking" in msg and "fix:" in msg
    assert "\n" not in msg
    main([str(tmp_path / "runs"), "--print", "--mixed-protocols"])  # asked: one row per protocol
    table = capsys.readouterr().out
    assert "| protocol |" in table and "ddranking (best of the evaluations after every 20 epochs)" in table
    _run_dir(tmp_path / "same", "a", hald_card, 90.0)
    _run_dir(tmp_path / "same", "c", hald_card, 92.0)
    main([str(tmp_path / "same"), "--print"])  # one card: fine
    assert "91.00 ± 1.41" in capsys.readouterr().out


def test_a_protocol_with_bad_values_stops_in_one_line(fast_cfg):
    from hald import pipeline
    from hald.errors import ConfigError

    for bad, key in [("evaluate.protocol.accuracy=median", "accuracy"), ("evaluate.protocol.std_ddof=2", "std_ddof"),
                     ("evaluate.protocol.seeds=[]", "seeds"), ("evaluate.protocol.search=[syn_soft]", "search"),
                     ("evaluate.protocol.lr_grid=[0.1,-1]", "lr_grid")]:
        with pytest.raises(ConfigError, match=key):
            pipeline.run(fast_cfg(bad))
