"""Figure of the performance estimate (docs/method.md §7). Plotting only: every number comes
from the typed `worker.estimate.Estimate` block.

- `estimate_curve`: left panel, per-image F (at the ODS threshold) of the labelled images
  against the size-free distance i_dist_mean, the isotonic fit with its 90% bootstrap band, the
  labelled distance range shaded, each labelled set's ODS at its o_dist_mean (diamonds) and
  each unlabelled secondary's estimated ODS with its 90% interval at its o_dist_mean (circles;
  hollow red with a dashed bar and "(extrapolated)" when flagged); right panel, the dataset-level
  fit of ODS on o_dist_mean with its band and the same secondaries at dataset_fit_f.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from worker.estimate import DatasetEstimate, Estimate  # noqa: E402
from worker.report.style import save_png  # noqa: E402

DPI = 120
EXTRAPOLATED_COLOUR = "#D55E00"
ESTIMATE_COLOUR = "#0072B2"
MAX_POINTS = 4000  # labelled points drawn (an evenly spaced subset beyond this)


def _x_of(s: DatasetEstimate) -> float | None:
    if s.o_dist_mean is not None:
        return s.o_dist_mean
    if s.images:
        return float(np.mean([im.i_dist_mean for im in s.images]))
    return None


def _mark(ax, x: float, y: float, lo: float, hi: float, name: str, extrapolated: bool) -> None:
    colour = EXTRAPOLATED_COLOUR if extrapolated else ESTIMATE_COLOUR
    bar = ax.errorbar(
        [x],
        [y],
        yerr=[[max(y - lo, 0.0)], [max(hi - y, 0.0)]],
        fmt="o",
        ms=6,
        capsize=3,
        color=colour,
        mfc="white" if extrapolated else colour,
        mew=1.4,
        zorder=5,
    )
    if extrapolated:
        for line in bar[2]:
            line.set_linestyle("--")
    label = f"{name} (extrapolated)" if extrapolated else name
    ax.annotate(label, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=7, color=colour)


def has_curve(estimate: Estimate) -> bool:
    """Whether a fit was made, so that `estimate_curve` is drawn."""
    return bool(estimate.made) and estimate.curve is not None


def plot_estimate(estimate: Estimate, path: str | Path) -> Path | None:
    """Draw `estimate_curve` (see module docstring); None when no fit was made."""
    if not has_curve(estimate):
        return None
    path = Path(path)
    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(9.6, 3.9), gridspec_kw={"width_ratios": [1.6, 1.0]}
    )
    cmap = plt.get_cmap("tab10")
    names = [s.dataset for s in estimate.labelled]
    colours = {n: cmap(i % 10) for i, n in enumerate(names)}
    pts = estimate.points
    if len(pts) > MAX_POINTS:
        pts = [pts[int(i)] for i in np.linspace(0, len(pts) - 1, MAX_POINTS)]
    for n in names:
        xs = [p.i_dist_mean for p in pts if p.dataset == n]
        ys = [p.f for p in pts if p.dataset == n]
        ax.scatter(xs, ys, s=7, alpha=0.35, color=colours[n], lw=0, label=f"{n} (images)")
    c = estimate.curve
    ax.fill_between(c.x, c.low, c.high, color="0.5", alpha=0.25, lw=0, label="90% band of fit")
    ax.plot(c.x, c.f, color="black", lw=1.6, label="isotonic fit (per-image F)")
    if estimate.labelled_range:
        ax.axvspan(*estimate.labelled_range, color="#009E73", alpha=0.06, lw=0)
        for v in estimate.labelled_range:
            ax.axvline(v, color="#009E73", lw=0.8, ls=":")
    for s in estimate.labelled:
        ax.scatter([s.o_dist_mean], [s.ods_f], marker="D", s=36, color=colours[s.dataset],
                   edgecolor="black", lw=0.8, zorder=4)  # fmt: skip
    for s in estimate.secondaries:
        x = _x_of(s)
        if s.estimated_f is None or x is None:
            continue
        _mark(ax, x, s.estimated_f, s.low, s.high, s.dataset, s.extrapolation)
    ax.set_xlabel("size-free distance i_dist_mean (I_dist / n)")
    ax.set_ylabel("F-score")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(
        f"Estimated ODS (circles) vs labelled ODS (diamonds); LOO MAE {estimate.loo_mae:.3f}"
    )
    ax.legend(fontsize=6.5, loc="lower left")

    d = estimate.dataset_curve
    if d is not None and len(d.x):
        ax2.fill_between(d.x, d.low, d.high, color="0.5", alpha=0.25, lw=0)
        ax2.plot(d.x, d.f, color="black", lw=1.4)
    for s in estimate.labelled:
        ax2.scatter([s.o_dist_mean], [s.ods_f], marker="D", s=36, color=colours[s.dataset],
                    edgecolor="black", lw=0.8, zorder=4)  # fmt: skip
        ax2.annotate(s.dataset, (s.o_dist_mean, s.ods_f), xytext=(4, -10),
                     textcoords="offset points", fontsize=7)  # fmt: skip
    for s in estimate.secondaries:
        if s.dataset_fit_f is None or s.o_dist_mean is None:
            continue
        _mark(
            ax2,
            s.o_dist_mean,
            s.dataset_fit_f,
            s.dataset_fit_low,
            s.dataset_fit_high,
            s.dataset,
            s.o_dist_mean_outside,
        )
    ax2.set_xlabel("o_dist_mean")
    ax2.set_ylabel("ODS F-score")
    ax2.set_ylim(-0.02, 1.05)
    mae = estimate.dataset_fit_loo_mae
    ax2.set_title("Dataset-level fit" + (f" (LOO MAE {mae:.3f})" if mae is not None else ""))
    fig.tight_layout()
    return save_png(fig, path, DPI)


def make_estimate_figures(estimate: Estimate | None, out_dir: str | Path) -> dict[str, Path]:
    """{"estimate_curve": PNG path} when an estimate was made, else {}."""
    if estimate is None:
        return {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = plot_estimate(estimate, out / "estimate_curve.png")
    return {"estimate_curve": p} if p is not None else {}
