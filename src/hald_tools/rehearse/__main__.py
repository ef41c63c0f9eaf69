"""`make rehearse`: every paper preset end to end at its real shape on stand-in data, with a cost table.

    python -m hald_tools.rehearse [--only hald_tiny_slc50,cvdd_in1k] [--gpu-tflops 20]

Each preset runs as a user runs it (`python src/run.py experiment=NAME ...`, one subprocess, its own run
directory, one artifact cache per dataset so equal stages are reused as they would be), with the counts of
hald/rehearse/presets.py shrunk. Then, per preset: the stages run, label bytes, the full preset's exact store
bytes, peak memory (the process's max RSS), seconds and seconds per unit of every stage, and the full run's
time: here (measured seconds x full / rehearsal FLOPs per stage, hald/rehearse/estimate.py) and on one GPU
(full FLOPs at an assumed sustained rate). Writes experiments/rehearse.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hald.distill import method_of
from hald_tools.rehearse import standins
from hald_tools.rehearse.estimate import stage_costs
from hald_tools.rehearse.presets import (BY_NAME, FAMILIES, PRESETS, PUBLISHED_FULL_IPC, PUBLISHED_IPC, STANDIN,
                                         Preset)

ROOT = Path(__file__).resolve().parents[3]
DATASET = {k: f.dataset for k, f in FAMILIES.items()}
CLASSES = {k: f.classes for k, f in FAMILIES.items()}
POOL_IN1K = ["resnet18", "resnet50", "shufflenet_v2_x1_0", "mobilenet_v2", "densenet121"]
STAGES = ("squeeze", "priors", "distill", "relabel", "train", "evaluate")


def compose(overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = hcompose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def make_data(work: Path, presets: list[Preset]) -> dict[str, str]:
    t0 = time.time()
    data = work / "data"
    paths = {**{family: "" for family in FAMILIES}, "published": ""}
    for family in sorted({p.family for p in presets}):
        paths[family] = str(standins.family_data(family, data, **_counts(family)))
    if any(p.family == "in1k" for p in presets):
        paths["published"] = str(standins.published_set(data / "published_ipc1", PUBLISHED_IPC))
        standins.torchvision_weights(work / "torch_home", POOL_IN1K)
    print(f"rehearse: stand-in data ready in {time.time() - t0:.0f} s under {data}", flush=True)
    return paths


def _counts(family: str) -> dict[str, int]:
    return {"train_per_class": STANDIN[family]["train"], "val_per_class": STANDIN[family]["test"]}


def run_preset(p: Preset, paths: dict[str, str], work: Path) -> dict[str, Any]:
    """One preset as a subprocess: rc, wall seconds, peak RSS, its results.json and the command."""
    run_dir, log = work / "runs" / p.name, work / "logs" / f"{p.name}.log"
    shutil.rmtree(run_dir, ignore_errors=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    overrides = [f"experiment={p.name}", *p.overrides(paths)]
    cmd = [sys.executable, "src/run.py", *overrides, f"paths.cache_dir={work / 'cache' / p.family}",
           f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "TORCH_HOME": str(work / "torch_home"), "WANDB_MODE": "disabled",
           "HALD_PROGRESS_EVERY": os.environ.get("HALD_PROGRESS_EVERY", "60")}
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    row = {"preset": p.name, "rc": proc.returncode, "wall_s": time.time() - t0,
           "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "log": str(log), "overrides": overrides}
    results = run_dir / "results.json"
    if proc.returncode == 0 and results.is_file():
        row["results"] = json.loads(results.read_text())
        (run_dir / "rehearsal.json").write_text(json.dumps(row, indent=1))  # --tables-only rebuilds from it
    return row


def stage_status(stage: str, res: dict[str, Any], built_teachers: list[str]) -> str:
    """built (its time is in timings_s: the cache records a stage's time only when it builds it), reused,
    loaded (pretrained or passed-in teachers), folder read (distill=folder), or run (train, evaluate)."""
    built = stage in res["timings_s"]
    if stage == "squeeze":
        if built_teachers:
            return "built"
        return "reused" if any(t["source"] == "squeeze" for t in res["teachers"]) else "loaded"
    if stage == "distill" and method_of(res["distill"]).given:
        return "folder read"
    if stage in ("distill", "relabel", "priors"):
        return "built" if built else "reused"
    return "run"


def built_teachers(log: Path) -> list[str]:
    """Teachers this run trained (squeeze logs each one's test top-1 when it builds it, never on reuse)."""
    return re.findall(r"\] squeeze (\S+): test top-1", log.read_text()) if log.is_file() else []


def cost_rows(p: Preset, row: dict[str, Any], rates: dict[tuple[str, str], float], gpu_tflops: float
              ) -> list[dict[str, Any]]:
    """Per stage: measured seconds and units, and the full run's units and time (here and on one GPU)."""
    res = row["results"]
    published = ["distill.path=/published"] if p.published else []
    rcfg = compose(row["overrides"])
    fcfg = compose([f"experiment={p.name}", *published])
    C = CLASSES[p.family]
    rcost = stage_costs(rcfg, STANDIN[p.family]["train"] * C, STANDIN[p.family]["test"] * C,
                        ipc=PUBLISHED_IPC if p.published else None)
    fcost = stage_costs(fcfg, *FAMILIES[p.family].splits, ipc=PUBLISHED_FULL_IPC if p.published else None)
    timings = res["timings_s"]
    trained = built_teachers(Path(row["log"]))
    if trained:  # squeeze's seconds cover the teachers this run trained, not those it reused
        rcost["squeeze"] = stage_costs(rcfg, STANDIN[p.family]["train"] * C, STANDIN[p.family]["test"] * C,
                                       ipc=PUBLISHED_IPC if p.published else None, only_teachers=trained)["squeeze"]
    measured_rate = [timings[s] / rcost[s].flops for s in rcost if timings.get(s) and rcost[s].flops]
    out = []
    for s in STAGES:
        if s not in rcost and s not in fcost:
            continue
        r, f = rcost.get(s), fcost[s]
        status = stage_status(s, res, trained) if s in rcost else "not run"
        secs = timings.get(s)
        key = (p.family, s)
        if status in ("built", "run") and secs and r is not None and r.flops:  # this machine's s per FLOP
            rates[key] = secs / r.flops
        rate = rates.get(key)
        how = "measured"
        if not f.flops:
            rate, how = 0.0, "no work in the full run" + (" (weights loaded by name)" if status == "loaded" else "")
        elif rate is None or status == "not run":
            rate, how = sum(measured_rate) / max(len(measured_rate), 1), "at the preset's mean measured rate"
        elif status == "reused":
            how = "rate of the run that built it"
        full_s = f.flops * rate if f.flops else 0.0
        out.append({"stage": s, "rehearsal": status, "unit": (r or f).unit,
                    "units": r.units if r else 0, "s": secs if status in ("built", "run") else None,
                    "s/unit": secs / r.units if secs and r and r.units and status in ("built", "run") else None,
                    "full units": f.units, "full here h": full_s / 3600,
                    "full GPU h": f.flops / (gpu_tflops * 1e12) / 3600, "how": how,
                    "parts": "; ".join(f.parts)})
    return out


def store_bytes_full(p: Preset) -> tuple[int, int, int]:
    """The full preset's store (shards, manifest reserve, SLI) as the planner writes it."""
    from hald.pipeline.stages import plan_relabel

    cfg = compose([f"experiment={p.name}", *(["distill.path=/published"] if p.published else [])])
    C = CLASSES[p.family]
    ipc = PUBLISHED_FULL_IPC if p.published else int(cfg.ipc)
    names = [f"{c:05d}" for c in range(C)] if p.published else standins.wnids(C)
    cfg.ipc = ipc
    plan = plan_relabel(cfg, ipc * C, ipc, names)
    return plan.sli * plan.shard_bytes, plan.manifest_reserve, plan.sli


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def preset_section(p: Preset, row: dict[str, Any], costs: list[dict[str, Any]], store: tuple[int, int, int],
                   gpu_tflops: float, start: dict[str, str]) -> str:
    res = row["results"]
    shards, reserve, sli = store
    head = [f"### {p.name}", "", f"Measured {start['date']} (load average at the rehearsal's start {start['load']}).",
            f"`python src/run.py {' '.join(row['overrides']).replace(str(ROOT) + '/', '')}`: rc 0, "
            f"{row['wall_s']:.0f} s, peak memory {row['peak_rss_gb']:.2f} GB (max RSS).",
            f"Label store, rehearsal: {res['label_bytes']:,} B (SLC {res['slc']}, SLI {res['sli']}, "
            f"{CLASSES[p.family]} classes per label). Full preset: {shards:,} B of shards (SLI {sli})"
            + (f" + a manifest of at most {reserve:,} B." if reserve else " and its manifest (a few KB)."), ""]
    head += [f"Note: {n}." for n in p.notes] + ([""] if p.notes else [])
    cols = ["stage", "rehearsal", "unit", "units", "s", "s/unit", "full units", "full here h",
            "full GPU h", "how", "parts"]
    lines = ["| " + " | ".join(c if c != "full GPU h" else f"full GPU h @ {gpu_tflops:g} TFLOP/s" for c in cols)
             + " |", "|" + "---|" * len(cols)]
    for c in costs:
        lines.append("| " + " | ".join(fmt(c[k]) for k in cols) + " |")
    return "\n".join(head + lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated presets (default: all)")
    ap.add_argument("--work", type=Path, default=ROOT / "outputs" / "rehearse")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "rehearse.md")
    ap.add_argument("--gpu-tflops", type=float, default=20.0,
                    help="sustained FLOP rate assumed for one GPU (fp32 presets, TF32 convolutions)")
    ap.add_argument("--merge", action="store_true",
                    help="with --only: replace these presets' rows and sections in --out, keep the others' "
                         "(each section says when it was measured)")
    ap.add_argument("--tables-only", action="store_true",
                    help="rebuild the tables from the last rehearsal's runs under --work (nothing is run)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        sys.exit(f"--only {','.join(unknown)}: not a rehearsed preset; fix: one of {','.join(BY_NAME)}")
    presets = [BY_NAME[n] for n in names] if names else PRESETS
    t0 = time.time()
    started = args.work / "rehearsal-start.json"
    if args.tables_only:
        if not started.is_file():
            sys.exit(f"--tables-only: no rehearsal under {args.work}; fix: run `make rehearse` first")
        paths, start = {}, json.loads(started.read_text())
    else:
        start = {"date": time.strftime("%Y-%m-%d"), "load": " / ".join(f"{v:.2f}" for v in os.getloadavg())}
        paths = make_data(args.work, presets)
        for family in {p.family for p in presets}:  # a rehearsal measures: every stage built anew (data stays)
            shutil.rmtree(args.work / "cache" / family, ignore_errors=True)
        started.write_text(json.dumps(start))
    rates: dict[tuple[str, str], float] = {}
    sections, summary, failed = [], [], []
    for k, p in enumerate(presets, 1):
        print(f"rehearse {k}/{len(presets)} {p.name}: running (log {args.work / 'logs' / (p.name + '.log')})",
              flush=True)
        saved = args.work / "runs" / p.name / "rehearsal.json"
        if args.tables_only:
            row = json.loads(saved.read_text()) if saved.is_file() else {"rc": "not run", "log": ""}
        else:
            row = run_preset(p, paths, args.work)
        if "results" not in row:
            failed.append(p.name)
            tail = Path(row["log"]).read_text().splitlines()[-15:] if row["log"] else []
            print(f"rehearse {p.name}: FAILED rc {row['rc']}; last lines of its log:\n  " + "\n  ".join(tail),
                  flush=True)
            continue
        costs, store = cost_rows(p, row, rates, args.gpu_tflops), store_bytes_full(p)
        sections.append(preset_section(p, row, costs, store, args.gpu_tflops, start))
        print(sections[-1], flush=True)
        shards = store[0]
        summary.append({"preset": p.name,
                        "stages": " ".join(f"{c['stage']}:{c['rehearsal']}" for c in costs),
                        "label B (rehearsal)": row["results"]["label_bytes"], "store B (full preset)": shards,
                        "peak GB": row["peak_rss_gb"], "rehearsal s": row["wall_s"],
                        "full run here (days)": sum(c["full here h"] for c in costs) / 24,
                        "full run, one GPU (h)": sum(c["full GPU h"] for c in costs)})
    wall = sum(s["rehearsal s"] for s in summary) if args.tables_only else time.time() - t0
    header = (f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU, torch "
              f"{__import__('torch').__version__}; {start['date']}; command: `make rehearse`; load average at "
              f"start {start['load']}; {wall / 60:.1f} minutes in all"
              + (" (the presets' runs; tables rebuilt with --tables-only)." if args.tables_only else "."))
    table = ["| " + " | ".join(summary[0]) + " |", "|" + "---|" * len(summary[0])] if summary else []
    table += ["| " + " | ".join(fmt(v) for v in s.values()) + " |" for s in summary]
    text = "\n".join(["# Rehearsal at the real shapes", "", header, "", HOW, "", "## Summary", "", *table, "",
                      "## Per preset", "", *sections])
    if args.merge and args.out.is_file():
        text = merge(args.out.read_text(), text)
    if not names or args.merge:  # a partial run does not overwrite the committed table unless asked
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
        print(f"written {args.out}")
    else:
        (args.work / "rehearse.md").write_text(text)
        print(f"written {args.work / 'rehearse.md'}")
    print("\n".join(["", *table]), flush=True)
    if failed:
        print(f"rehearse: {len(failed)} preset(s) failed: {', '.join(failed)}", flush=True)
        return 1
    return 0


def _parts(text: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """A rehearse.md -> (its header line, summary rows by preset, per-preset sections by preset)."""
    header = next((ln for ln in text.splitlines() if ln.startswith("Machine:")), "")
    summary = text.split("## Summary", 1)[1].split("## Per preset", 1)[0] if "## Summary" in text else ""
    rows = {ln.split("|")[1].strip(): ln for ln in summary.splitlines()[3:] if ln.startswith("| ")}
    body = text.split("## Per preset", 1)[1] if "## Per preset" in text else ""
    sections = {}
    for chunk in body.split("\n### ")[1:]:
        name = chunk.split("\n", 1)[0].strip()
        sections[name] = "### " + chunk.rstrip() + "\n"
    return header, rows, sections


def merge(old: str, new: str) -> str:
    """`--only ... --merge`: the new run's presets replace theirs, the others stay as measured before (a
    section from before this rule gets the old file's date)."""
    old_header, old_rows, old_sections = _parts(old)
    new_header, new_rows, new_sections = _parts(new)
    old_date = re.search(r"; (\d{4}-\d{2}-\d{2});", old_header)
    for name, sec in old_sections.items():
        if "\nMeasured " not in sec and old_date:
            head, rest = sec.split("\n", 1)
            old_sections[name] = f"{head}\n\nMeasured {old_date.group(1)} (an earlier `make rehearse`).{rest}"
    rows, sections = {**old_rows, **new_rows}, {**old_sections, **new_sections}
    order = [p.name for p in PRESETS if p.name in rows]
    columns = new.split("## Summary", 1)[1].split("## Per preset", 1)[0].strip().splitlines()[:2]
    header = (new_header.rstrip(".") + f"; merged (--merge) with the earlier rehearsal's other presets "
              f"({old_header.split('; ')[1] if '; ' in old_header else 'date unknown'}): each section says when "
              f"it was measured.")
    return "\n".join(["# Rehearsal at the real shapes", "", header, "", HOW, "", "## Summary", "", *columns,
                      *(rows[n] for n in order), "", "## Per preset", "", *(sections[n] for n in order if n in sections)])


HOW = """What is shrunk (counts only; hald/rehearse/presets.py): ipc 1, soft-label passes (IN-1K 1, the others 2),
4 student epochs of 3 steps, one test batch per student evaluation, 1 crop pair per image for the
crop-consistency probe, 1 teacher squeeze step, RDED candidates (mipc / num_crops: what its selection
needs), 1 recover iteration (FADRM: 1 per stage) and 1 recover unit run (the others keep their RDED init),
CIM's 1 step of 1 class (the others keep their mosaic), the CV-DD prior runs' counts, stand-in images per class
(Tiny and CIFAR-100 10 train / 1 val, IN-1K 4 / 1, ImageNette and ImageWoof 8 / 1), loader workers 0. Kept: all 10 /
100 / 200 / 1,000 classes in every label row, 32 / 64 / 224 px, the official layouts (tiny-imagenet-200;
cifar-100-python pickles; WNID folders read through Resize 256; 5-digit folders of 224 px JPEGs for published
sets), the paper's models (torchvision
IMAGENET1K_V1 file names, random-init stand-ins under TORCH_HOME), batch sizes, T, codecs, teacher modes,
schedules and precision.

Full-run time here = for each stage, its measured seconds x (the full preset's FLOPs / the rehearsal's),
FLOPs from the composed configs (hald/rehearse/estimate.py: PyTorch's FlopCounterMode per model at the
preset's resolution, training = 3x forward); a stage reused from an earlier preset takes the rate of the run
that built it. Fixed costs (start-up, JPEG decoding at rehearsal counts) inflate the measured rate, so this
errs long. One GPU = the full preset's FLOPs at the assumed sustained rate (--gpu-tflops): data loading is
not counted, and batch-16 steps rarely reach it, so read it as a lower bound."""


if __name__ == "__main__":
    sys.exit(main())
