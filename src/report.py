"""`python src/report.py RUN_OR_MULTIRUN_DIR [...]` (= `hald report ...`): markdown tables and PNG figures into
DIR/report/: accuracy by schedule and label budget (mean ± std over seeds), accuracy against label bytes per
schedule, the phase timeline over the loss curve, fair metrics and crop consistency when the runs have them, the
LVSD slope plot of every run with an lvsd.json, and a grid of the distilled images. `--wandb` also logs the
tables and images to a W&B run (offline unless WANDB_MODE says otherwise)."""
from hald.evaluate.report import main

if __name__ == "__main__":
    main()
