"""Figures of the "Since last run" page. Plotting only: every number comes from the History
model (worker/history.py).

- `history_trend`: o_dist_mean (size-free distance to P) per secondary over the runs, oldest
  left, this run last, baseline marked; a second panel with the image counts. Drawn when
  at least one secondary has a value.
- `history_new_images`: per secondary with new images, the I_dist of the new images against
  the images seen before: min-max line, box from p50 to p90, mean marked. Drawn when some
  secondary has new images and an earlier run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from worker.history import History, Summary  # noqa: E402
from worker.report.style import save_png  # noqa: E402

DPI = 120


def _short(run_id: str | None, i: int) -> str:
    """'20260103T020000Z-cccccc' -> '01-03 02:00'; unknown ids -> 'run i'."""
    if not run_id or len(run_id) < 15:
        return f"run {i + 1}"
    return f"{run_id[4:6]}-{run_id[6:8]} {run_id[9:11]}:{run_id[11:13]}"


def plot_trend(history: History, path: Path) -> Path | None:
    runs = history.runs
    x_of = {rid: i for i, rid in enumerate(runs)}
    drawn = False
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(7.5, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    cmap = plt.get_cmap("tab10")
    for k, sec in enumerate(history.secondaries):
        # one slot per run; NaN where the secondary was absent or had no value (a gap)
        ys = np.full(len(runs), np.nan)
        yc = np.full(len(runs), np.nan)
        for p in sec.series:
            x = x_of.get(p.run_id, len(runs) - 1)
            ys[x] = np.nan if p.o_dist_mean is None else p.o_dist_mean
            yc[x] = np.nan if p.count is None else p.count
        colour = cmap(k % 10)
        if np.isfinite(ys).any():
            ax.plot(range(len(runs)), ys, marker="o", ms=4, color=colour, label=sec.name)
            drawn = True
        if np.isfinite(yc).any():
            ax_n.plot(range(len(runs)), yc, marker=".", color=colour)
    if not drawn:
        plt.close(fig)
        return None
    if history.baseline and history.baseline in x_of:
        ax.axvline(x_of[history.baseline], color="grey", ls="--", lw=1)
        ax.text(x_of[history.baseline], ax.get_ylim()[1], " baseline", va="top", fontsize=7)
    ax.set_ylabel("o_dist_mean (to P)")
    ax.set_title("Distance to the primary set per run", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax_n.set_ylabel("images")
    ax_n.yaxis.get_major_locator().set_params(integer=True)
    ax_n.grid(alpha=0.3)
    ticks = list(range(len(runs)))
    step = max(1, len(ticks) // 12)
    ax_n.set_xticks(ticks[::step])
    ax_n.set_xticklabels([_short(runs[i], i) for i in ticks[::step]], rotation=30, fontsize=7)
    fig.tight_layout()
    return save_png(fig, path, DPI)


def _range(ax, y: float, s: Summary, colour, label: str) -> None:
    if s.count == 0 or s.min is None:
        return
    ax.plot([s.min, s.max], [y, y], color=colour, lw=1)
    ax.add_patch(
        plt.Rectangle((s.p50, y - 0.15), s.p90 - s.p50, 0.3, color=colour, alpha=0.5, label=label)
    )
    ax.plot([s.mean], [y], marker="D", color="black", ms=4)


def _with_new_images(history: History) -> list:
    return [s for s in history.secondaries if s.new_images is not None and s.new_images.count > 0]


def plot_new_images(history: History, path: Path) -> Path | None:
    rows = _with_new_images(history)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.7 * len(rows)))
    labels = []
    for k, sec in enumerate(rows):
        ni = sec.new_images
        _range(ax, k + 0.2, ni.i_dist_new, "tab:red", "new" if k == 0 else None)
        _range(ax, k - 0.2, ni.i_dist_seen, "tab:blue", "seen before" if k == 0 else None)
        labels.append(f"{sec.name}\n{ni.count} new, {ni.far_fraction:.0%} far")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.autoscale(axis="x")
    ax.set_xlabel("I_dist (line: min-max, box: p50-p90, diamond: mean)")
    ax.set_title("New images against the images seen before", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return save_png(fig, path, DPI)


def history_figures(history: History) -> list[tuple[str, Callable[[History, Path], Path | None]]]:
    """(figure key, draw) of the history page's figures that `history` has data for;
    draw(history, path) writes one."""
    figures = [("history_trend", plot_trend)]
    if _with_new_images(history):
        figures.append(("history_new_images", plot_new_images))
    return figures


def make_history_figures(history: History, out_dir: str | Path) -> dict[str, Path]:
    """Write the page's PNGs into out_dir; {figure key: path} for those drawn."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Path] = {}
    for key, fn in history_figures(history):
        p = fn(history, out / f"{key}.png")
        if p is not None:
            figs[key] = p
    return figs
