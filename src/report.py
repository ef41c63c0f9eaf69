"""`python src/report.py RUN_OR_MULTIRUN_DIR [...]`: markdown tables and PNG figures into DIR/report/.

Accuracy by schedule and label budget (mean ± std over seeds), accuracy against label bytes per schedule, the
phase timeline over the loss curve, fair metrics and crop consistency when the runs have them, the LVSD slope
plot of every run with an lvsd.json (`python -m hald.evaluate.lvsd RUN_DIR`, or evaluate.lvsd=true), and a
grid of the distilled images. `--wandb` also logs the tables and images to a W&B run (offline unless
WANDB_MODE says otherwise).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a checkout without installing

from hald.evaluate.report import write_report  # noqa: E402


def wandb_run(enabled: bool, name: str):
    """The active W&B run, or a new offline one with --wandb; None when W&B is off or not installed."""
    if not enabled:
        return None
    try:
        import wandb
    except ImportError:
        print("wandb is not installed: tables and images are written to disk only", file=sys.stderr)
        return None
    return wandb.run or wandb.init(project="hald", job_type="report", name=name, mode=os.environ.get("WANDB_MODE", "offline"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories (results.json below them)")
    ap.add_argument("--by", nargs="+", default=["schedule", "slc"], help="config keys that make a table row")
    ap.add_argument("--wandb", action="store_true", help="also log the tables and images to W&B")
    args = ap.parse_args(argv)
    for d in args.dirs:
        run = wandb_run(args.wandb, f"report-{d.name}")
        print(f"report: {write_report(d, args.by, run)}")
        if run is not None:
            run.finish()


if __name__ == "__main__":
    main()
