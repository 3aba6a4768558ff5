"""Pictures for report.pdf and report.html: images decoded once, shrunk, and embedded as small
JPEG data URIs (no figure drawing: WeasyPrint and the browser lay them out with their
captions as text).

- `Pictures`: (dataset, image id) -> decoded picture, each read once;
- `picture_sets(report, pictures)`: the closest and farthest images of each secondary the PDF
  shows, the ranking strip (paper figures 19-29) and duplicate pairs, as (data URI, caption)
  rows for the templates.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field

from worker.report.fmt import fmt_num
from worker.report.inputs import RenderInputs
from worker.results import Report

THUMBNAILS_PER_END = 4  # closest and farthest images shown per secondary in the PDF
DUPLICATE_PAIRS_SHOWN = 6  # duplicate pairs shown per secondary
THUMBNAIL_PX = 160  # longest side of a decoded picture
PDF_PX = 128  # longest side of a picture embedded in the PDF


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


def jpeg_uri(img, px: int) -> str:
    """A picture as a JPEG data URI, its longest side at most px (16-bit and float images
    stretched to their own range first)."""
    import numpy as np
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), "L")
    small = img.convert("RGB")
    small.thumbnail((px, px))
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Pictures:
    """Decodes each image once for the PDF and report.html: (dataset, id) -> picture."""

    def __init__(self, inputs: RenderInputs):
        self._inputs = inputs
        self._cache: dict[tuple[str, str], object] = {}

    def get(self, dataset: str, image_id: str):
        key = (dataset, image_id)
        if key not in self._cache:
            uri = (self._inputs.image_uris.get(dataset) or {}).get(image_id)
            sample = (self._inputs.samples.get(dataset) or {}).get(image_id)
            self._cache[key] = load_thumbnail(uri, self._inputs.storage, sample=sample)
        return self._cache[key]

    def has_images(self, dataset: str) -> bool:
        return bool(self._inputs.image_uris.get(dataset) or self._inputs.samples.get(dataset))


@dataclass(frozen=True)
class Shown:
    """One embedded picture and its caption lines."""

    uri: str
    caption: list[str]


@dataclass
class PictureSets:
    """What the PDF shows as pictures (data URIs), per place."""

    #: secondary -> [("closest", [Shown]), ("farthest", [Shown])]
    ends: dict[str, list[tuple[str, list[Shown]]]] = field(default_factory=dict)
    strip: list[tuple[str, list[Shown]]] = field(default_factory=list)
    #: secondary -> [(caption, Shown a, Shown b)]
    duplicates: dict[str, list[tuple[str, Shown, Shown]]] = field(default_factory=dict)


def _ends(report: Report, pictures: Pictures, name: str) -> dict[str, list[tuple[str, object]]]:
    sec = next(s for s in report.secondaries if s.name == name)
    known = [k for k, im in enumerate(sec.images) if im.i_dist is not None]
    order = sorted(known, key=lambda k: sec.images[k].i_dist)
    out = {}
    for label, rows in (
        ("closest", order[:THUMBNAILS_PER_END]),
        ("farthest", order[::-1][:THUMBNAILS_PER_END]),
    ):
        got = [(sec.images[r].id, pictures.get(name, sec.images[r].id)) for r in rows]
        out[label] = [(i, img) for i, img in got if img is not None]
    return out


def picture_sets(report: Report, pictures: Pictures) -> PictureSets:
    """The PDF's pictures: both ends of each secondary with a block (report.ranking.sections),
    the ranking strip over both ends of the ranking, and the first duplicate pairs."""
    names = [s.name for s in report.secondaries]
    sections = list(report.ranking.sections) if report.ranking is not None else names
    out = PictureSets()
    ends = {}
    wanted = sections + (report.ranking.highlighted if report.ranking is not None else [])
    for name in dict.fromkeys(wanted):
        if pictures.has_images(name):
            ends[name] = _ends(report, pictures, name)
    scaled = {s.name: {im.id: im.i_dist_scaled for im in s.images} for s in report.secondaries}
    for name in sections:
        if name not in ends or not any(ends[name].values()):
            continue
        out.ends[name] = [
            (
                label,
                [
                    Shown(
                        jpeg_uri(img, PDF_PX),
                        [i, f"scaled I_dist {fmt_num(scaled[name].get(i), 3)}"],
                    )
                    for i, img in ends[name][label]
                ],
            )
            for label in ("closest", "farthest")
        ]
    if report.ranking is not None:
        for label, group in (
            ("closest", report.ranking.closest),
            ("farthest", report.ranking.farthest),
        ):
            row = []
            for name in group:
                got = (ends.get(name) or {}).get(label) or []
                if got:
                    image_id, img = got[0]
                    row.append(Shown(jpeg_uri(img, PDF_PX), [name, image_id]))
            if row:
                out.strip.append((label, row))
    prim = report.primary.name
    for sec in report.secondaries:
        if sec.name not in sections or sec.duplicates is None or not pictures.has_images(sec.name):
            continue
        d = sec.duplicates
        wanted_pairs = [
            (f"{x.id} vs {prim}:{x.primary_id} (d = {fmt_num(x.distance, 3)})", (sec.name, x.id),
             (prim, x.primary_id))
            for x in d.with_primary
        ] + [
            (f"{x.id_a} vs {x.id_b} (d = {fmt_num(x.distance, 3)})", (sec.name, x.id_a),
             (sec.name, x.id_b))
            for x in d.within
        ]  # fmt: skip
        pairs = []
        for caption, a, b in wanted_pairs[:DUPLICATE_PAIRS_SHOWN]:
            img_a, img_b = pictures.get(*a), pictures.get(*b)
            if img_a is not None and img_b is not None:
                pairs.append(
                    (
                        caption,
                        Shown(jpeg_uri(img_a, PDF_PX), [a[1]]),
                        Shown(jpeg_uri(img_b, PDF_PX), [b[1]]),
                    )
                )
        if pairs:
            out.duplicates[sec.name] = pairs
    return out
