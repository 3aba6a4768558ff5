"""The figures' shared look: matplotlib style, palette, sizes, label shortening and the PNG
writer. Imported by every figure module of worker/report; imports none of them."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from cycler import cycler  # noqa: E402

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


def safe_name(name: str, limit: int = 60) -> str:
    """A file-name-safe form of a dataset name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))[:limit] or "dataset"


def short(text: str, limit: int = 24) -> str:
    """Shorten a label for a plot, keeping both ends (ids often differ only at the end)."""
    text = str(text).replace("\n", " ")
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[-(limit - 1 - head) :]


def fmt(x) -> str:
    """A number in a plot label: 4 significant digits, 'n/a' for None."""
    return "n/a" if x is None else f"{x:.4g}"


def save_png(fig, path: Path, dpi: int = DPI) -> Path:
    """Draw at `dpi` and write an RGB PNG without metadata, then close the figure:
    deterministic bytes, and WeasyPrint embeds an opaque PNG without splitting off an alpha
    channel (an RGBA one it decodes and encodes twice more). zlib level 1: WeasyPrint
    re-compresses the pixels for the PDF anyway, and level 6 costs 2-3x the time for files
    5-10 % smaller."""
    from PIL import Image

    fig.set_dpi(dpi)
    fig.set_facecolor("white")
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(path, format="PNG", compress_level=1)
    plt.close(fig)
    return path


def colours(report) -> dict[str, str]:
    """Colour of every dataset of a typed Report, stable across figures: the primary grey,
    the secondaries in job order."""
    out = {report.primary.name: PRIMARY_COLOUR}
    for i, sec in enumerate(report.secondaries):
        out.setdefault(sec.name, PALETTE[i % len(PALETTE)])
    return out


def ranked(report) -> list:
    """The secondaries of a typed Report in rank order (closest first; job order without a
    ranking block)."""
    if report.ranking is None:
        return list(report.secondaries)
    by_name = {s.name: s for s in report.secondaries}
    return [by_name[n] for n in report.ranking.order if n in by_name]


def highlighted(report) -> list[str]:
    """Names drawn in colour: both ends of the ranking (Ranking.highlighted), every
    secondary without a ranking."""
    if report.ranking is None:
        return [s.name for s in report.secondaries]
    return report.ranking.highlighted
