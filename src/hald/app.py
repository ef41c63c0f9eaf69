"""The run as a Hydra app: `hald run [key=value ...]` = `python src/run.py [key=value ...]`; `-m` sweeps.

The configs are the checkout's conf/ (an editable install); `hydra.searchpath=[file://DIR]` adds a user's own
config groups (a new method's conf/distill/<name>.yaml, ...), `plugins=[module]` their code.
"""
from __future__ import annotations

import logging
import signal
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

log = logging.getLogger("hald")
warnings.filterwarnings("ignore", message=".*treespec.*")
# Lightning: a distilled epoch has fewer steps than its logging interval; metrics are logged per epoch anyway.
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
# The CSV logger's notice on resume: hald.pipeline.tracking carries the history over itself.
warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")


CONF = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hald.console import quiet_libraries
    from hald.errors import InputError, Terminated
    from hald.sweep import ERROR_FILE

    quiet_libraries()  # after Hydra has set up its handlers

    job_dir, multirun = _job()
    if multirun:
        (job_dir / ERROR_FILE).unlink(missing_ok=True)  # a rerun into the same sweep dir starts clean
    previous = signal.signal(signal.SIGTERM, _terminate)  # Lightning's own handler calls this one after its own
    try:
        from hald.pipeline import run

        return run(cfg).get("top1")
    except Terminated as e:
        # Preempted: not a success (Lightning alone would exit 0). Everything finished so far resumes.
        ckpt = job_dir / "checkpoints" / "last.ckpt"
        kept = "the student's last checkpoint is kept" if ckpt.is_file() else "finished stages and units are kept"
        note = (f"{kept}; fix: run the same command again with train.resume=true (hydra.run.dir={job_dir})"
                if not multirun else f"{kept}; fix: run the sweep again with train.resume=true (finished jobs are "
                                     f"reused from the cache)")
        _failed(e, 143, job_dir, multirun, note)
        sys.exit(143)  # a sweep stops too: the machine is being taken away
    except InputError as e:
        # Bad input: one line with the cause and the fix, no traceback; nothing was half-written.
        return _failed(e, 2, job_dir, multirun)
    except OSError as e:
        # A write or read that failed (disk full, permissions, ...): artifacts are built in temp dirs and
        # renamed into place, so nothing half-written was kept; finished units resume on the next run.
        log.debug("I/O error", exc_info=True)
        return _failed(e, 1, job_dir, multirun, "nothing half-written was kept; fix the cause and run again "
                                                "(finished units resume)")
    except Exception as e:
        if not multirun:
            raise
        log.exception("sweep job failed")  # the traceback goes to this job's log; the other jobs run
        return _failed(e, 1, job_dir, multirun)
    finally:
        signal.signal(signal.SIGTERM, previous)
        _close_wandb()


def _terminate(signum, frame) -> None:
    from hald.errors import Terminated

    raise Terminated("stopped by SIGTERM (preemption, scancel or kill)")


def _job() -> tuple[Path, bool]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), hc.mode == RunMode.MULTIRUN


def _failed(e: BaseException, code: int, job_dir: Path, multirun: bool, note: str = "") -> None:
    """One line on stderr. A single run exits with `code`; a sweep job records error.json and returns, so
    the sweep's other jobs run (hald.sweep.SweepReport lists the failures and sets the exit status)."""
    msg = " ".join(f"{type(e).__name__ + ': ' if code != 2 else ''}{e}".split()) + (f" ({note})" if note else "")
    print(f"error: {msg}", file=sys.stderr)  # once on the console; the job's log file gets it too
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, msg, None, None))
    if not multirun:
        sys.exit(code)
    from hald.artifacts import write_json_atomic
    from hald.sweep import ERROR_FILE

    write_json_atomic(job_dir / ERROR_FILE, {"message": msg, "exit_code": code, "type": type(e).__name__})
    return None


def _close_wandb() -> None:
    """Each job of a multirun gets its own W&B run: finish the previous one."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
