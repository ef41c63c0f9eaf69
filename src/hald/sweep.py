"""Sweeps that survive a failed job: each job records its failure in `error.json` (src/run.py) and returns, so
the launcher (basic, or submitit on SLURM) runs the other jobs; at the end this Hydra callback lists the
failed jobs and sets the exit status (2 when every failure was bad input, else 1)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("hald")
ERROR_FILE = "error.json"


def failed_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted(Path(sweep_dir).glob(f"*/{ERROR_FILE}")):
        try:
            out.append({"job": f.parent.name, **json.loads(f.read_text())})
        except (OSError, json.JSONDecodeError):
            out.append({"job": f.parent.name, "message": "unreadable error record", "exit_code": 1})
    return out


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = failed_jobs(Path(config.hydra.sweep.dir))
        if not failed:
            return
        for f in failed:
            log.error("sweep job %s failed: %s", f["job"], f.get("message"))
        print(f"error: {len(failed)} sweep job(s) failed: {', '.join(str(f['job']) for f in failed)} "
              f"(see {config.hydra.sweep.dir}/<job>/{ERROR_FILE})", file=sys.stderr)
        sys.exit(2 if all(f.get("exit_code") == 2 for f in failed) else 1)
