"""Render a typed Report into a folder: figures/, report.pdf, then report.json (last).

`render_outputs(report, inputs, folder)` is the report stage's one entry point. What the PDF
shows beyond report.json (2-D points, image files for thumbnails, adaptation curves) comes in
`RenderInputs`; pictures are read here, through `load_thumbnail`, never by the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.results import Report

THUMBNAILS_PER_END = 4  # closest and farthest images shown per secondary
DUPLICATE_PAIRS_SHOWN = 6  # duplicate pairs drawn per secondary
THUMBNAIL_PX = 160


@dataclass
class RenderInputs:
    """What the figures need beyond report.json."""

    scatter: Any = None  # worker.analysis.ScatterPoints of the first extractor
    image_uris: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset -> id -> uri
    storage: Any = None  # the job's StorageConfig, for s3:// images
    adaptation: dict | None = None  # worker.adapt.run extras for the adaptation figures
    #: dataset -> id -> worker.sources.samples.Sample, for ids that are video frames or crops
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class FigureData:
    """Decoded pictures and points handed to worker.report.figures."""

    scatter: Any = None
    thumbnails: dict[str, dict[str, list]] = field(default_factory=dict)  # S -> end -> [(id, img)]
    duplicate_pairs: dict[str, list] = field(default_factory=dict)  # S -> [(caption, a, b)]
    adaptation: dict | None = None


def load_thumbnail(uri: str | None, storage=None, size: int = THUMBNAIL_PX, sample=None):
    """The image at `uri` decoded (as the embedding stage decodes it) and shrunk to fit
    size x size; for a `sample` (a video frame or an object crop), the frame or the crop.
    None when it is missing or cannot be read any more."""
    if not uri and sample is None:
        return None
    from worker.images import ImageError, decode_image
    from worker.sources import read_bytes

    try:
        if sample is not None:
            img = sample.pixels(storage)
        else:
            img = decode_image(read_bytes(uri, storage))
    except (OSError, ImageError):
        return None
    img.thumbnail((size, size))
    return img


def closest_and_farthest(report: Report, inputs: RenderInputs) -> dict[str, dict[str, list]]:
    """The THUMBNAILS_PER_END closest and farthest images of each S (by I_dist), decoded;
    only for the secondaries the PDF shows (report.ranking: its sections and both ends)."""
    wanted = None
    if report.ranking is not None:
        r = report.ranking
        wanted = set(r.sections) | set(r.closest) | set(r.farthest)
    out = {}
    for sec in report.secondaries:
        if wanted is not None and sec.name not in wanted:
            continue
        uris = inputs.image_uris.get(sec.name) or {}
        samples = inputs.samples.get(sec.name) or {}
        if not uris or not sec.images:
            continue
        known = [k for k, im in enumerate(sec.images) if im.i_dist is not None]
        order = np.asarray(known)[
            np.argsort([sec.images[k].i_dist for k in known], kind="stable")
        ].astype(int)
        ends = {"closest": order[:THUMBNAILS_PER_END], "farthest": order[::-1][:THUMBNAILS_PER_END]}
        out[sec.name] = {}
        for label, rows in ends.items():
            thumbs = []
            for r in rows:
                image_id = sec.images[r].id
                img = load_thumbnail(
                    uris.get(image_id), inputs.storage, sample=samples.get(image_id)
                )
                if img is not None:
                    thumbs.append((image_id, img))
            out[sec.name][label] = thumbs
    return out


def duplicate_pairs(report: Report, inputs: RenderInputs) -> dict[str, list]:
    """The first duplicate pairs of each S (with P first, then within S), decoded."""
    p_uris = inputs.image_uris.get(report.primary.name) or {}
    p_samples = inputs.samples.get(report.primary.name) or {}
    shown = set(report.ranking.sections) if report.ranking is not None else None
    out = {}
    for sec in report.secondaries:
        if shown is not None and sec.name not in shown:
            continue
        s_uris = inputs.image_uris.get(sec.name) or {}
        s_samples = inputs.samples.get(sec.name) or {}
        if sec.duplicates is None or not s_uris:
            continue
        d = sec.duplicates
        wanted = [
            (
                f"{x.id} vs {report.primary.name}:{x.primary_id} (d = {x.distance:.3g})",
                (s_uris.get(x.id), s_samples.get(x.id)),
                (p_uris.get(x.primary_id), p_samples.get(x.primary_id)),
            )
            for x in d.with_primary
        ] + [
            (
                f"{x.id_a} vs {x.id_b} (d = {x.distance:.3g})",
                (s_uris.get(x.id_a), s_samples.get(x.id_a)),
                (s_uris.get(x.id_b), s_samples.get(x.id_b)),
            )
            for x in d.within
        ]
        pairs = []
        for caption, (a, sa), (b, sb) in wanted[:DUPLICATE_PAIRS_SHOWN]:
            img_a = load_thumbnail(a, inputs.storage, sample=sa)
            img_b = load_thumbnail(b, inputs.storage, sample=sb)
            if img_a is not None and img_b is not None:
                pairs.append((caption, img_a, img_b))
        if pairs:
            out[sec.name] = pairs
    return out


def render_outputs(report: Report, inputs: RenderInputs, folder: Path) -> dict[str, Path]:
    """Draw the figures, print report.pdf and write report.json (last) into `folder`.

    A forked child loads WeasyPrint while the figures are drawn (in forked processes too),
    then prints the PDF (worker.report.forked). Returns {figure key: PNG path}."""
    from worker.report.forked import Child
    from worker.report.model import write_report_json
    from worker.report.pdf import prepare, render_pdf

    pdf_path = folder / "report.pdf"
    with Child(prepare, lambda figures: render_pdf(report, figures, pdf_path)) as printer:
        # after the fork: matplotlib loads here while WeasyPrint loads in the child
        from worker.report.figures import make_figures

        data = FigureData(
            scatter=inputs.scatter,
            thumbnails=closest_and_farthest(report, inputs),
            duplicate_pairs=duplicate_pairs(report, inputs),
            adaptation=inputs.adaptation,
        )
        figures = make_figures(report, data, folder / "figures")
        printer.result(figures)
    write_report_json(report, folder / "report.json")
    return figures
