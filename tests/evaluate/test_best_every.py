"""The papers' reported metric (best of the evaluations every N epochs) next to the final epoch, both labelled."""
from hald.evaluate.summary import best_every, summary_rows
from hald.train.callbacks import PhaseScheduler
from hald.train.schedule import make_schedule


def test_evaluations_at_the_papers_epochs_and_their_best():
    sched = make_schedule("S6", 300, 0.5)
    cb = PhaseScheduler(sched, "keep", eval_every=10, eval_phase_ends=True)
    epochs = [e for e in range(300) if cb.eval_epoch(e)]
    assert epochs[:3] == [0, 10, 20] and 290 in epochs and 299 in epochs  # HALD / CV-DD: e % 10 == 0 or last
    assert 74 in epochs and 224 in epochs  # phase ends are evaluated too, but are not part of the paper metric
    log = [{"epoch": e, "phase": "soft", "top1": float(e == 74) * 99 + e / 10} for e in epochs]
    best = best_every(log, 10, 300)
    assert best == {"every": 10, "top1": 29.9, "epoch": 299, "evaluations": 31}
    assert best_every(log, 0, 300) is None


def test_summary_labels_final_and_best():
    s = {"teachers": [], "student": "resnet18_cifar", "distill": "rded", "ipc": 10, "images_reused": False,
         "top1": 40.0, "top5": 60.0, "top1_best": 42.0, "slc": 50, "sli": 5, "labels_reused": False,
         "label_bytes": 1000, "schedule": "soft 0-299", "eval_log": [], "lr": 1e-3, "eta": 2.0, "timings_s": {},
         "output_dir": "x", "top1_best_every": {"every": 10, "top1": 41.5, "epoch": 290, "evaluations": 31}}
    rows = dict(summary_rows(s))
    assert rows["student top-1 / top-5 (test, final epoch)"] == "40.00% / 60.00%"
    assert rows["student best top-1 of the evaluations every 10 epochs (the papers' metric)"].startswith("41.50%")
