"""The end-of-run summary table (rich) printed by `python src/run.py`."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from hald.evaluate.protocols import best_at


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def best_every(eval_log: list[dict[str, Any]], every: int, total_epochs: int) -> dict[str, Any] | None:
    """The papers' reported metric: the best test top-1 over the evaluations at epochs 0, N, 2N, ... and the
    last (HALD / CV-DD validate/train_fkd.py: `epoch % 10 == 0 or epoch == epochs - 1`, best_acc1), without
    the extra phase-end evaluations. None when train.eval_every is 0."""
    if every <= 0:
        return None
    best, n = best_at(eval_log, set(range(0, total_epochs, every)) | {total_epochs - 1})
    if best is None:
        return None
    return {"every": every, "top1": best["top1"], "epoch": best["epoch"], "evaluations": n}


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for t in s["teachers"]:
        acc = f"{t['top1']:.2f}%" if t["top1"] is not None else "n/a (given)"
        rows.append((f"teacher {t['name']} top-1 (test)", f"{acc}{'  [reused]' if t['reused'] else ''}"))
    rows += [
        ("student", f"{s['student']} on {s['distill']} images (ipc={s['ipc']})"
                    f"{'  [images reused]' if s['images_reused'] else ''}"),
        ("student top-1 / top-5 (test, final epoch)", f"{s['top1']:.2f}% / {s['top5']:.2f}%"),
        *([(f"student top-1 under the {c['name']} protocol", f"{s['top1_protocol']['top1']:.2f}% "
            f"({s['top1_protocol']['rule']}, epoch {s['top1_protocol']['epoch']})")]
          if (c := s.get("protocol")) and s.get("top1_protocol") else []),
        ("student best top-1 (logged at eval epochs)", f"{s['top1_best']:.2f}%" if s["top1_best"] is not None else "-"),
        *([(f"student best top-1 of the evaluations every {b['every']} epochs (the papers' metric)",
            f"{b['top1']:.2f}% at epoch {b['epoch']} (of {b['evaluations']} evaluations)")]
          if (b := s.get("top1_best_every")) else []),
        ("labels stored", f"SLC={s['slc']}  SLI={s['sli']}{'  [reused]' if s['labels_reused'] else ''}"),
        ("label bytes on disk", f"{s['label_bytes']:,} B ({_fmt_bytes(s['label_bytes'])})"
                                + (f" of a {s['label_budget']:,} B budget" if s.get("label_budget") else "")
                                + f"; codec {s.get('codec', '')}"),
        *([("labels made with", label_settings_row(ls))] if (ls := s.get("label_settings")) else []),
        ("phase timeline", s["schedule"]),
        ("test top-1 at phase ends", "  ".join(f"e{e['epoch']}:{e['phase']} {e['top1']:.1f}%" for e in s["eval_log"])),
        ("lr / eta", f"{s['lr']:g} / {s['eta']:g}"),
        ("stage times (s)", "  ".join(f"{k} {v}" for k, v in s["timings_s"].items())),
        *([("compute", compute_row(c))] if (c := s.get("compute")) else []),
        ("output directory", s["output_dir"]),
    ]
    return rows + analysis_rows(s)


def label_settings_row(ls: dict[str, Any]) -> str:
    """The store's own record of how its labels were made (a passed-in store: its manifest, not the config)."""
    crop, mix = ls.get("crop") or {}, ls.get("mix") or {}
    mode = ls.get("teacher_mode")
    if mode == "bssl" and ls.get("bssl_group_size"):
        mode = f"bssl (groups of {ls['bssl_group_size']})"
    teachers = f" ({'+'.join(ls['teachers'])})" if ls.get("teachers") else ""  # not [..]: rich markup
    mixing = f"cutmix {mix.get('alpha')}" if mix.get("type") == "cutmix" else "no mix"
    return (f"T={ls.get('temperature'):g}, teacher {mode}{teachers}, batch {ls.get('batch_size')}, crop "
            f"{crop.get('size')} px scale {crop.get('scale')} ratio {_ratio(crop.get('ratio'))}, flip "
            f"{ls.get('flip_p')}, {mixing}")


def _ratio(r: Any) -> str:
    return "[" + ", ".join(f"{float(v):.3g}" for v in r) + "]" if r else "-"


def protocol_row(c: dict[str, Any]) -> str:
    lr = f"LR grid {c['lr']} for {', '.join(c['lr_searched_for'])}" if isinstance(c["lr"], list) else f"lr {c['lr']:g}"
    real = c["real"] if isinstance(c["real"], str) else f"real {c['real']['top1']}% ({c['real']['source']})"
    return (f"{c['name']}: {c['accuracy']}; seeds {c['seeds']}, std {c['std']}; {lr}; optimizer "
            f"{c['optimizer']}; hard labels on {c['hard_labels']}; {real}; scores in {c['units']}")


def analysis_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows of the optional analyses: crop consistency, fair metrics, LVSD."""
    rows = [("evaluation protocol (card)", protocol_row(s["protocol"]))] if s.get("protocol") else []
    if s.get("consistency"):
        rows.append(("crop consistency at phase ends (JS / cos)",
                     "  ".join(f"e{c['epoch']}:{c['phase']} {c['js']:.3f}/{c['cos']:.3f}" for c in s["consistency"])))
    if s.get("fair"):
        m, sd = s["fair"]["mean"], s["fair"]["std"]
        names = ("hlr", "ior", "lrs", *(("ars",) if "ars" in m else ()))
        rows.append((f"fair ({s['fair'].get('protocol', 'hald')} protocol, {len(s['fair']['seeds'])} seeds): "
                     f"{' / '.join(k.upper() for k in names)}",
                     "  ".join(f"{k.upper()} {m[k]:.4f} ± {sd[k]:.4f}" for k in names)))
    if s.get("lvsd"):
        v = s["lvsd"]
        rows.append(("LVSD: mean Tr(Sigma) / drift Tr/SLI / slope",
                     f"{v['trace_mean']:.3g} / {v['drift_at_sli']:.3g} (SLI {v['sli']}) / {v['slope']:.3f}"))
    return rows


def compute_row(c: dict[str, Any]) -> str:
    """How the arithmetic ran (hald/compute.py): each stage's precision, the layout, compilation."""
    stages = "  ".join(f"{k} {c[k]}" for k in ("squeeze", "recover", "relabel", "student") if k in c)
    return f"{stages}; {'channels-last' if c.get('channels_last') else 'NCHW'}{'; compiled' if c.get('compile') else ''}"


def print_summary(s: dict[str, Any]) -> None:
    table = Table(title=f"hald: {s['dataset']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in summary_rows(s):
        table.add_row(k, v)
    Console(width=140).print(table)
