"""Section 8 of the speed benchmarks: what the fast paths cost in accuracy, read from the runs of
experiments/speed.sh (mnist5k, 3 seeds per variant) and from their label stores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


VARIANTS = {  # name: (what it runs, the overrides of experiments/speed.sh)
    "peers": "fp32, NCHW everywhere (compute=fp32 compute.channels_last=false)",
    "fp32": "fp32, channels-last (compute=fp32)",
    "student": "bf16 student only (compute=fast compute.squeeze=32-true compute.relabel=32-true)",
    "labels": "bf16 student + bf16 relabel (compute=fast compute.squeeze=32-true)",
    "fast": "the fast defaults: bf16 squeeze, relabel and student (compute=fast)",
}


def accuracy_rows(root: Path) -> list[dict]:
    """Student top-1 (final epoch) over seeds per variant, and stage seconds, from results.json files."""
    rows = []
    for name, what in VARIANTS.items():
        runs = [json.loads(p.read_text()) for p in sorted((root / name).glob("*/results.json"))]
        if not runs:
            continue
        top1 = np.array([r["top1"] for r in runs])
        train_s = np.mean([r["timings_s"].get("train", 0.0) for r in runs])
        rows.append({"variant": name, "runs": what, "seeds": len(runs),
                     "top-1": f"{top1.mean():.2f} ± {top1.std(ddof=1) if len(top1) > 1 else 0:.2f}",
                     "teacher top-1": f"{np.mean([r['teachers'][0]['top1'] for r in runs]):.2f}",
                     "train s (mean; load-dependent)": float(train_s)})
    return rows


def label_agreement(root: Path) -> list[dict]:
    """bf16 labels against fp32 labels of the same teacher and images (variants `student` and `labels` share
    both: squeeze in fp32, the same distilled images): KL(fp32 || bf16) per label and argmax agreement."""
    from hald.labels.store import LabelStore

    rows = []
    for a, b in zip(sorted((root / "student").glob("*/results.json")), sorted((root / "labels").glob("*/results.json"))):
        sa, sb = (LabelStore.open(json.loads(p.read_text())["store"], deep=False) for p in (a, b))
        # as decoded from the store (fp16 codec), renormalised: the codec's rounding leaves row sums ~1 +- 1e-3
        p32, p16 = (torch.cat([s[r].labels for r in range(len(s))]).double().clamp_min(1e-12) for s in (sa, sb))
        p32, p16 = p32 / p32.sum(1, keepdim=True), p16 / p16.sum(1, keepdim=True)
        kl = (p32 * (p32.log() - p16.log())).sum(1)
        rows.append({"seed": json.loads(a.read_text()).get("seed", a.parent.name), "labels": len(p32),
                     "KL(fp32 labels, bf16 labels) mean": float(kl.mean()), "KL max": float(kl.max()),
                     "top-1 agreement %": 100 * float((p32.argmax(1) == p16.argmax(1)).double().mean()),
                     "largest probability difference": float((p32 - p16).abs().max())})
    return rows


