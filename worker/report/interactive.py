"""report.html: one self-contained, offline page beside report.pdf.

`render_interactive(report, data, path)` writes it: page 1's table (decide.decision), sortable
and filterable; an image browser per secondary (thumbnails embedded as small JPEG data URIs,
sorted by novelty or I_dist); the joint-PCA scatter with the hovered image shown; the dataset
matrix with its groups; diversity and coverage histograms per selection; the history trends
and the estimate curve. plotly.js draws the plots: its JavaScript, shipped in the plotly
package, is inlined (no CDN, no network); the plots go in as plotly figure specs (JSON), built
here without plotly's Python figure classes, which cost seconds.
The page reads the typed Report and the decoded pictures (worker.report.inputs.HtmlData); it
computes nothing: sorting and filtering only reorder what the report holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from markupsafe import Markup

from worker.report.decide import COLUMNS, decision
from worker.report.fmt import fmt_num
from worker.report.model import atomic_write_bytes
from worker.report.pictures import jpeg_uri
from worker.report.style import PALETTE, PRIMARY_COLOUR
from worker.results import Histogram, Report, SecondaryResult

THUMB_PX = 96  # longest side of an embedded thumbnail
IMAGE_ROWS = 500  # rows of a secondary's image table (most novel first); report.json has all
SVG_POINTS = 5000  # scatter points drawn as SVG; beyond, WebGL


@dataclass
class HtmlData:
    """What report.html shows beyond report.json: 2-D points and decoded thumbnails."""

    scatter: object | None = None  # worker.analysis.ScatterPoints
    #: dataset -> image id -> decoded picture (PIL), for the images the browser shows
    pictures: dict[str, dict[str, object]] = field(default_factory=dict)
    #: dataset -> ids in dataset order (the scatter's rows), for the primary's hover
    ids: dict[str, list[str]] = field(default_factory=dict)


def browser_order(sec: SecondaryResult) -> list[int]:
    """Rows of sec.images, most novel first (ties and sets without novelty: by I_dist, far
    first); images without a value last."""

    def key(k: int):
        im = sec.images[k]
        nov = getattr(im, "novelty", None)
        return (
            nov is None,
            -(nov or 0.0),
            im.i_dist is None,
            -(im.i_dist or 0.0),
            k,
        )

    return sorted(range(len(sec.images)), key=key)


def _layout(title: str, height: int = 420, **extra) -> dict:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "template": None,
        "plot_bgcolor": "white",
        "font": {"family": "DejaVu Sans, Arial, sans-serif", "size": 12},
        "hovermode": "closest",
        **extra,
    }


def _axis(title: str = "", **extra) -> dict:
    return {"title": {"text": title}, "gridcolor": "#e5e5e5", "zeroline": False, **extra}


def scatter_plot(report: Report, data: HtmlData, thumbs: dict[str, dict[str, str]]) -> dict | None:
    """The joint-PCA scatter; customdata = [dataset, id, thumbnail key or '']."""
    sc = data.scatter
    if sc is None:
        return None
    by_name = {s.name: s for s in report.secondaries}
    total = sum(len(np.asarray(v)) for v in sc.points.values())
    kind = "scattergl" if total > SVG_POINTS else "scatter"
    traces = []
    for k, name in enumerate(sc.names):
        pts = np.asarray(sc.points.get(name, []), dtype=float).reshape(-1, 2)
        if not len(pts):
            continue
        ids = [im.id for im in by_name[name].images] if name in by_name else data.ids.get(name, [])
        ids = ids[: len(pts)] + [""] * (len(pts) - len(ids))
        have = thumbs.get(name, {})
        primary = name == report.primary.name
        traces.append(
            {
                "type": kind,
                "x": pts[:, 0].tolist(),
                "y": pts[:, 1].tolist(),
                "mode": "markers",
                "name": f"{name} (primary)" if primary else name,
                "marker": {
                    "size": 5 if primary else 7,
                    "opacity": 0.5 if primary else 0.8,
                    "color": PRIMARY_COLOUR if primary else PALETTE[(k - 1) % len(PALETTE)],
                },
                "customdata": [[name, i, i if i in have else ""] for i in ids],
                "hovertemplate": "%{customdata[0]}<br>%{customdata[1]}<extra></extra>",
            }
        )
    layout = _layout("Joint PCA: the first two components (hover a point to see its image)", 560)
    layout["xaxis"] = _axis("principal component 1")
    layout["yaxis"] = _axis("principal component 2")
    return {"data": traces, "layout": layout}


def matrix_plot(report: Report) -> dict | None:
    """The dataset matrix in clustering order, each dataset's group in its axis label."""
    from worker.report.distance_figures import group_of, matrix_values

    got = matrix_values(report)
    if got is None:
        return None
    values, order, label = got
    groups = group_of(report)
    names = [report.matrix.names[i] for i in order]
    labels = [f"{n} [{groups[n]}]" if n in groups else n for n in names]
    z = [[float(v) if np.isfinite(v) else None for v in row] for row in values]
    text = [[fmt_num(v, 3) if v is not None else "" for v in row] for row in z]
    trace = {
        "type": "heatmap",
        "z": z,
        "x": labels,
        "y": labels,
        "text": text,
        "texttemplate": "%{text}",
        "colorscale": "Cividis",
        "colorbar": {"title": {"text": label}},
        "hovertemplate": "%{y} vs %{x}: %{z:.4g}<extra></extra>",
    }
    layout = _layout(f"Every dataset against every other ({label}; clustering order)", 640)
    layout["yaxis"] = {"autorange": "reversed"}
    layout["margin"] = {"l": 160, "r": 20, "t": 50, "b": 140}
    return {"data": [trace], "layout": layout}


def _steps(hist: Histogram | None, name: str, axes: tuple[str, str], dash: bool) -> list[dict]:
    if hist is None or not hist.counts:
        return []
    edges = np.asarray(hist.edges, dtype=float)
    return [
        {
            "type": "scatter",
            "x": ((edges[:-1] + edges[1:]) / 2).tolist(),
            "y": list(hist.counts),
            "mode": "lines",
            "line": {"shape": "hvh", "dash": "dash" if dash else "solid", "color": "#0072B2"
                     if not dash else "#000000"},
            "name": name,
            "showlegend": False,
            "xaxis": axes[0],
            "yaxis": axes[1],
            "hovertemplate": f"{name}: %{{y}} images near %{{x:.3g}}<extra></extra>",
        }
    ]  # fmt: skip


def histogram_plot(sec: SecondaryResult) -> dict | None:
    """Per selection (a row): diversity and coverage of the selection (solid) and of a random
    subset of the same size (dashed)."""
    sels = [s for s in sec.selections if s.diversity or s.coverage]
    if not sels:
        return None
    n = len(sels)
    row_px = 200
    gap = 30 / (row_px * n)  # about 30 px above each row's plots (titles), 30 below (ticks)
    layout = _layout(
        f"{sec.name}: selections (solid) against random subsets (dashed)", row_px * n + 90
    )
    traces, notes = [], []
    for r, s in enumerate(sels):
        top = 1 - r / n
        bottom = top - 1 / n + gap
        for c, (what, mine, rand) in enumerate(
            (
                ("diversity", s.diversity, s.random_diversity),
                ("coverage", s.coverage, s.random_coverage),
            )
        ):
            k = 2 * r + c + 1
            xa, ya = ("x", "y") if k == 1 else (f"x{k}", f"y{k}")
            left = 0.0 if c == 0 else 0.54
            layout[f"xaxis{'' if k == 1 else k}"] = _axis("", domain=[left, left + 0.46], anchor=ya)
            layout[f"yaxis{'' if k == 1 else k}"] = _axis(
                "images", domain=[bottom, top - 2 * gap], anchor=xa
            )
            traces += _steps(mine.histogram if mine else None, "selection", (xa, ya), False)
            traces += _steps(rand.histogram if rand else None, "random", (xa, ya), True)
            notes.append(
                {
                    "text": f"{s.strategy}, {s.count}: {what}",
                    "xref": "paper",
                    "yref": "paper",
                    "x": left,
                    "y": top - gap,
                    "xanchor": "left",
                    "yanchor": "bottom",
                    "showarrow": False,
                    "font": {"size": 11},
                }
            )
    layout["annotations"] = notes
    return {"data": traces, "layout": layout}


def history_plot(report: Report) -> dict | None:
    h = report.history
    if h is None:
        return None
    traces = []
    for sec in h.secondaries:
        xs = [p.run_id or p.finished or f"run {i + 1}" for i, p in enumerate(sec.series)]
        ys = [p.o_dist_mean for p in sec.series]
        traces.append(
            {"type": "scatter", "x": xs, "y": ys, "mode": "lines+markers", "name": sec.name}
        )
    layout = _layout("o_dist_mean per run (oldest left, this run last)", 420)
    layout["xaxis"] = _axis("run", type="category")
    layout["yaxis"] = _axis("o_dist_mean")
    return {"data": traces, "layout": layout}


def estimate_plot(report: Report) -> dict | None:
    est = report.estimate
    if est is None or not est.made or est.curve is None:
        return None
    c = est.curve
    line = {"type": "scatter", "mode": "lines"}
    traces = [
        {**line, "x": c.x, "y": c.high, "line": {"width": 0}, "showlegend": False},
        {**line, "x": c.x, "y": c.low, "fill": "tonexty", "line": {"width": 0}, "name": "90% band"},
        {**line, "x": c.x, "y": c.f, "line": {"color": "black"}, "name": "fit"},
    ]
    for lab in est.labelled:
        traces.append(
            {"type": "scatter", "mode": "markers", "x": [lab.o_dist_mean], "y": [lab.ods_f],
             "name": f"{lab.dataset} (labelled)", "marker": {"symbol": "diamond", "size": 10}}
        )  # fmt: skip
    for s in est.secondaries:
        if s.estimated_f is None or s.o_dist_mean is None:
            continue
        high = s.high if s.high is not None else s.estimated_f
        low = s.low if s.low is not None else s.estimated_f
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "x": [s.o_dist_mean],
                "y": [s.estimated_f],
                "error_y": {
                    "type": "data",
                    "symmetric": False,
                    "array": [high - s.estimated_f],
                    "arrayminus": [s.estimated_f - low],
                },
                "name": f"{s.dataset} (estimate)",
                "marker": {"size": 10},
            }
        )
    layout = _layout("Estimated F-score against distance", 440)
    layout["xaxis"] = _axis("size-free distance (i_dist_mean, o_dist_mean)")
    layout["yaxis"] = _axis("F-score", range=[-0.02, 1.05])
    return {"data": traces, "layout": layout}


def _thumbs(data: HtmlData) -> dict[str, dict[str, str]]:
    return {
        name: {i: jpeg_uri(img, THUMB_PX) for i, img in pics.items() if img is not None}
        for name, pics in data.pictures.items()
    }


def _images(sec: SecondaryResult, thumbs: dict[str, str]) -> list[dict]:
    rows = []
    for k in browser_order(sec)[:IMAGE_ROWS]:
        im = sec.images[k]
        rows.append(
            {
                "id": im.id,
                "novelty": getattr(im, "novelty", None),
                "novel": getattr(im, "novel", None),
                "i_dist": im.i_dist,
                "i_dist_scaled": im.i_dist_scaled,
                "thumb": im.id in thumbs,
            }
        )
    return rows


def context(report: Report, data: HtmlData) -> dict:
    """The template's values: the plots as plotly specs and the browser's data, as JSON."""
    thumbs = _thumbs(data)
    plots = {}
    for key, spec in (
        ("scatter", scatter_plot(report, data, thumbs)),
        ("matrix", matrix_plot(report)),
        ("history", history_plot(report)),
        ("estimate", estimate_plot(report)),
    ):
        if spec is not None:
            plots[key] = spec
    histograms = {}
    for k, sec in enumerate(report.secondaries):
        spec = histogram_plot(sec)
        if spec is not None:
            histograms[sec.name] = f"hist-{k}"
            plots[f"hist-{k}"] = spec
    browser = {sec.name: _images(sec, thumbs.get(sec.name, {})) for sec in report.secondaries}
    from plotly.offline import get_plotlyjs

    return {
        "report": report,
        "d": decision(report),
        "columns": COLUMNS,
        "plots": plots,
        "histograms": histograms,
        "page_json": Markup(_json_script({"images": browser, "thumbs": thumbs, "plots": plots})),
        "plotlyjs": Markup(get_plotlyjs()),
        "image_rows": IMAGE_ROWS,
    }


def _json_script(value) -> str:
    """JSON safe inside a <script> element (no '</' sequence can close it)."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


def render_interactive(report: Report, data: HtmlData, path: str | Path) -> Path:
    """Write report.html (see the module docstring) atomically to `path`."""
    from worker.report.pdf import environment

    html = environment().get_template("interactive.html.j2").render(**context(report, data))
    return atomic_write_bytes(path, html.encode("utf-8"))
