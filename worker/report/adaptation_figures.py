"""Figures of the adaptation section (paper figures 4-8). Plotting only: every number comes from
report.adaptation (the typed block) or, for per-image scaled I_dist and example predictions,
the adapt stage's figure data (worker.report.inputs.AdaptationFigureData).

- `adaptation_f_vs_idist_<dataset>`: per-image F (at the model's ODS threshold) against min-max
  scaled I_dist, images sorted by I_dist, moving average of window max(1, |S| // 10), one line
  per model (figs. 4-6);
- `adaptation_f_bars`: ODS F per model per secondary (fig. 7);
- `adaptation_grid_<dataset>`: image / mask / one prediction per model for the GRID_EXAMPLES
  farthest images (fig. 8).
- with two or more architectures (report.adaptation.architectures):
  `adaptation_arch_f_vs_idist_<dataset>`: the F-vs-I_dist panel of every architecture side by
  side (shared y axis); `adaptation_arch_f_bars`: ODS F per model and secondary, one panel per
  architecture (fig. 7 per architecture); `adaptation_choice`: baseline ODS F on unseen sets
  and the gain from labels per architecture, mean over seeds with the std as error bars, the
  trivial baselines' F dashed, 'not learning' hatched, the recommended one outlined.

On a set whose masks have no positive pixel F is null; its curve shows the per-image
false-positive pixel rate (noise, appendix C) instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from worker.adapt.block import Adaptation, AdaptationScore  # noqa: E402
from worker.report.inputs import AdaptationFigureData  # noqa: E402
from worker.report.style import safe_name, save_png  # noqa: E402

DPI = 120
GRID_EXAMPLES = 2  # farthest images per secondary in the prediction grid (paper fig. 8)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each run of `window` consecutive values ('valid' mode; window clamped to len)."""
    v = np.asarray(values, dtype=np.float64)
    w = max(1, min(int(window), len(v)))
    if len(v) == 0:
        return v
    return np.convolve(v, np.ones(w) / w, mode="valid")


def f_vs_idist_series(
    per_image: list[dict], scaled: dict[str, float], key: str = "f"
) -> tuple[np.ndarray, ...]:
    """(x, f) smoothed: images sorted by scaled I_dist, moving average of window |S| // 10.
    `key`: the per-image value ("f", or "fp_rate" on sets without positive pixels)."""
    rows = []
    for r in per_image:  # typed PerImageF (report) or plain {id, f, ...} dicts
        rid, value = (r["id"], r.get(key)) if isinstance(r, dict) else (r.id, getattr(r, key))
        if rid in scaled and value is not None:
            rows.append((scaled[rid], value))
    if not rows:
        return np.zeros(0), np.zeros(0)
    rows.sort(key=lambda t: t[0])
    x = np.array([r[0] for r in rows])
    f = np.array([r[1] for r in rows])
    w = max(1, len(rows) // 10)
    return moving_average(x, w), moving_average(f, w)


def _model_order(adaptation: Adaptation, data: AdaptationFigureData) -> list[str]:
    return list(data.model_order) or [m.name for m in adaptation.models]


def _colours(models: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def _draw_curves(
    ax, results: list[AdaptationScore], dataset: str, scaled: dict, colours: dict
) -> str:
    """Lines of every model on `dataset`; returns the y quantity drawn ('' when none)."""
    drawn = ""
    for r in results:
        if r.dataset != dataset or r.model not in colours:
            continue
        key = "fp_rate" if r.ods_f is None and r.mask_pixels == 0 else "f"
        x, f = f_vs_idist_series(r.per_image, scaled, key)
        if len(x) == 0:
            continue
        style = "--" if r.model.startswith("M_B") else "-"
        ax.plot(x, f, style, color=colours[r.model], label=r.model, lw=1.6)
        drawn = key
    return drawn


def _label_axes(ax, key: str) -> None:
    ax.set_xlabel("I_dist (min-max scaled)")
    if key == "fp_rate":
        ax.set_ylabel("false-positive pixel rate")
    else:
        ax.set_ylabel("F-score at ODS threshold")
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)


def plot_f_vs_idist(
    adaptation: Adaptation, data: AdaptationFigureData, dataset: str, path: Path
) -> Path | None:
    curves = data.curves.get(dataset)
    scaled = curves.scaled() if curves is not None else {}
    if not scaled:
        return None
    colours = _colours(_model_order(adaptation, data))
    fig, ax = plt.subplots(figsize=(6.7, 2.5))
    key = _draw_curves(ax, adaptation.results, dataset, scaled, colours)
    if not key:
        plt.close(fig)
        return None
    n = len(curves.ids)
    what = "false positives" if key == "fp_rate" else "F-score"
    _label_axes(ax, key)
    ax.set_title(f"{dataset}: {what} vs I_dist (moving average, window {max(1, n // 10)})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return save_png(fig, path, DPI)


def plot_f_vs_idist_architectures(
    adaptation: Adaptation, data: AdaptationFigureData, dataset: str, path: Path
) -> Path | None:
    """One F-vs-I_dist panel per architecture, side by side (paper figs. 4-6)."""
    blocks = adaptation.architectures or []
    curves = data.curves.get(dataset)
    scaled = curves.scaled() if curves is not None else {}
    if len(blocks) < 2 or not scaled:
        return None
    colours = _colours([m.name for m in blocks[0].models])
    fig, axes = plt.subplots(
        1, len(blocks), figsize=(3.2 * len(blocks) + 1.2, 3.4), sharey=True, squeeze=False
    )
    drawn = ""
    for ax, block in zip(axes[0], blocks, strict=True):
        key = _draw_curves(ax, block.results, dataset, scaled, colours)
        drawn = drawn or key
        _label_axes(ax, key or "f")
        ax.set_title(block.label, fontsize=9)
        if ax is not axes[0][0]:
            ax.set_ylabel("")
    if not drawn:
        plt.close(fig)
        return None
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(f"{dataset}: per-image score vs I_dist by architecture", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path, DPI)


def plot_architecture_bars(adaptation: Adaptation, path: Path) -> Path | None:
    """ODS F per model and secondary, one panel per architecture (fig. 7 side by side)."""
    blocks = adaptation.architectures or []
    if len(blocks) < 2:
        return None
    models = [m.name for m in blocks[0].models]
    datasets = list(dict.fromkeys(r.dataset for r in blocks[0].results if r.ods_f is not None))
    if not datasets:
        return None
    colours = _colours(models)
    width = 0.8 / max(1, len(models))
    fig, axes = plt.subplots(
        1,
        len(blocks),
        figsize=(max(3.0, 0.3 * len(datasets) * len(models) + 1.5) * len(blocks) + 1.2, 3.6),
        sharey=True,
        squeeze=False,
    )
    pos = np.arange(len(datasets))
    for ax, block in zip(axes[0], blocks, strict=True):
        value = {(r.model, r.dataset): r.ods_f for r in block.results}
        for k, m in enumerate(models):
            h = [value.get((m, d)) for d in datasets]
            h = [np.nan if v is None else v for v in h]
            ax.bar(pos + (k - (len(models) - 1) / 2) * width, h, width, label=m, color=colours[m])
        ax.set_xticks(pos)
        ax.set_xticklabels(datasets, fontsize=8)
        ax.set_title(block.label, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("ODS F-score")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("ODS F-score per model and secondary, by architecture", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path, DPI)


def plot_f_bars(adaptation: Adaptation, data: AdaptationFigureData, path: Path) -> Path | None:
    results = adaptation.results
    if not results:
        return None
    models = _model_order(adaptation, data)
    datasets = list(dict.fromkeys(r.dataset for r in results))
    value = {(r.model, r.dataset): r.ods_f for r in results}
    colours = _colours(models)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.7, 0.35 * len(datasets) * max(1, len(models)) + 2), 2.6))
    pos = np.arange(len(datasets))
    for k, m in enumerate(models):
        heights = [value.get((m, d)) for d in datasets]
        heights = [np.nan if h is None else h for h in heights]
        ax.bar(pos + (k - (len(models) - 1) / 2) * width, heights, width, label=m, color=colours[m])
    no_pos = {r.dataset for r in results if r.mask_pixels == 0}
    ax.set_xticks(pos)
    ax.set_xticklabels([f"{d}\n(no positive pixels)" if d in no_pos else d for d in datasets])
    ax.set_ylabel("ODS F-score")
    ax.set_ylim(0, 1.02)
    ax.set_title("ODS F-score per model and secondary")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return save_png(fig, path, DPI)


def plot_choice(adaptation: Adaptation, path: Path) -> Path | None:
    """The model choice at a glance (two or more architectures): per architecture, baseline
    ODS F on unseen sets and the gain from labels, bars at the mean over seeds with the std
    as error bars; the trivial baselines' F as a dashed line; 'not learning' bars hatched and
    the recommended one outlined."""
    rows = adaptation.summary.architectures
    if len(rows) < 2:
        return None
    rec = adaptation.summary.recommended
    chosen = rec.architecture if rec is not None else None
    names = [r.architecture for r in rows]
    pos = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(6.4, 1.4 * len(rows) + 2.5), 3.2))
    panels = (
        ("baseline ODS F on unseen sets", "baseline_ods_unseen", "baseline_ods_unseen_std"),
        ("ODS F gain from labels (M to largest M{q})", "gain", "gain_std"),
    )
    for ax, (title, key, std_key) in zip(axes, panels, strict=True):
        h = [np.nan if getattr(r, key) is None else getattr(r, key) for r in rows]
        err = [0.0 if getattr(r, std_key) is None else getattr(r, std_key) for r in rows]
        bars = ax.bar(pos, h, 0.6, yerr=err, capsize=3, color="#4C78A8")
        for bar, r in zip(bars, rows, strict=True):
            if r.not_learning:
                bar.set_hatch("//")
                bar.set_facecolor("#BBBBBB")
            if r.architecture == chosen:
                bar.set_edgecolor("#D55E00")
                bar.set_linewidth(2)
        if key == "baseline_ods_unseen":
            trivial = [r.trivial_f_unseen for r in rows if r.trivial_f_unseen is not None]
            if trivial:
                ax.axhline(trivial[0], color="#333", ls="--", lw=1, label="trivial baseline F")
                ax.legend(fontsize=7, frameon=False, loc="upper right")
        else:
            ax.axhline(0, color="#333", lw=0.8)
        ax.set_xticks(pos)
        ax.set_xticklabels(names, fontsize=8, rotation=20 if len(rows) > 3 else 0)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path, DPI)


GRID_CELL = 104  # pixels of one panel of the prediction grid (at DPI)
GRID_GAP = 6  # white pixels between two panels


def _panel(arr: np.ndarray, cell: int) -> np.ndarray:
    """One grid panel as a cell x cell RGB uint8 array, as imshow shows it (grey arrays on
    0-255, RGB as given, float RGB on 0-1), shrunk to fit and centred on white."""
    from PIL import Image

    a = np.asarray(arr)
    if a.ndim == 2:
        rgb = np.repeat(np.clip(a, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    elif np.issubdtype(a.dtype, np.floating):
        rgb = (np.clip(a[..., :3], 0.0, 1.0) * 255).round().astype(np.uint8)
    else:
        rgb = np.clip(a[..., :3], 0, 255).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    scale = cell / max(img.size)
    img = img.resize(
        (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
        Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX,
    )
    out = np.full((cell, cell, 3), 255, np.uint8)
    top, left = (cell - img.height) // 2, (cell - img.width) // 2
    out[top : top + img.height, left : left + img.width] = np.asarray(img)
    return out


def grid_mosaic(rows: list[list[np.ndarray]], cell: int = GRID_CELL, gap: int = GRID_GAP):
    """The panels of `rows` (one list of arrays per row, equal lengths) as one RGB uint8
    image: cell x cell panels with `gap` white pixels between them."""
    cols = len(rows[0])
    out = np.full(
        (len(rows) * (cell + gap) - gap, cols * (cell + gap) - gap, 3), 255, dtype=np.uint8
    )
    for i, row in enumerate(rows):
        for j, arr in enumerate(row):
            y, x = i * (cell + gap), j * (cell + gap)
            out[y : y + cell, x : x + cell] = _panel(arr, cell)
    return out


def _font(px: int):
    """DejaVu Sans (matplotlib's own copy) at `px` pixels, for the grid's labels."""
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), px)


def plot_grid(
    adaptation: Adaptation, data: AdaptationFigureData, dataset: str, path: Path
) -> Path | None:
    """Image, mask and each model's probability map of the GRID_EXAMPLES farthest images
    (paper fig. 8): the mosaic of panels, column titles above, each row's id and scaled
    I_dist on its left, a title on top. Pictures, not a plot: drawn with PIL and written as
    a JPEG (`path`'s suffix replaced), which WeasyPrint embeds without re-encoding."""
    from PIL import Image, ImageDraw

    examples = (data.examples.get(dataset) or [])[:GRID_EXAMPLES]
    if not examples:
        return None
    models = [m for m in _model_order(adaptation, data) if m in examples[0].predictions]
    cols = ["image", "mask", *models]
    mosaic = grid_mosaic(
        [[ex.image, ex.mask, *[ex.predictions[m] for m in models]] for ex in examples]
    )
    curves = data.curves.get(dataset)
    scaled = curves.scaled() if curves is not None else {}
    small, mid, big = _font(10), _font(12), _font(15)
    left, title_h, head_h = 110, 24, 18  # pixels: row labels, title, column titles
    height, width = mosaic.shape[:2]
    img = Image.new("RGB", (left + width + 6, title_h + head_h + height + 4), "white")
    img.paste(Image.fromarray(mosaic, "RGB"), (left, title_h + head_h))
    draw = ImageDraw.Draw(img)
    step = GRID_CELL + GRID_GAP
    title = f"{dataset}: the {len(examples)} farthest evaluated images"
    draw.text((img.width / 2, 2), title, fill="black", font=big, anchor="ma")
    for j, name in enumerate(cols):
        x = left + j * step + GRID_CELL / 2
        draw.text((x, title_h + head_h - 3), name, fill="black", font=mid, anchor="md")
    for i, ex in enumerate(examples):
        label = ex.id if len(ex.id) <= 18 else "..." + ex.id[-15:]
        if ex.id in scaled:
            label += f"\nI_dist {scaled[ex.id]:.2f}"
        y = title_h + head_h + i * step + GRID_CELL / 2
        draw.multiline_text(
            (left - 6, y), label, fill="black", font=small, anchor="rm", align="right"
        )
    out = Path(path).with_suffix(".jpg")
    img.save(out, format="JPEG", quality=90)
    return out


def adaptation_figures(
    adaptation: Adaptation, data: AdaptationFigureData | None, out: Path
) -> list[tuple[str, Callable[..., Path | None], tuple]]:
    """Every adaptation figure of the typed block as (figure key, draw, args): draw(*args)
    writes the figure to args[-1] (its file, under `out`) and returns it, or returns None
    where its data is missing. Keys start with "adaptation_"; the draws are independent of
    each other (one task each); figures for two or more architectures only where the block
    has them."""
    data = data or AdaptationFigureData()
    datasets = list(dict.fromkeys(r.dataset for r in adaptation.results))
    named = [(k, name, safe_name(name)) for k, name in enumerate(datasets)]
    a, d = adaptation, data
    several = len(adaptation.architectures or []) >= 2
    return [
        *[(f"adaptation_f_vs_idist_{name}", plot_f_vs_idist,
           (a, d, name, out / f"adaptation_f_vs_idist_{k}_{safe}.png")) for k, name, safe in named],
        ("adaptation_f_bars", plot_f_bars, (a, d, out / "adaptation_f_bars.png")),
        *[(f"adaptation_arch_f_vs_idist_{name}", plot_f_vs_idist_architectures,
           (a, d, name, out / f"adaptation_arch_f_vs_idist_{k}_{safe}.png"))
          for k, name, safe in named if several],
        *[("adaptation_arch_f_bars", plot_architecture_bars,
           (a, out / "adaptation_arch_f_bars.png"))] * several,
        *[("adaptation_choice", plot_choice, (a, out / "adaptation_choice.png"))]
        * (len(adaptation.summary.architectures) >= 2),
        *[(f"adaptation_grid_{name}", plot_grid,
           (a, d, name, out / f"adaptation_grid_{k}_{safe}.jpg"))
          for k, name, safe in named if (d.examples.get(name) or [])],
    ]  # fmt: skip


def make_adaptation_figures(
    adaptation: Adaptation | None, data: AdaptationFigureData | None, out_dir: str | Path
) -> dict[str, Path]:
    """Every adaptation figure of the typed block report.adaptation (none without it), with
    the adapt stage's figure data. Returns {figure key: path}; keys start with "adaptation_"."""
    if adaptation is None:
        return {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    for key, draw, args in adaptation_figures(adaptation, data, out):
        path = draw(*args)
        if path is not None:
            figures[key] = path
    return figures
