"""Distance figures of report.pdf. Plotting only: every number is read from the typed Report
(or the 2-D points beside it).

- `plot_violin_overview` -> `i_dist_violin`: raw I_dist per image, one violin per secondary
  (paper fig. 3); with many secondaries both ends of the ranking only;
- `plot_sorted_overview` -> `i_dist_sorted`: min-max scaled I_dist sorted ascending against
  rank fraction (fig. 10);
- `plot_scatter` -> `scatter`: 2-D PCA of P and every S, selected images outlined;
- `plot_matrix` -> `matrix`: heatmap of report.matrix in clustering order, with a group bar.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from worker.report.style import (
    MARKERS,
    PALETTE,
    PRIMARY_COLOUR,
    WIDTH_IN,
    colours,
    highlighted,
    ranked,
    save_png,
    short,
)
from worker.results import ImageResult, Report, Summary

if TYPE_CHECKING:
    from worker.analysis import ScatterPoints


def _legend_right(ax, handles, labels, fig) -> None:
    """A legend outside the axes, to the right, in as many columns as the height needs."""
    rows = max(1, int(fig.get_figheight() * 72 / 11))  # ~11 pt per entry at 7 pt type
    ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        ncols=max(1, math.ceil(len(labels) / rows)),
        borderaxespad=0.0,
        handlelength=1.6,
    )


def _values(images: list[ImageResult], key: str) -> np.ndarray:
    vals = [getattr(im, key) for im in images]
    return np.array([v for v in vals if v is not None], dtype=np.float64)


# --- I_dist ---------------------------------------------------------------------------------


def _violin(ax, data: list[np.ndarray], positions: list[float], cols: list[str]) -> None:
    """Horizontal violins; a set with fewer than two distinct values is drawn as points."""
    for vals, pos, col in zip(data, positions, cols, strict=True):
        if len(vals) == 0:
            continue
        if len(np.unique(vals)) < 2:
            ax.scatter(vals, np.full(len(vals), pos), color=col, s=12, zorder=3)
            continue
        parts = ax.violinplot(
            [vals], positions=[pos], orientation="horizontal", showextrema=False, widths=0.8
        )
        for body in parts["bodies"]:
            body.set_facecolor(col)
            body.set_edgecolor(col)
            body.set_alpha(0.45)
        lo, hi = float(np.min(vals)), float(np.max(vals))
        ax.plot([lo, hi], [pos, pos], color=col, linewidth=0.8)


def _stat_marks(ax, summary: Summary | None, pos: float, *, legend: bool) -> None:
    """Mean (diamond), median and p90 (ticks) read from the report's i_dist summary."""
    marks = [("mean", "D", 14), ("p50", "|", 60), ("p90", "|", 60)]
    for key, marker, size in marks:
        v = getattr(summary, key) if summary is not None else None
        if v is None:
            continue
        colour = "#000000" if key != "p90" else "#D55E00"
        label = {"mean": "mean", "p50": "median", "p90": "90th percentile"}[key]
        ax.scatter(
            [v],
            [pos],
            marker=marker,
            s=size,
            color=colour,
            linewidths=1.4,
            zorder=4,
            label=label if legend else None,
        )


def plot_violin_overview(report: Report, path: Path) -> Path | None:
    """One violin per secondary in rank order (closest on top); with more than 2 top_k
    secondaries only the top_k closest and farthest (paper appendix D)."""
    keep = set(highlighted(report))
    secs = [s for s in ranked(report) if s.images and s.name in keep]
    if not secs:
        return None
    col = colours(report)
    data = [_values(s.images, "i_dist") for s in secs]
    positions = list(range(len(secs), 0, -1))  # first secondary on top
    height = 1.0 + 0.32 * len(secs)
    fig, ax = plt.subplots(figsize=(WIDTH_IN, min(max(height, 2.0), 4.2)))
    _violin(ax, data, positions, [col[s.name] for s in secs])
    for i, (s, pos) in enumerate(zip(secs, positions, strict=True)):
        _stat_marks(ax, s.i_dist, pos, legend=i == 0)
    ax.set_yticks(positions, [short(s.name, 28) for s in secs])
    ax.set_ylim(0.4, len(secs) + 0.6)
    ax.set_xlabel("I_dist (sum of distances to every primary image)")
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=3, fontsize=6.5)
    fig.tight_layout()
    return save_png(fig, path)


def _sorted_curve(images: list[ImageResult]) -> tuple[np.ndarray, np.ndarray]:
    y = np.sort(_values(images, "i_dist_scaled"), kind="stable")
    if len(y) == 0:
        return y, y
    x = np.arange(len(y)) / (len(y) - 1) if len(y) > 1 else np.array([0.5])
    return x, y


def plot_sorted_overview(report: Report, path: Path) -> Path | None:
    """Sorted scaled I_dist curves; legend outside the axes. With many secondaries the
    top_k closest and farthest are coloured and named, the others drawn thin and grey."""
    secs = [s for s in ranked(report) if s.images]
    if not secs:
        return None
    col = colours(report)
    keep = set(highlighted(report))
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 2.5))
    handles, labels = [], []
    others = [s for s in secs if s.name not in keep]
    for s in others:
        x, y = _sorted_curve(s.images)
        (line,) = ax.plot(x, y, color="#B0B0B0", linewidth=0.6, zorder=1)
    if others:
        handles.append(line)
        labels.append(f"{len(others)} other secondaries")
    for i, s in enumerate(s for s in secs if s.name in keep):
        x, y = _sorted_curve(s.images)
        style = ["-", "--", "-.", ":"][(i // len(PALETTE)) % 4]
        (line,) = ax.plot(x, y, color=col[s.name], linewidth=1.4, linestyle=style, zorder=2)
        handles.append(line)
        labels.append(short(s.name, 24))
    ax.set_xlabel("image rank fraction (sorted by I_dist)")
    ax.set_ylabel("min-max scaled I_dist")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.03, 1.03)
    _legend_right(ax, handles, labels, fig)
    fig.tight_layout()
    return save_png(fig, path)


def plot_scatter(report: Report, scatter: ScatterPoints, path: Path) -> Path | None:
    points = scatter.points
    names = [n for n in scatter.names if n in points and len(np.asarray(points[n]))]
    if not names:
        return None
    col = colours(report)
    primary = report.primary.name
    selected = scatter.selected
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 3.0))
    handles, labels = [], []
    sec_index = 0
    keep = set(highlighted(report))
    others = [n for n in names if n != primary and n not in keep]
    if others:
        pts = np.vstack([np.asarray(points[n], dtype=np.float64).reshape(-1, 2) for n in others])
        h = ax.scatter(pts[:, 0], pts[:, 1], s=5, color="#C8C8C8", linewidths=0, zorder=0)
        handles.append(h)
        labels.append(f"{len(others)} other secondaries ({len(pts)})")
    for name in names:
        if name in others:
            continue
        pts = np.asarray(points[name], dtype=np.float64).reshape(-1, 2)
        if name == primary:
            h = ax.scatter(pts[:, 0], pts[:, 1], s=6, color=PRIMARY_COLOUR, alpha=0.45, zorder=1)
            labels.append(f"{short(name, 26)} (primary, {len(pts)})")
        else:
            marker = MARKERS[(sec_index // 1) % len(MARKERS)]
            h = ax.scatter(
                pts[:, 0],
                pts[:, 1],
                s=10,
                marker=marker,
                color=col.get(name, PALETTE[sec_index % len(PALETTE)]),
                alpha=0.7,
                linewidths=0,
                zorder=2,
            )
            labels.append(f"{short(name, 26)} ({len(pts)})")
            sec_index += 1
        handles.append(h)
    sel_handle = None
    for name in names:
        if name in others:
            continue
        rows = [int(r) for r in selected.get(name, [])]
        pts = np.asarray(points[name], dtype=np.float64).reshape(-1, 2)
        rows = [r for r in rows if 0 <= r < len(pts)]
        if not rows:
            continue
        sel_handle = ax.scatter(
            pts[rows, 0],
            pts[rows, 1],
            s=46,
            marker="o",
            facecolor="none",
            edgecolor="#000000",
            linewidths=1.1,
            zorder=4,
        )
    if sel_handle is not None:
        handles.append(sel_handle)
        labels.append("selected for labelling")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    _legend_right(ax, handles, labels, fig)
    fig.tight_layout()
    return save_png(fig, path)


def matrix_values(report: Report) -> tuple[np.ndarray, list[int], str] | None:
    """(values in clustering order, that order as indices, what the values are) of
    report.matrix: the form its clustering used (matrix.ordered_by: the energy form, or
    o_dist_mean)."""
    mx = report.matrix
    if mx is None or not mx.names:
        return None
    if mx.energy and mx.ordered_by != "o_dist_mean":
        rows, label = mx.energy, "energy distance"
    else:
        rows, label = mx.o_dist_mean, "o_dist_mean"
    index = {n: i for i, n in enumerate(mx.names)}
    order = [index[n] for n in mx.order if n in index] or list(range(len(mx.names)))
    values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    return values[np.ix_(order, order)], order, label


def group_of(report: Report) -> dict[str, str]:
    """Dataset name -> its group (report.groups); the primary and ungrouped sets are absent."""
    if report.groups is None:
        return {}
    return {m: g.name for g in report.groups.groups for m in g.members}


def plot_matrix(report: Report, path: Path) -> Path | None:
    """Heatmap of report.matrix in clustering order, with the clustering's dendrogram above it
    (matrix.linkage) and a bar of group colours; numbers in black or white by the cell's
    lightness."""
    got = matrix_values(report)
    if got is None:
        return None
    values, order, label = got
    names = [report.matrix.names[i] for i in order]
    k = len(order)
    groups = group_of(report)
    side = min(WIDTH_IN - 1.0, max(2.6, 0.38 * k + 1.4))
    fig = plt.figure(figsize=(WIDTH_IN, side))
    bar = 0.12 / side if groups else 0.0
    tree = dendrogram_leaves(report, order)
    dend = 0.5 / side if tree is not None else 0.0
    ax = fig.add_axes((0.3, 0.2, 0.55 * side / WIDTH_IN, 0.72 - bar - dend))
    cmap = plt.get_cmap("cividis")
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = ax.imshow(values, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    size = 7 if k <= 14 else max(3.5, 7 - (k - 14) / 8)
    labels = [short(n, 22) for n in names]
    ax.set_xticks(range(k), labels, rotation=90, fontsize=size)
    ax.set_yticks(range(k), labels, fontsize=size)
    ax.grid(False)
    if k <= 16:
        span = (vmax - vmin) or 1.0
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                if not np.isfinite(v):
                    continue
                r, g, b, _ = cmap((v - vmin) / span)
                light = 0.299 * r + 0.587 * g + 0.114 * b > 0.5
                colour = "black" if light else "white"
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=size - 1, color=colour)
    if groups:
        names_g = sorted(set(groups.values()))
        gcol = {g: PALETTE[(i + 2) % len(PALETTE)] for i, g in enumerate(names_g)}
        strip = [gcol.get(groups.get(n, ""), "#FFFFFF") for n in names]
        from matplotlib.colors import to_rgb

        rgb = np.array([[to_rgb(c) for c in strip]])
        box = ax.get_position()
        top = fig.add_axes((box.x0, box.y1 + 0.01, box.width, bar))
        top.imshow(rgb, aspect="auto")
        top.set_axis_off()
        handles = [plt.Rectangle((0, 0), 1, 1, color=gcol[g]) for g in names_g]
        fig.legend(
            handles,
            names_g,
            title="group",
            loc="upper left",
            bbox_to_anchor=(box.x1 + 0.13, box.y1),
            fontsize=6.5,
            title_fontsize=7,
        )
    if tree is not None:
        from scipy.cluster.hierarchy import dendrogram

        box = ax.get_position()
        above = box.y1 + (bar + 0.02 if groups else 0.01)
        dax = fig.add_axes((box.x0, above, box.width, dend - 0.01))
        dendrogram(tree, ax=dax, no_labels=True, link_color_func=lambda _: "#555555")
        dax.set_xlim(0, 10 * k)
        dax.set_axis_off()
    box = ax.get_position()
    cax = fig.add_axes((box.x1 + 0.02, box.y0, 0.02, box.height))
    fig.colorbar(image, cax=cax, label=label)
    return save_png(fig, path)


def dendrogram_leaves(report: Report, order: list[int]) -> np.ndarray | None:
    """matrix.linkage as an array when its leaves are the heatmap's order (they are when the
    report's clustering produced both), else None: the heatmap is drawn without a tree."""
    rows = report.matrix.linkage if report.matrix is not None else None
    if not rows:
        return None
    from scipy.cluster.hierarchy import leaves_list

    tree = np.asarray(rows, dtype=np.float64)
    try:
        same = [int(i) for i in leaves_list(tree)] == list(order)
    except (ValueError, TypeError):
        return None
    return tree if same else None
