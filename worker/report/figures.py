"""Figures of report.pdf. Plotting only: every number is read from the typed Report or the
FigureData (worker.report.render) beside it.

`make_figures(report, data, out_dir)` returns {key: PNG path}. Keys:

- `i_dist_violin`: raw I_dist per image, one violin per secondary (paper fig. 3);
- `i_dist_sorted`: min-max scaled I_dist sorted ascending against rank fraction (fig. 10);
- `diversity_overview`: nearest-neighbour distance histograms of the primary and each secondary;
- `scatter`: 2-D PCA of P and every S, selected images outlined (data.scatter);
- `i_dist:<S>`: one secondary's violin and sorted curve, selected images marked;
- `diversity:<S>`: histograms of S and of each selection (random subset of the same size dashed);
- `coverage:<S>`: coverage of S by each selection and by its random subset, side by side;
- `ranking_strip`: closest image of each top_k closest S, farthest of each top_k farthest;
- `matrix`: heatmap of report.matrix in clustering order (datasets.matrix);
- per-secondary keys exist only for the secondaries of report.ranking.sections;
- `thumbnails:<S>`: closest and farthest images of S (data.thumbnails, image inputs only);
- `duplicates:<S>`: duplicate pairs side by side (data.duplicate_pairs);
- `estimate_curve`: from worker.report.estimate_figures when report.estimate exists;
- `history_*`: from worker.report.history_figures when report.history exists;
- `adaptation_*`: from worker.report.adaptation_figures when report.adaptation exists.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from cycler import cycler  # noqa: E402

from worker.report.forked import run_tasks  # noqa: E402
from worker.report.render import FigureData  # noqa: E402
from worker.results import (  # noqa: E402
    Histogram,
    ImageResult,
    Report,
    SecondaryResult,
    SelectionResult,
    Spread,
    Summary,
)

if TYPE_CHECKING:
    from worker.analysis import ScatterPoints

DPI = 150
WIDTH_IN = 6.7  # A4 text width (170 mm)
PRIMARY_COLOUR = "#5F5F5F"
RANDOM_COLOUR = "#000000"
# Okabe-Ito, colour-blind safe; yellow last (weak on white paper).
PALETTE = [
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#000000",
    "#F0E442",
]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
STRATEGY_MARKERS = {"band": "o", "farthest": "^", "kcenter": "s"}
MAX_HIST_PANELS = 24

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.5,
    "axes.axisbelow": True,
    "axes.prop_cycle": cycler(color=PALETTE),
    "text.parse_math": False,  # ids and names may contain '$'
    "svg.hashsalt": "dataset-distance-worker",
    "figure.dpi": 100,
    "savefig.dpi": DPI,
}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))[:60] or "dataset"


def short(text: str, limit: int = 24) -> str:
    """Shorten a label for a plot, keeping both ends (ids often differ only at the end)."""
    text = str(text).replace("\n", " ")
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[-(limit - 1 - head) :]


def colours(report: Report) -> dict[str, str]:
    """Colour of every dataset, stable across figures: P grey, secondaries in job order."""
    out = {report.primary.name: PRIMARY_COLOUR}
    for i, sec in enumerate(report.secondaries):
        out.setdefault(sec.name, PALETTE[i % len(PALETTE)])
    return out


def ranked(report: Report) -> list[SecondaryResult]:
    """Secondaries in rank order (closest first; job order without a ranking block)."""
    if report.ranking is None:
        return list(report.secondaries)
    by_name = {s.name: s for s in report.secondaries}
    return [by_name[n] for n in report.ranking.order if n in by_name]


def highlighted(report: Report) -> list[str]:
    """Names drawn in colour when there are many secondaries: the top_k closest and farthest
    (every secondary when there are at most 2 top_k, or no ranking)."""
    if report.ranking is None:
        return [s.name for s in report.secondaries]
    order, k = report.ranking.order, report.ranking.top_k
    return list(order) if len(order) <= 2 * k else list(order[:k]) + list(order[-k:])


def section_names(report: Report) -> list[str]:
    """Secondaries with a section of their own in the PDF (report.ranking.sections)."""
    if report.ranking is None:
        return [s.name for s in report.secondaries]
    return list(report.ranking.sections)


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


def save_png(fig, path: Path, dpi: int = DPI) -> Path:
    """Draw at `dpi` and write an RGB PNG without metadata, then close the figure:
    deterministic bytes, and WeasyPrint embeds an opaque PNG without splitting off an alpha
    channel (an RGBA one it decodes and encodes twice more)."""
    from PIL import Image

    fig.set_dpi(dpi)
    fig.set_facecolor("white")
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(path, format="PNG", compress_level=6)
    plt.close(fig)
    return path


def _values(images: list[ImageResult], key: str) -> np.ndarray:
    vals = [getattr(im, key) for im in images]
    return np.array([v for v in vals if v is not None], dtype=np.float64)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


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
    height = 1.0 + 0.45 * len(secs)
    fig, ax = plt.subplots(figsize=(WIDTH_IN, min(max(height, 2.2), 9.0)))
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
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 3.0))
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


def _selected_ranks(sec: SecondaryResult) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """For each strategy's largest selection: (label, x, y) of the selected images on the curve."""
    images = [im for im in sec.images if im.i_dist_scaled is not None]
    if not images:
        return []
    order = sorted(range(len(images)), key=lambda k: images[k].i_dist_scaled)
    n = len(order)
    where = {}
    for rank, k in enumerate(order):
        where.setdefault(images[k].id, (rank / (n - 1) if n > 1 else 0.5, images[k]))
    largest: dict[str, SelectionResult] = {}
    for sel in sec.selections:
        if sel.strategy not in largest or sel.count > largest[sel.strategy].count:
            largest[sel.strategy] = sel
    out = []
    for strategy, sel in largest.items():
        pts = [where[i] for i in sel.ids if i in where]
        if not pts:
            continue
        x = np.array([p[0] for p in pts])
        y = np.array([p[1].i_dist_scaled for p in pts])
        out.append((f"{strategy} (q={sel.count})", x, y))
    return out


def plot_secondary_idist(report: Report, sec: SecondaryResult, path: Path) -> Path | None:
    if not sec.images:
        return None
    colour = colours(report)[sec.name]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(WIDTH_IN, 2.6), gridspec_kw={"width_ratios": [1, 1.25]}
    )
    _violin(left, [_values(sec.images, "i_dist")], [1.0], [colour])
    _stat_marks(left, sec.i_dist, 1.0, legend=True)
    left.set_yticks([])
    left.set_ylim(0.4, 1.6)
    left.set_xlabel("I_dist")
    left.set_title("I_dist per image")
    left.legend(loc="upper center", ncols=3, fontsize=6, bbox_to_anchor=(0.5, -0.28))
    x, y = _sorted_curve(sec.images)
    right.plot(x, y, color=colour, linewidth=1.4)
    for k, (label, sx, sy) in enumerate(_selected_ranks(sec)):
        strategy = label.split(" ")[0]
        right.scatter(
            sx,
            sy,
            marker=STRATEGY_MARKERS.get(strategy, MARKERS[k % len(MARKERS)]),
            s=30 + 8 * k,
            facecolor="none",
            edgecolor="#000000",
            linewidths=1.0,
            zorder=3,
            label=label,
        )
    right.set_xlim(0, 1)
    right.set_ylim(-0.03, 1.03)
    right.set_xlabel("image rank fraction")
    right.set_ylabel("scaled I_dist")
    right.set_title("sorted I_dist, selected images marked")
    if right.get_legend_handles_labels()[0]:
        right.legend(loc="upper left")
    # fixed margins (inches) instead of tight_layout: the same layout, a third of the time
    fig.subplots_adjust(
        left=0.25 / WIDTH_IN,
        right=1 - 0.1 / WIDTH_IN,
        bottom=0.95 / 2.6,
        top=1 - 0.25 / 2.6,
        wspace=0.3,
    )
    return save_png(fig, path)


# --- diversity --------------------------------------------------------------------------------


def _histogram(spread: Spread | None) -> Histogram | None:
    """The spread's histogram when it has counts to draw."""
    hist = spread.histogram if spread is not None else None
    return hist if hist is not None and hist.counts else None


def _panel(ax, label: str, spread: Spread, colour: str, overlay: Spread | None) -> bool:
    hist = _histogram(spread)
    if hist is None:
        return False
    edges = np.asarray(hist.edges, dtype=np.float64)
    counts = np.asarray(hist.counts, dtype=np.float64)
    if len(edges) != len(counts) + 1:
        return False
    ax.stairs(counts, edges, fill=True, color=colour, alpha=0.55)
    ax.stairs(counts, edges, color=colour, linewidth=0.8)
    ohist = _histogram(overlay)
    if ohist is not None and len(ohist.edges) == len(ohist.counts) + 1:
        ax.stairs(
            np.asarray(ohist.counts, dtype=np.float64),
            np.asarray(ohist.edges, dtype=np.float64),
            color=RANDOM_COLOUR,
            linestyle="--",
            linewidth=0.9,
            label="random subset",
        )
    ax.set_title(f"{short(label, 34)}\nmean {_fmt(spread.mean)}", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.locator_params(nbins=4)  # small panels: fewer ticks read better and draw faster
    return True


Panel = tuple[str, Spread | None, str, Spread | None]  # label, spread, colour, overlay


def plot_histograms(
    panels: list[Panel],
    path: Path,
    *,
    ncols: int | None = None,
    xlabel: str = "distance to nearest neighbour",
    keep_empty: bool = False,
) -> Path | None:
    """Small multiples of diversity (or coverage) histograms: (label, spread, colour, overlay
    spread). `ncols` fixes the grid (pairs side by side); `keep_empty` keeps a panel without
    a histogram as an empty cell so that rows stay aligned."""
    if not any(_histogram(p[1]) is not None for p in panels):
        return None
    if not keep_empty:
        panels = [p for p in panels if _histogram(p[1]) is not None]
    dropped = max(0, len(panels) - MAX_HIST_PANELS)
    panels = panels[:MAX_HIST_PANELS]
    ncols = ncols or (3 if len(panels) <= 9 else 4)
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    height = 0.45 + 1.6 * nrows
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(WIDTH_IN, height),
        sharex=True,
        squeeze=False,
    )
    # Fixed margins (in inches) instead of tight_layout: as good here, and much faster.
    fig.subplots_adjust(
        left=0.55 / WIDTH_IN,
        right=1 - 0.1 / WIDTH_IN,
        bottom=0.5 / height,
        top=1 - 0.38 / height,
        wspace=0.28,
        hspace=0.62 * 1.6 / 1.2,
    )
    overlay_shown = False
    for ax, (label, spread, colour, overlay) in zip(axes.flat, panels, strict=False):
        if not _panel(ax, label, spread, colour, overlay):
            ax.set_title(f"{short(label, 34)}\nnot computed", fontsize=7)
        overlay_shown |= _histogram(overlay) is not None
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=6.5)
        ax.tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel("images", fontsize=6.5)
    if overlay_shown or dropped:
        text = "dashed: random subset of the same size" if overlay_shown else ""
        if dropped:
            text += f"{'; ' if text else ''}{dropped} more selections not drawn"
        fig.text(0.99, 0.01, text, ha="right", va="bottom", fontsize=6.5)
    return save_png(fig, path)


def diversity_overview_panels(report: Report) -> list[Panel]:
    """The primary and every secondary (rank order); with many, the two ends only."""
    col = colours(report)
    prim = report.primary
    keep = set(highlighted(report))
    panels = [(f"{prim.name} (primary)", prim.diversity, PRIMARY_COLOUR, None)]
    for s in ranked(report):
        if s.name in keep:
            panels.append((s.name, s.diversity, col[s.name], None))
    return panels


def coverage_panels(report: Report, sec: SecondaryResult) -> list[Panel]:
    """Per selection, two panels side by side: coverage of S by the selection and by the
    random subset of the same size (LightlyOne's coverage histograms). A summary report
    draws each strategy's largest selection only."""
    colour = colours(report)[sec.name]
    panels: list[Panel] = []
    selections = sec.selections
    if report.ranking is not None and report.ranking.detail == "summary":
        largest: dict[str, SelectionResult] = {}
        for sel in selections:
            if sel.strategy not in largest or sel.count > largest[sel.strategy].count:
                largest[sel.strategy] = sel
        selections = list(largest.values())
    for sel in selections:
        if sel.coverage is None and sel.random_coverage is None:
            continue
        panels.append((f"{sel.strategy}, q={sel.count}", sel.coverage, colour, None))
        panels.append((f"random subset, q={sel.count}", sel.random_coverage, RANDOM_COLOUR, None))
    return panels


def secondary_diversity_panels(report: Report, sec: SecondaryResult) -> list[Panel]:
    colour = colours(report)[sec.name]
    panels = [(f"{sec.name} (input)", sec.diversity, colour, None)]
    for sel in sec.selections:
        label = f"{sel.strategy}, q={sel.count}"
        panels.append((label, sel.diversity, colour, sel.random_diversity))
    return panels


# --- scatter and thumbnails -----------------------------------------------------------------


def plot_scatter(report: Report, scatter: ScatterPoints, path: Path) -> Path | None:
    points = scatter.points
    names = [n for n in scatter.names if n in points and len(np.asarray(points[n]))]
    if not names:
        return None
    col = colours(report)
    primary = report.primary.name
    selected = scatter.selected
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 4.6))
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


def _as_array(img) -> tuple[np.ndarray, str | None]:
    """Pixels ready for imshow; 16-bit and float images are stretched to their own range."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        return arr.astype(np.uint8), "gray"
    if img.mode not in ("RGB", "RGBA", "L"):
        img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
    arr = np.asarray(img)
    return arr, ("gray" if img.mode == "L" else None)


def _picture_rows(rows: list[tuple[str, list[tuple[object, str]]]], path: Path) -> Path | None:
    """Rows of small pictures, one row label each: rows = [(label, [(image, title)])]."""
    rows = [(label, items) for label, items in rows if items]
    if not rows:
        return None
    ncols = max(4, max(len(items) for _, items in rows))
    cell = (WIDTH_IN - 0.35) / ncols
    height = len(rows) * (cell + 0.45)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(WIDTH_IN, height), squeeze=False)
    fig.subplots_adjust(
        left=0.3 / WIDTH_IN,
        right=1 - 0.05 / WIDTH_IN,
        bottom=0.05 / height,
        top=1 - 0.4 / height,
        wspace=0.08,
        hspace=0.45 / cell,
    )
    for r, (label, items) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c >= len(items):
                ax.set_visible(False)
                continue
            img, title = items[c]
            arr, cmap = _as_array(img)
            ax.imshow(arr, cmap=cmap, vmin=0 if cmap else None, vmax=255 if cmap else None)
            ax.set_title(title, fontsize=6)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    return save_png(fig, path)


def plot_thumbnails(sec: SecondaryResult, thumbs: dict, path: Path) -> Path | None:
    """The closest and farthest images of one secondary, with their scaled I_dist."""
    scaled = {im.id: im.i_dist_scaled for im in sec.images}

    def title(image_id: str) -> str:
        s = scaled.get(image_id)
        return f"{short(image_id, 22)}\nscaled I_dist {_fmt(s) if s is not None else 'n/a'}"

    rows = [
        (label, [(img, title(image_id)) for image_id, img in thumbs.get(label) or []])
        for label in ("closest", "farthest")
    ]
    return _picture_rows(rows, path)


def plot_ranking_strip(report: Report, thumbs: dict, path: Path) -> Path | None:
    """Paper figures 19-29: the closest image of each of the top_k closest secondaries (top
    row) and the farthest image of each of the top_k farthest (bottom row)."""
    if report.ranking is None:
        return None
    rows = []
    for end, names in (("closest", report.ranking.closest), ("farthest", report.ranking.farthest)):
        items = []
        for name in names:
            got = (thumbs.get(name) or {}).get(end) or []
            if got:
                image_id, img = got[0]
                items.append((img, f"{short(name, 18)}\n{short(image_id, 18)}"))
        rows.append((end, items))
    return _picture_rows(rows, path)


def plot_matrix(report: Report, path: Path) -> Path | None:
    """Heatmap of report.matrix.o_dist_mean, rows and columns in clustering order."""
    mx = report.matrix
    if mx is None or not mx.names:
        return None
    index = {n: i for i, n in enumerate(mx.names)}
    order = [index[n] for n in mx.order if n in index] or list(range(len(mx.names)))
    values = np.array(
        [[np.nan if v is None else v for v in row] for row in mx.o_dist_mean], dtype=np.float64
    )[np.ix_(order, order)]
    k = len(order)
    side = min(WIDTH_IN - 1.2, max(2.5, 0.22 * k + 1.5))
    fig, ax = plt.subplots(figsize=(WIDTH_IN, side))
    image = ax.imshow(values, cmap="viridis", aspect="equal")
    labels = [short(mx.names[i], 22) for i in order]
    size = 7 if k <= 20 else max(3.0, 7 - (k - 20) / 12)
    ax.set_xticks(range(k), labels, rotation=90, fontsize=size)
    ax.set_yticks(range(k), labels, fontsize=size)
    ax.grid(False)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                if np.isfinite(values[i, j]):
                    ax.text(
                        j,
                        i,
                        _fmt(values[i, j]),
                        ha="center",
                        va="center",
                        fontsize=5.5,
                        color="white",
                    )
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="o_dist_mean")
    fig.tight_layout()
    return save_png(fig, path)


def plot_duplicate_pairs(pairs: list, path: Path) -> Path | None:
    """Duplicate image pairs side by side: [(caption, image_a, image_b)], two pairs a row."""
    if not pairs:
        return None
    per_row = 2
    nrows = (len(pairs) + per_row - 1) // per_row
    cell = (WIDTH_IN - 0.2) / (2 * per_row)
    height = nrows * (cell + 0.45)
    fig, axes = plt.subplots(nrows, 2 * per_row, figsize=(WIDTH_IN, height), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.35 / height, wspace=0.06)
    for ax in axes.flat:
        ax.set_axis_off()
    for k, (caption, img_a, img_b) in enumerate(pairs):
        r, c = divmod(k, per_row)
        for j, img in enumerate((img_a, img_b)):
            ax = axes[r, 2 * c + j]
            arr, cmap = _as_array(img)
            ax.imshow(arr, cmap=cmap, vmin=0 if cmap else None, vmax=255 if cmap else None)
        axes[r, 2 * c].set_title(short(caption, 60), fontsize=6, loc="left")
    return save_png(fig, path)


# --- entry point ----------------------------------------------------------------------------


Task = Callable[[], dict[str, Path]]  # draws one figure (or one module's) -> {key: path}


def _figure(key: str, draw: Callable[..., Path | None], *args) -> Task:
    def task() -> dict[str, Path]:
        with plt.rc_context(STYLE):
            path = draw(*args)
        return {} if path is None else {key: path}

    return task


def _figures(make: Callable[..., dict[str, Path]], *args) -> Task:
    def task() -> dict[str, Path]:
        with plt.rc_context(STYLE):
            return make(*args)

    return task


def figure_tasks(report: Report, data: FigureData, out: Path) -> list[Task]:
    """One task per figure of the PDF (one per module for estimate, history, adaptation)."""
    tasks = [
        _figure("i_dist_violin", plot_violin_overview, report, out / "i_dist_violin.png"),
        _figure("i_dist_sorted", plot_sorted_overview, report, out / "i_dist_sorted.png"),
        _figure(
            "diversity_overview",
            plot_histograms,
            diversity_overview_panels(report),
            out / "diversity_overview.png",
        ),
    ]
    if data.scatter is not None:
        tasks.append(_figure("scatter", plot_scatter, report, data.scatter, out / "scatter.png"))
    thumbnails = data.thumbnails
    tasks.append(
        _figure("ranking_strip", plot_ranking_strip, report, thumbnails, out / "ranking_strip.png")
    )
    tasks.append(_figure("matrix", plot_matrix, report, out / "matrix.png"))
    sections = set(section_names(report))
    summary = report.ranking is not None and report.ranking.detail == "summary"
    for k, sec in enumerate(report.secondaries):
        name = sec.name
        if name not in sections:
            continue  # summary detail: one table row, no pages (report.ranking)
        stem = f"{k:02d}_{_safe(name)}"
        tasks.append(
            _figure(f"i_dist:{name}", plot_secondary_idist, report, sec, out / f"i_dist_{stem}.png")
        )
        if not summary:  # a summary section shows the coverage histograms only
            tasks.append(
                _figure(
                    f"diversity:{name}",
                    plot_histograms,
                    secondary_diversity_panels(report, sec),
                    out / f"diversity_{stem}.png",
                )
            )
        coverage = functools.partial(
            plot_histograms, ncols=4, xlabel="to nearest selected", keep_empty=True
        )
        tasks.append(
            _figure(
                f"coverage:{name}",
                coverage,
                coverage_panels(report, sec),
                out / f"coverage_{stem}.png",
            )
        )
        if thumbnails.get(name):
            tasks.append(
                _figure(
                    f"thumbnails:{name}",
                    plot_thumbnails,
                    sec,
                    thumbnails[name],
                    out / f"thumbnails_{stem}.png",
                )
            )
        pairs = data.duplicate_pairs.get(name)
        if pairs:
            tasks.append(
                _figure(
                    f"duplicates:{name}", plot_duplicate_pairs, pairs, out / f"dupes_{stem}.png"
                )
            )
    if report.estimate is not None:
        from worker.report.estimate_figures import make_estimate_figures

        tasks.append(_figures(make_estimate_figures, report.estimate, out))
    if report.history is not None:
        from worker.report.history_figures import make_history_figures

        tasks.append(_figures(make_history_figures, report.history, out))
    if report.adaptation is not None:
        from worker.report.adaptation_figures import make_adaptation_figures

        tasks.append(
            _figures(make_adaptation_figures, report.adaptation, data.adaptation or {}, out)
        )
    return tasks


def make_figures(
    report: Report,
    data: FigureData | None,
    out_dir: str | Path,
    *,
    processes: int | None = None,
) -> dict[str, Path]:
    """Draw every figure of the PDF into `out_dir`; returns {figure key: PNG path}.

    Figures whose data is missing (no images, no histogram, no scatter) are left out; the
    template checks each key before using it. The figures are drawn in forked processes
    (worker.report.forked; `processes` None: one per core); the PNG bytes are those of a
    serial run (processes=1).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = figure_tasks(report, data or FigureData(), out)
    figures: dict[str, Path] = {}
    for drawn in run_tasks(tasks, processes):
        figures.update(drawn)
    return figures
