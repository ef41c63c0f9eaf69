"""The report's figures (matplotlib, Agg backend: no display needed). Each function draws one PNG from plain data."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PHASE_COLOURS = {"soft": "#cfe2f3", "hard": "#f4cccc"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_vs_bytes(series: dict[str, list[tuple[float, float, float]]], path: Path) -> Path:
    """series: schedule -> [(label bytes, mean top-1, std)], one line with error bars per schedule."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in sorted(series.items()):
        pts = sorted(pts)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=name)
    ax.set_xscale("log")
    ax.set(xlabel="label bytes on disk", ylabel="student top-1 (%)", title="accuracy against label storage")
    ax.grid(alpha=0.3)
    ax.legend(title="schedule", fontsize=8)
    return _save(fig, path)


def phase_timeline(segments: Sequence[tuple[str, int, int]], curves: dict[str, dict[int, float]],
                   accuracy: dict[int, float], path: Path, title: str = "") -> Path:
    """Loss curves per epoch over shaded phases (segments: (phase, first epoch, last epoch)); test top-1 at the
    evaluated epochs on a second axis."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for phase, a, b in segments:
        ax.axvspan(a - 0.5, b + 0.5, color=PHASE_COLOURS.get(phase, "#eeeeee"), alpha=0.8, lw=0)
        ax.text((a + b) / 2, 1.0, phase, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    for name, values in curves.items():
        xs, ys = [], []
        for x in sorted(values):  # a curve is absent in the other phase: break the line there, never bridge it
            if xs and x - xs[-1] > 1:
                xs.append(float("nan")), ys.append(float("nan"))
            xs.append(x), ys.append(values[x])
        ax.plot(xs, ys, "o-", ms=3, lw=0.8, label=name)
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="training loss")
    if accuracy:
        ax2 = ax.twinx()
        xs = sorted(accuracy)
        ax2.plot(xs, [accuracy[x] for x in xs], "k-o", ms=3, lw=1, label="test top-1")
        ax2.set_ylabel("test top-1 (%)")
        ax2.legend(loc="lower right", fontsize=8)
    if curves:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9, pad=14)
    return _save(fig, path)


def lvsd_slope(lvsd: dict[str, Any], path: Path, title: str = "") -> Path:
    """Squared deviation of an s-crop average against s (log-log) with the theory line Tr(Sigma)/s."""
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    s = lvsd["sizes"]
    ax.loglog(s, lvsd["msd_corrected"], "o-", label=f"measured (slope {lvsd['slope']:.3f})")
    ax.loglog(s, lvsd["msd"], "x:", alpha=0.6, label="raw (vs. mean of all crops)")
    ax.loglog(s, lvsd["predicted"], "k--", lw=1, label="Tr(Σ)/s (slope −1)")
    if lvsd.get("sli"):
        ax.axvline(lvsd["sli"], color="grey", lw=0.8)
        ax.text(lvsd["sli"], ax.get_ylim()[0], f" SLI={lvsd['sli']}", fontsize=7, va="bottom")
    ax.set(xlabel="crops averaged (s)", ylabel="E‖p̂_s − p̄‖²", title=title or "local semantic drift")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)


def grad_similarity(points: list[dict[str, float]], path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([p["step"] for p in points], [p["cos"] for p in points], ".-", ms=3, lw=0.8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="optimizer step", ylabel="cos(∇ hard, ∇ soft)", title=title or "gradient similarity")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def landscape_plot(res: dict[str, Any], path: Path, title: str = "") -> Path:
    """Contours of the loss on the 2-D plane (evaluate/landscape.py), log-spaced levels, the weights at (0, 0)."""
    import numpy as np

    c = np.asarray(res["coords"])
    loss = np.asarray(res["loss"])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    levels = np.geomspace(max(loss.min(), 1e-4), loss.max(), 15)
    cs = ax.contour(c, c, loss.T, levels=levels, cmap="viridis", linewidths=0.8)  # rows = d1 (x axis)
    ax.clabel(cs, fontsize=6, fmt="%.2g")
    ax.plot([0], [0], "r*", ms=8)
    ax.set(xlabel="direction 1", ylabel="direction 2", title=title or "loss landscape", aspect="equal")
    return _save(fig, path)
