"""The selections, exported for labelling tools (selection.export; method.md §3.7).

Pure builders turn a typed Report (and each image's location) into rows, CSV text, Label
Studio tasks and a FiftyOne samples manifest; `write_exports` writes the chosen files into the
run folder (atomically), from where the run store publishes them (report.json last).

What is exported: for every secondary, each strategy's selection of the largest count, in pick
order (rank 1 = picked first); the exports name exactly these images. selection.csv has one row
per (strategy, image); label-studio.json and fiftyone.json one task / sample per distinct image
(`strategy` lists every strategy that chose it, `rank` is its best rank).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.report.model import atomic_write_bytes
from worker.results import Report

#: selection.export name -> file written into the run folder
FILES = {"csv": "selection.csv", "label-studio": "label-studio.json", "fiftyone": "fiftyone.json"}
CSV_COLUMNS = ("secondary", "id", "file", "novelty", "i_dist", "strategy", "rank")


@dataclass(frozen=True)
class ExportRow:
    """One selected image of one strategy: where it is and why it was chosen."""

    secondary: str
    id: str
    file: str  # local path or s3:// URI (the id for precomputed embeddings)
    novelty: float | None
    i_dist: float | None
    strategy: str
    rank: int  # 1 = picked first


def export_rows(report: Report, locations: dict[str, dict[str, str]]) -> list[ExportRow]:
    """Rows for every secondary's largest selection of each strategy (module docstring).
    `locations`: secondary -> id -> file path or s3:// URI (missing: the id)."""
    rows = []
    for sec in report.secondaries:
        images = {im.id: im for im in sec.images}
        where = locations.get(sec.name, {})
        largest: dict[str, Any] = {}
        for sel in sec.selections:
            if sel.strategy not in largest or sel.count > largest[sel.strategy].count:
                largest[sel.strategy] = sel
        for strategy, sel in largest.items():
            for rank, image_id in enumerate(sel.ids, start=1):
                im = images.get(image_id)
                rows.append(
                    ExportRow(
                        secondary=sec.name,
                        id=image_id,
                        file=where.get(image_id) or image_id,
                        novelty=None if im is None else im.novelty,
                        i_dist=None if im is None else im.i_dist,
                        strategy=strategy,
                        rank=rank,
                    )
                )
    return rows


def csv_text(rows: list[ExportRow]) -> str:
    """selection.csv: a header (CSV_COLUMNS) and one row per ExportRow; empty cells for null."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow(["" if (v := getattr(r, c)) is None else v for c in CSV_COLUMNS])
    return out.getvalue()


def _distinct(rows: list[ExportRow]) -> list[dict[str, Any]]:
    """One record per (secondary, id), in first-seen order: strategies joined, best rank."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r.secondary, r.id)
        if key not in merged:
            merged[key] = {
                "secondary": r.secondary,
                "id": r.id,
                "file": r.file,
                "novelty": r.novelty,
                "i_dist": r.i_dist,
                "strategy": [r.strategy],
                "rank": r.rank,
            }
        else:
            merged[key]["strategy"].append(r.strategy)
            merged[key]["rank"] = min(merged[key]["rank"], r.rank)
    return list(merged.values())


def label_studio_tasks(rows: list[ExportRow]) -> list[dict[str, Any]]:
    """Label Studio's JSON import format: a list of tasks {"data": {"image": URL, ...}}, one
    per distinct image; `image` is the file path or s3:// URI (Label Studio resolves s3:// with
    a source storage for the bucket; local files through its local-files storage), the other
    data fields (novelty, i_dist, secondary, id, strategy, rank) are shown with the task."""
    return [
        {
            "data": {
                "image": d["file"],
                "novelty": d["novelty"],
                "i_dist": d["i_dist"],
                "secondary": d["secondary"],
                "id": d["id"],
                "strategy": ",".join(d["strategy"]),
                "rank": d["rank"],
            }
        }
        for d in _distinct(rows)
    ]


def fiftyone_samples(rows: list[ExportRow], name: str = "selection") -> dict[str, Any]:
    """A FiftyOne samples manifest: {"name", "media_type": "image", "samples": [{"filepath",
    "tags": [secondary], novelty, i_dist, secondary, image_id, strategy, rank}]}; load it with
    `fo.Dataset(name).add_samples([fo.Sample(**s) for s in manifest["samples"]])`."""
    return {
        "name": name,
        "media_type": "image",
        "samples": [
            {
                "filepath": d["file"],
                "tags": [d["secondary"]],
                "secondary": d["secondary"],
                "image_id": d["id"],
                "novelty": d["novelty"],
                "i_dist": d["i_dist"],
                "strategy": ",".join(d["strategy"]),
                "rank": d["rank"],
            }
            for d in _distinct(rows)
        ],
    }


def write_exports(formats: list[str], rows: list[ExportRow], folder: str | Path) -> list[str]:
    """Write the files of `formats` (selection.export) into `folder`, each atomically; returns
    their names in FILES order."""
    folder = Path(folder)
    written = []
    for fmt, name in FILES.items():
        if fmt not in formats:
            continue
        if fmt == "csv":
            data = csv_text(rows).encode("utf-8")
        elif fmt == "label-studio":
            data = json.dumps(label_studio_tasks(rows), indent=1).encode("utf-8")
        else:
            data = json.dumps(fiftyone_samples(rows), indent=1).encode("utf-8")
        atomic_write_bytes(folder / name, data)
        written.append(name)
    return written
