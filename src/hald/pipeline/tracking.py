"""Experiment tracking: loggers built for a run (Lightning's CSV and W&B loggers from conf/logger), named and
grouped so that a sweep's runs can be told apart, resumed into the same history, and given the whole config,
the cache-key lineage, phase switches and the final summary."""
from __future__ import annotations

import csv
import logging
import secrets
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from hald.artifacts import atomic_write
from hald.distill import method_of
from hald.labels.codecs import CODECS
from hald.labels.codecs.base import codec_class

log = logging.getLogger("hald")
WANDB_TARGET = "lightning.pytorch.loggers.wandb.WandbLogger"
RUN_ID_FILE = "wandb_run_id"


def codec_tag(codec: Any) -> str:
    """The codec's own short name of its config (Codec.tag), e.g. fp16, top5, q4log, top5q4."""
    c = dict(codec)
    return codec_class(c["name"]).tag(c) if c.get("name") in CODECS else str(c.get("name"))


def run_name(cfg: DictConfig) -> str:
    """What decided this run's images, store and training, so the runs of a sweep (over slc, label_budget,
    codec, schedule, seed, ...) get distinct names."""
    if cfg.labels.store:
        labels = f"store-{Path(str(cfg.labels.store)).name}"
    elif cfg.get("label_budget"):
        labels = f"budget{cfg.label_budget}-{codec_tag(cfg.labels.codec)}"
    else:
        labels = f"slc{cfg.slc}-{codec_tag(cfg.labels.codec)}"
    ipc = "" if method_of(cfg.distill.method).given else f"-ipc{cfg.ipc}"  # a given set has its own
    return (f"{cfg.task_name}-{cfg.dataset.name}-{cfg.distill.method}{ipc}-{labels}-{cfg.labels.teacher_mode}-"
            f"{cfg.schedule.preset}-{cfg.model.name}-seed{cfg.seed}")


def sweep_group(cfg: DictConfig) -> str:
    """A multirun's jobs share a W&B group named after the sweep directory; a single run is grouped by dataset."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"sweep-{Path(HydraConfig.get().sweep.dir).name}"
    return str(cfg.dataset.name)


def wandb_run_id(out_dir: Path, resuming: bool) -> str:
    """The run's W&B id, kept in the run dir: `train.resume=true` continues the same W&B run."""
    path = Path(out_dir) / RUN_ID_FILE
    if resuming and path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)  # W&B ids are short lowercase alphanumerics
    with atomic_write(path) as tmp:
        tmp.write_text(run_id)
    return run_id


def csv_version(save_dir: Path, name: str, resuming: bool) -> int | None:
    """On resume, the CSV logger writes on in the run's existing version (one history, not version_0 and
    version_1); otherwise Lightning picks the next free version."""
    if not resuming:
        return None
    versions = sorted(int(p.name.split("_")[1]) for p in (Path(save_dir) / name).glob("version_*")
                      if p.name.split("_")[1].isdigit())
    return versions[-1] if versions else None


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger deletes an existing metrics.csv when it opens its version directory. On resume
    the rows of the epochs the checkpoint holds (`epoch <= done_epoch`, and the epoch-less ones) are carried
    into the new file, so one history spans the resume; rows of an epoch the checkpoint lost are dropped."""

    def __init__(self, *args: Any, done_epoch: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._carry: list[dict[str, str]] = []
        path = Path(self.log_dir) / "metrics.csv"
        if done_epoch is not None and path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            self._carry = [{k: v for k, v in r.items() if v != ""} for r in rows  # as written
                           if not r.get("epoch") or float(r["epoch"]) <= done_epoch]

    @property
    def experiment(self):
        first = self._experiment is None
        exp = CSVLogger.experiment.fget(self)
        if first and self._carry:
            exp.metrics[:0] = self._carry
            self._carry = []
        return exp


def build_loggers(cfg: DictConfig, out_dir: Path, resuming: bool, done_epoch: int | None = None) -> list:
    if not cfg.get("logger"):
        return []
    loggers = []
    for lg in cfg.logger.values():
        if lg is None or "_target_" not in lg:
            continue
        if lg._target_ == WANDB_TARGET:
            loggers.append(instantiate(lg, name=lg.get("name") or run_name(cfg),
                                       group=lg.get("group") or sweep_group(cfg),
                                       id=wandb_run_id(out_dir, resuming), resume="allow" if resuming else None))
        elif lg._target_.endswith("CSVLogger"):
            version = csv_version(lg.save_dir, lg.get("name", "lightning_logs"), resuming)
            loggers.append(instantiate(lg, version=version, **({"done_epoch": done_epoch} if resuming else {})))
        else:
            loggers.append(instantiate(lg))
    return loggers


def wandb_runs(loggers: list) -> list:
    return [lg.experiment for lg in loggers if type(lg).__name__ == "WandbLogger"]


def log_run_start(loggers: list, cfg: DictConfig, out_dir: Path, lineage: dict[str, Any]) -> None:
    """W&B: the whole composed config (and Hydra's config.yaml as a file) plus the artifacts' cache keys."""
    for run in wandb_runs(loggers):
        run.config.update({**OmegaConf.to_container(cfg, resolve=True), "lineage": lineage}, allow_val_change=True)
        hydra_cfg = Path(out_dir) / ".hydra" / "config.yaml"
        if hydra_cfg.is_file():
            run.save(str(hydra_cfg), base_path=str(out_dir), policy="now")


def log_run_end(summary: dict[str, Any]) -> None:
    """W&B: the numbers a researcher compares runs by, in the run summary, and the printed table as a Table."""
    import sys

    if "wandb" not in sys.modules:
        return
    import wandb

    from hald.evaluate.summary import summary_rows

    if wandb.run is None:
        return
    wandb.run.summary.update({
        "top1": summary["top1"], "top5": summary["top5"], "top1_best": summary["top1_best"],
        "label_bytes": summary["label_bytes"], "slc": summary["slc"], "sli": summary["sli"], "ipc": summary["ipc"],
        "codec": summary["codec"], "schedule": summary["schedule"],
        "teachers": {t["name"]: t["top1"] for t in summary["teachers"]},
        "timings_s": summary["timings_s"],
        "phase_ends": {f"e{e['epoch']}:{e['phase']}": e["top1"] for e in summary["eval_log"]},
        **({"fair": summary["fair"]["mean"]} if summary.get("fair") else {}),
        **({"protocol": summary["protocol"], "top1_protocol": summary["top1_protocol"]["top1"]}
           if summary.get("protocol") else {}),
    })
    wandb.run.log({"summary": wandb.Table(columns=["what", "value"], data=[list(r) for r in summary_rows(summary)])})
