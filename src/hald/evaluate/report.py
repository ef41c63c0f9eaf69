"""Aggregate runs (results.json + .hydra/config.yaml) into markdown tables (mean and std over seeds), and the
full report with figures (`write_report`, used by `python src/report.py DIR`).

    hald report outputs/<sweep dir> [more dirs] --by schedule soft_loss.t2   (= python src/report.py ...)
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hald.evaluate.protocols import comparable


def collect(roots: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for root in roots:
        for res in sorted(Path(root).rglob("results.json")):
            cfg_file = res.parent / ".hydra" / "config.yaml"
            cfg = OmegaConf.load(cfg_file) if cfg_file.exists() else OmegaConf.create({})
            runs.append({"result": json.loads(res.read_text()), "cfg": cfg, "dir": res.parent})
    return runs


def check_protocols(runs: list[dict[str, Any]], mixed: bool = False) -> list[str]:
    """The protocol names of the runs' cards; a one-line refusal when numbers measured under different cards
    would share a column (unless `mixed`: then the tables get a protocol column). Runs from before cards
    existed count as one card, 'unrecorded'."""
    cards: dict[tuple, list[dict]] = {}
    for r in runs:
        cards.setdefault(comparable(r["result"].get("protocol")), []).append(r)
    names = [(rs[0]["result"].get("protocol") or {}).get("name", "unrecorded") for rs in cards.values()]
    if len(cards) > 1 and not mixed:
        shown = "; ".join(f"{n} ({len(rs)} run(s), e.g. {rs[0]['dir']})" for n, rs in zip(names, cards.values()))
        raise SystemExit(f"report: these runs were measured under different evaluation protocols ({shown}): their "
                         f"numbers cannot share a column; fix: report each protocol's runs separately, or pass "
                         f"--mixed-protocols to tabulate them with a protocol column")
    return names


def protocol_of(run: dict[str, Any]) -> str:
    card = run["result"].get("protocol") or {}
    return f"{card.get('name', 'unrecorded')}" + (f" ({card['accuracy']})" if card.get("accuracy") else "")


def value(run: dict[str, Any], key: str) -> Any:
    if key == "schedule":
        return OmegaConf.select(run["cfg"], "schedule.preset")
    if key == "protocol":
        return protocol_of(run)
    return OmegaConf.select(run["cfg"], key)


def fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.2f} ± {sd:.2f}"


def table(runs: list[dict[str, Any]], by: list[str], extra: tuple[str, ...] = ()) -> str:
    """One row per distinct value of the `by` config keys; `extra` adds result fields (first run's value)."""
    groups = groups_of(runs, by)
    head = [*by, *extra, "seeds", "top-1 (final)", "top-5 (final)", "top-1 (protocol's rule)",
            "top-1 at phase ends (mean)", "label bytes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, rs in groups.items():
        ends: dict[int, list[float]] = {}
        for r in rs:
            for e in r["result"]["eval_log"]:
                ends.setdefault(e["epoch"], []).append(e["top1"])
        trace = " → ".join(f"e{e}: {statistics.mean(v):.1f}" for e, v in sorted(ends.items()))
        lines.append("| " + " | ".join([*(str(k) for k in key), *(str(rs[0]["result"].get(x)) for x in extra),
                                        str(len(rs)),
                                        fmt([r["result"]["top1"] for r in rs]), fmt([r["result"]["top5"] for r in rs]),
                                        fmt([r["result"]["top1_protocol"]["top1"] for r in rs
                                             if r["result"].get("top1_protocol")]),
                                        trace, str(rs[0]["result"]["label_bytes"])]) + " |")
    return "\n".join(lines)


def groups_of(runs: list[dict[str, Any]], by: list[str]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(value(r, k) for k in by), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def fair_table(runs: list[dict[str, Any]], by: list[str]) -> str | None:
    """HLR / IOR / LRS (mean ± std over the fair evaluation's seeds) per group; None when no run has them."""
    rows = [r for r in runs if r["result"].get("fair")]
    if not rows:
        return None
    head = [*by, "seeds", "HLR", "IOR", "LRS", "ARS", "real hard", "distilled hard", "distilled recipe",
            "random recipe"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, rs in groups_of(rows, by).items():
        f = rs[0]["result"]["fair"]  # one fair evaluation per run; the first run of the group
        cell = [f"{f['mean'][k]:.4f} ± {f['std'][k]:.4f}" if k in f["mean"] else "-"
                for k in ("hlr", "ior", "lrs", "ars")]
        cell += [f"{100 * f['mean'][k]:.2f}" for k in ("real_hard", "syn_hard", "syn_recipe", "random_recipe")]
        lines.append("| " + " | ".join([*(str(k) for k in key), str(len(f["seeds"])), *cell]) + " |")
    return "\n".join(lines)


def consistency_table(runs: list[dict[str, Any]], by: list[str]) -> str | None:
    """Crop consistency (JS, cosine) at each phase end, mean over the group's runs."""
    rows = [r for r in runs if r["result"].get("consistency")]
    if not rows:
        return None
    lines = ["| " + " | ".join([*by, "runs", "JS at phase ends", "cosine at phase ends"]) + " |", "|" + "---|" * (len(by) + 3)]
    for key, rs in groups_of(rows, by).items():
        at: dict[tuple, list[dict]] = {}
        for r in rs:
            for c in r["result"]["consistency"]:
                at.setdefault((c["epoch"], c["phase"]), []).append(c)
        js = " → ".join(f"e{e}:{p} {statistics.mean(c['js'] for c in cs):.3f}" for (e, p), cs in sorted(at.items()))
        cos = " → ".join(f"e{e}:{p} {statistics.mean(c['cos'] for c in cs):.3f}" for (e, p), cs in sorted(at.items()))
        lines.append("| " + " | ".join([*(str(k) for k in key), str(len(rs)), js, cos]) + " |")
    return "\n".join(lines)


def lvsd_table(runs: list[dict[str, Any]]) -> str | None:
    rows = [(r, json.loads((r["dir"] / "lvsd.json").read_text())) for r in runs if (r["dir"] / "lvsd.json").is_file()]
    if not rows:
        return None
    lines = ["| run | SLI | crops | mean Tr(Σ) | drift Tr(Σ)/SLI | slope (theory −1) |", "|---|---|---|---|---|---|"]
    for r, v in rows:
        lines.append(f"| {r['dir'].name} | {v['sli']} | {v['crops']} | {v['trace_mean']:.4g} | {v['drift_at_sli']:.4g} "
                     f"| {v['slope']:.3f} |")
    return "\n".join(lines)


def segments(timeline: str) -> list[tuple[str, int, int]]:
    """'soft 0-74 | hard 75-224' -> [('soft', 0, 74), ('hard', 75, 224)]."""
    out = []
    for part in timeline.split("|"):
        phase, span = part.split()
        a, b = span.split("-")
        out.append((phase, int(a), int(b)))
    return out


def epoch_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    """metric -> {epoch: value} from the run's CSV logger (the last value logged in each epoch)."""
    out: dict[str, dict[int, float]] = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        epoch = None
        with path.open() as f:
            for row in csv.DictReader(f):
                # Rows are in logging order; a row without an epoch (e.g. metrics logged by a callback at epoch
                # end) belongs to the epoch of the row before it.
                epoch = int(float(row["epoch"])) if row.get("epoch") else epoch
                if epoch is None:
                    continue
                for k, v in row.items():
                    if v not in ("", None) and k not in ("epoch", "step"):
                        out.setdefault(k, {})[epoch] = float(v)
    return out


def distilled_grid(run: dict[str, Any], path: Path, per_class: int = 10) -> Path | None:
    """The run's distilled_grid.png, or a grid drawn from its image folder (one row per class)."""
    have = run["dir"] / "distilled_grid.png"
    if have.is_file():
        return Path(shutil.copy2(have, path))
    root = Path(run["result"].get("images", ""))
    if not root.is_dir():
        return None
    import torch
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.utils import save_image

    rows = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(d.glob("*.png"))[:per_class]
        rows += [decode_image(str(f), mode=ImageReadMode.RGB).float() / 255 for f in files]
    if not rows or len({tuple(x.shape) for x in rows}) > 1:
        return None
    save_image(torch.stack(rows), path, nrow=per_class, padding=1)
    return path


def write_report(root: Path, by: list[str] | None = None, wandb_run: Any = None, mixed: bool = False) -> Path:
    """ROOT/report/report.md and its PNGs for a run or multirun directory; the same tables and images go to
    `wandb_run` when one is given."""
    from hald.evaluate import plots

    root = Path(root)
    runs = collect([root])
    if not runs:
        raise SystemExit(f"no results.json under {root}")
    by = by or ["schedule", "slc"]
    protocols = check_protocols(runs, mixed)
    if len(protocols) > 1 and "protocol" not in by:
        by = ["protocol", *by]
    out = root / "report"
    out.mkdir(exist_ok=True)
    tables = {"accuracy": table(runs, by)}
    images: dict[str, Path] = {}

    series: dict[str, list[tuple[float, float, float]]] = {}
    by_bytes: dict[tuple[str, int], list[float]] = {}
    for r in runs:
        by_bytes.setdefault((str(value(r, "schedule")), r["result"]["label_bytes"]), []).append(r["result"]["top1"])
    for (sched, nbytes), top1 in by_bytes.items():
        series.setdefault(sched, []).append((float(nbytes), statistics.mean(top1),
                                             statistics.stdev(top1) if len(top1) > 1 else 0.0))
    images["accuracy against label bytes"] = plots.accuracy_vs_bytes(series, out / "accuracy_vs_bytes.png")
    for (sched,), rs in groups_of(runs, ["schedule"]).items():  # one timeline per schedule: its first run
        r = rs[0]
        m = epoch_metrics(r["dir"])
        curves = {k.removeprefix("train/"): v for k, v in m.items() if k.startswith("train/loss")}
        acc = m.get("val/top1") or {e["epoch"]: e["top1"] for e in r["result"]["eval_log"]}
        images[f"phase timeline: {sched}"] = plots.phase_timeline(
            segments(r["result"]["schedule"]), curves, acc, out / f"timeline_{sched}.png",
            f"{sched}, SLI {r['result'].get('sli')} ({r['dir'].name})")
        if r["result"].get("grad_sim"):
            images[f"gradient similarity: {sched}"] = plots.grad_similarity(
                r["result"]["grad_sim"], out / f"grad_sim_{sched}.png", f"cos(∇hard, ∇soft), {sched}")
    for r in runs[:8]:
        if (r["dir"] / "lvsd.json").is_file():
            name = r["dir"].name if r["dir"] != root else "run"
            images[f"LVSD: {name}"] = plots.lvsd_slope(json.loads((r["dir"] / "lvsd.json").read_text()),
                                                       out / f"lvsd_{name}.png", f"LVSD ({name})")
    for name, make in (("fair evaluation (DD-Ranking's metrics; protocol in the title line)", fair_table), ("crop consistency", consistency_table)):
        t = make(runs, by)
        if t:
            tables[name] = t
    if lvsd_table(runs):
        tables["local semantic drift"] = lvsd_table(runs)
    grid = distilled_grid(runs[0], out / "distilled_grid.png")
    if grid is not None:
        images["distilled images"] = grid

    md = [f"# hald report: {root}", "", f"{len(runs)} run(s); groups by {', '.join(by)}; mean ± std over seeds; "
                                       f"evaluation protocol: {', '.join(protocols)}.", ""]
    for name, t in tables.items():
        md += [f"## {name}", "", t, ""]
    for name, p in images.items():
        md += [f"## {name}", "", f"![{name}]({p.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(md))
    if wandb_run is not None:
        to_wandb(wandb_run, tables, images)
    return report


def to_wandb(run: Any, tables: dict[str, str], images: dict[str, Path]) -> None:
    """Markdown tables as W&B Tables and the PNGs as W&B Images, under report/."""
    import wandb

    for name, md in tables.items():
        lines = [ln.strip().strip("|").split(" | ") for ln in md.splitlines() if not ln.startswith("|---")]
        run.log({f"report/{name}": wandb.Table(columns=[c.strip() for c in lines[0]],
                                               data=[[c.strip() for c in row] for row in lines[1:]])})
    run.log({f"report/{name}": wandb.Image(str(p)) for name, p in images.items()})


def wandb_run(enabled: bool, name: str):
    """The active W&B run, or a new offline one with --wandb; None when W&B is off or not installed."""
    if not enabled:
        return None
    try:
        import wandb
    except ImportError:
        print("wandb is not installed: tables and images are written to disk only", file=sys.stderr)
        return None
    return wandb.run or wandb.init(project="hald", job_type="report", name=name,
                                   mode=os.environ.get("WANDB_MODE", "offline"))


def main(argv: list[str] | None = None) -> None:
    """`hald report DIR [...]` (= python src/report.py): markdown tables and PNG figures into DIR/report/;
    `--print` only prints the table; `--wandb` also logs the tables and images to a W&B run."""
    ap = argparse.ArgumentParser(description="tables and figures over run / multirun dirs")
    ap.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories (results.json below them)")
    ap.add_argument("--by", nargs="+", default=["schedule", "slc"], help="config keys that make a table row")
    ap.add_argument("--print", action="store_true", help="print the table only (no files)")
    ap.add_argument("--wandb", action="store_true", help="also log the tables and images to W&B")
    ap.add_argument("--mixed-protocols", action="store_true",
                    help="tabulate runs measured under different evaluation protocols (with a protocol column)")
    args = ap.parse_args(argv)
    if args.print:
        runs = collect(args.dirs)
        if not runs:
            raise SystemExit(f"no results.json under {[str(r) for r in args.dirs]}")
        mixed = len(check_protocols(runs, args.mixed_protocols)) > 1
        print(table(runs, ["protocol", *args.by] if mixed and "protocol" not in args.by else args.by))
        return
    for d in args.dirs:
        run = wandb_run(args.wandb, f"report-{d.name}")
        print(f"report: {write_report(d, args.by, run, args.mixed_protocols)}")
        if run is not None:
            run.finish()


if __name__ == "__main__":
    main()
