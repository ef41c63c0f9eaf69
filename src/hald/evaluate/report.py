"""Aggregate runs (results.json + .hydra/config.yaml) into a markdown table: mean and std over seeds.

    python -m hald.evaluate.report outputs/<sweep dir> [more dirs] --by schedule soft_loss.t2
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def collect(roots: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for root in roots:
        for res in sorted(Path(root).rglob("results.json")):
            cfg_file = res.parent / ".hydra" / "config.yaml"
            cfg = OmegaConf.load(cfg_file) if cfg_file.exists() else OmegaConf.create({})
            runs.append({"result": json.loads(res.read_text()), "cfg": cfg, "dir": res.parent})
    return runs


def value(run: dict[str, Any], key: str) -> Any:
    if key == "schedule":
        return OmegaConf.select(run["cfg"], "schedule.preset")
    return OmegaConf.select(run["cfg"], key)


def fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.2f} ± {sd:.2f}"


def table(runs: list[dict[str, Any]], by: list[str], extra: tuple[str, ...] = ()) -> str:
    """One row per distinct value of the `by` config keys; `extra` adds result fields (first run's value)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(value(r, k) for k in by), []).append(r)
    head = [*by, *extra, "seeds", "top-1 (final)", "top-5 (final)", "top-1 at phase ends (mean)", "label bytes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ends: dict[int, list[float]] = {}
        for r in rs:
            for e in r["result"]["eval_log"]:
                ends.setdefault(e["epoch"], []).append(e["top1"])
        trace = " → ".join(f"e{e}: {statistics.mean(v):.1f}" for e, v in sorted(ends.items()))
        lines.append("| " + " | ".join([*(str(k) for k in key), *(str(rs[0]["result"].get(x)) for x in extra),
                                        str(len(rs)),
                                        fmt([r["result"]["top1"] for r in rs]), fmt([r["result"]["top5"] for r in rs]),
                                        trace, str(rs[0]["result"]["label_bytes"])]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", type=Path)
    ap.add_argument("--by", nargs="+", default=["schedule", "slc"])
    args = ap.parse_args(argv)
    runs = collect(args.roots)
    if not runs:
        raise SystemExit(f"no results.json under {[str(r) for r in args.roots]}")
    print(table(runs, args.by))


if __name__ == "__main__":
    main()
