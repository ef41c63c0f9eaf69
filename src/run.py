"""hald entry point: `python src/run.py [key=value ...]`, `python src/run.py -m slc=10,20,50`."""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a checkout without installing

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

log = logging.getLogger("hald")
# Lightning's INFO banners (GPU/TPU availability, tips) would print twice next to Hydra's log handler.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*treespec.*")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hald.errors import input_errors
    from hald.pipeline import run

    try:
        result = run(cfg)
    except input_errors() as e:
        # Bad input: one line with the cause and the fix, no traceback; nothing was half-written.
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        _close_wandb()
    return result.get("top1")


def _close_wandb() -> None:
    """Each job of a multirun gets its own W&B run: finish the previous one."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


if __name__ == "__main__":
    main()
