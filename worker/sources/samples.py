"""Samples beyond whole images: video frames and object crops (docs/samples.md).

A sample is an Item (id, uri of its source file) that also knows how to make its pixels: a
frame position in a video, or a box of an image. The embedding stage treats it as an image
(`worker.embeddings.read_decoded` calls `Sample.pixels` and looks the cache up under
`Sample.digest`); everything downstream sees one row per sample.

- Frames: every video file of a dataset folder (VIDEO_EXTENSIONS) is demuxed once (no
  decoding) to list its frames' timestamps; `frames: {every_s | every_n, max_per_video}`
  picks frames (`select_frames`); id `clip.mp4#t=12.000`. A frame is decoded only when its
  vector is not cached: seek to the keyframe before it, decode forward to its timestamp.
- Crops: `boxes:` (COCO JSON or a folder of YOLO txt files) gives boxes per image; each box,
  padded and clipped to the image (`crop_box`), is a sample with id `image.jpg#box=K` (K: the
  COCO annotation id, or the 0-based line of the YOLO file) and its class name.
- Cache key of a sample: sha256 of (SAMPLE_VERSION, the source file's sha256, the position
  (frame timestamp and index, or pixel box), the settings that change its pixels). Two runs
  of one job give the same ids, digests and pixels.

Bad input never stops a run here: each unusable video, frame, box or annotation is listed
in the Listing's `skipped` with its reason (max_skipped_fraction decides later).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from worker.errors import JobError
from worker.images import MAX_IMAGE_PIXELS, ImageError, decode_image
from worker.sources import (
    IMAGE_EXTENSIONS,
    Item,
    Listing,
    ListingPolicy,
    is_s3,
    read_bytes,
)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm")
#: changes whenever a sample's pixels change for the same source bytes and position
SAMPLE_VERSION = "samples1"
CROPS_SUFFIX = "/crops"  # samples: both -> secondaries `<name>` and `<name>/crops`
_EXPAND_THREADS = 4
_BYTES_CACHE_MB = 256  # S3 videos/images kept in memory while their samples decode


def is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class Sample(Item):
    """A video frame or an object crop. `uri` is the source file; `id` names the sample.

    kind "frame": `frame` (index in presentation order), `pts` (stream timestamp), `time_s`
    (seconds from the first frame). kind "crop": `box` (x0, y0, x1, y1) in pixels of the
    upright image, x1/y1 exclusive (`img[y0:y1, x0:x1]`), `label` (class name)."""

    kind: str = "frame"
    file: str = ""  # the source file's id (path relative to the dataset root)
    source_hash: str = ""  # sha256 of the source file
    settings: str = ""  # sampling settings that change the pixels (part of the digest)
    frame: int | None = None
    pts: int | None = None
    time_s: float | None = None
    box: tuple[int, int, int, int] | None = None
    label: str | None = None

    @property
    def position(self) -> str:
        if self.kind == "frame":
            return f"frame={self.frame};pts={self.pts}"
        return "box=" + ",".join(str(v) for v in self.box or ())

    @property
    def digest(self) -> str:
        """The sample's cache key: 64 hex digits from the source hash, position, settings."""
        text = f"{SAMPLE_VERSION}|{self.kind}|{self.source_hash}|{self.position}|{self.settings}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def pixels(self, storage=None):
        """The sample's RGB PIL image; ImageError (the skip reason) when it cannot be made."""
        if self.kind == "frame":
            return decode_frame(self.uri, self.pts, storage)
        img = decode_image(_source_bytes(self.uri, storage))
        return img.crop(self.box)

    def source(self) -> dict:
        """report.json's `source` of this sample: {file, time_s, frame} or {file, box, class}."""
        if self.kind == "frame":
            return {"file": self.file, "time_s": self.time_s, "frame": self.frame}
        return {"file": self.file, "box": list(self.box or ()), "class": self.label}


# --------------------------------------------------------------------------- pure rules


def select_frames(
    times: list[float] | np.ndarray,
    *,
    every_s: float | None = None,
    every_n: int | None = None,
    max_per_video: int | None = None,
) -> list[int]:
    """Indices of the frames to sample, from frame times (seconds, ascending).

    every_n: frames 0, n, 2n, ...; every_s: for k = 0, 1, 2, ... the first frame at or after
    k * every_s (multiples without a frame are passed over; one frame is never taken twice).
    max_per_video: of the frames picked, `max_per_video` spread evenly (first and last kept;
    positions round(linspace(0, count - 1, max_per_video)))."""
    n = len(times)
    if every_n is not None:
        chosen = list(range(0, n, int(every_n)))
    else:
        step = float(every_s if every_s is not None else 1.0)
        chosen, next_t = [], 0.0
        for i, t in enumerate(times):
            if t >= next_t - 1e-9:
                chosen.append(i)
                next_t = (math.floor(t / step + 1e-9) + 1) * step
    if max_per_video is not None and len(chosen) > max_per_video:
        picks = np.rint(np.linspace(0, len(chosen) - 1, max_per_video)).astype(int)
        chosen = [chosen[k] for k in picks]
    return chosen


def crop_box(
    box: tuple[float, float, float, float],
    width: int,
    height: int,
    *,
    padding: float = 0.0,
    min_size: int = 1,
) -> tuple[tuple[int, int, int, int] | None, str | None, bool]:
    """A box (x0, y0, x1, y1, float pixels) as the integer crop of a width x height image.

    The box is clipped to the image; empty after clipping -> (None, reason).
    Rounding snaps values within SNAP (1e-6 pixel) of an integer to it. Its clipped size
    below min_size on either side -> (None, reason). Then each side grows by padding times the
    box's width (x) or height (y), and the result is rounded outwards (floor / ceil) and
    clipped again. Returns (box, None, clipped) with `clipped` true when the given box
    reached outside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 < x0 or y1 < y0:
        return None, f"box {_fmt(box)} is not a box (x1 < x0, y1 < y0 or not finite)", False
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    clipped = (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
    if cx1 <= cx0 or cy1 <= cy0:
        return None, f"box {_fmt(box)} lies outside the {width}x{height} image", clipped
    w, h = cx1 - cx0, cy1 - cy0
    if w < min_size or h < min_size:
        return (
            None,
            f"box {w:g}x{h:g} pixels is smaller than crop.min_size {min_size}",
            clipped,
        )
    px, py = padding * w, padding * h
    out = (
        max(0, _floor(cx0 - px)),
        max(0, _floor(cy0 - py)),
        min(width, _ceil(cx1 + px)),
        min(height, _ceil(cy1 + py)),
    )
    return out, None, clipped


def _floor(v: float) -> int:
    """floor, with values within SNAP of an integer taken as that integer (YOLO fractions
    times the image size carry float noise: 0.3 * 100 = 30.000000000000004)."""
    return math.floor(v + SNAP)


def _ceil(v: float) -> int:
    return math.ceil(v - SNAP)


SNAP = 1e-6


def _fmt(box) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


# --------------------------------------------------------------------------- reading


class _BytesCache:
    """A small LRU of source files read from S3 (several samples decode from one file)."""

    def __init__(self, limit_mb: int) -> None:
        self.limit = limit_mb << 20
        self.data: OrderedDict[str, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, uri: str, storage) -> bytes:
        with self.lock:
            if uri in self.data:
                self.data.move_to_end(uri)
                return self.data[uri]
        data = read_bytes(uri, storage)
        with self.lock:
            self.data[uri] = data
            while sum(len(v) for v in self.data.values()) > self.limit and len(self.data) > 1:
                self.data.popitem(last=False)
        return data


_BYTES = _BytesCache(_BYTES_CACHE_MB)


def _source_bytes(uri: str, storage) -> bytes:
    try:
        return _BYTES.get(uri, storage) if is_s3(uri) else read_bytes(uri, storage)
    except OSError as err:
        raise ImageError(f"cannot read: {err.strerror or err}") from None


def _open_video(uri: str, storage):
    """av.open on a local path, or on the bytes of an s3:// object."""
    import av

    if is_s3(uri):
        return av.open(io.BytesIO(_source_bytes(uri, storage)))
    return av.open(uri)


def _hash_file(uri: str, storage) -> str:
    if is_s3(uri):
        return hashlib.sha256(_source_bytes(uri, storage)).hexdigest()
    h = hashlib.sha256()
    with open(uri, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def probe_video(uri: str, storage=None) -> tuple[list[int], float, str | None]:
    """(presentation timestamps of the video's frames, ascending; the stream time base;
    a warning when demuxing stopped early). Demuxes packets, decodes nothing.

    Raises ImageError (the skip reason) for a file that is not a readable video."""
    import av

    try:
        container = _open_video(uri, storage)
    except ImageError:
        raise
    except Exception as err:  # noqa: BLE001 - av raises many types for corrupt data
        raise ImageError(f"cannot open video ({err.__class__.__name__}: {err})") from None
    warning = None
    with container:
        if not container.streams.video:
            raise ImageError("no video stream in the file")
        stream = container.streams.video[0]
        tb = float(stream.time_base) if stream.time_base else 0.0
        pts: list[int] = []
        try:
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is not None and packet.size:
                    pts.append(int(stamp))
        except (av.error.FFmpegError, OSError) as err:
            warning = f"demuxing stopped after {len(pts)} frames ({err.__class__.__name__})"
    if not pts or tb <= 0:
        raise ImageError("no video frames (empty or undecodable stream)")
    return sorted(set(pts)), tb, warning


def decode_frame(uri: str, pts: int, storage=None):
    """The RGB PIL image of the frame with timestamp `pts`: seek to the keyframe before it and
    decode forward; when the seek lands after it, decode from the start. ImageError if absent."""
    from PIL import Image

    def scan(seek: bool):
        with _open_video(uri, storage) as container:
            stream = container.streams.video[0]
            if seek:
                container.seek(pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                if frame.pts == pts:
                    return frame
                if frame.pts > pts:
                    return None  # overshot: the seek landed after the frame
        return None

    try:
        frame = scan(True) or scan(False)
    except ImageError:
        raise
    except Exception as err:  # noqa: BLE001 - corrupt or truncated data
        raise ImageError(f"cannot decode frame ({err.__class__.__name__}: {err})") from None
    if frame is None:
        raise ImageError("frame cannot be decoded (truncated or corrupt video)")
    if frame.width * frame.height > MAX_IMAGE_PIXELS:
        raise ImageError(f"frame too large ({frame.width}x{frame.height} pixels)")
    return Image.fromarray(frame.to_ndarray(format="rgb24"), mode="RGB")


def frame_samples(item: Item, frames, storage=None) -> tuple[list[Sample], list[dict], list[str]]:
    """The frame samples of one video item: (samples, skipped [{id, reason}], warnings)."""
    every_s = getattr(frames, "every_s", None)
    every_n = getattr(frames, "every_n", None)
    limit = getattr(frames, "max_per_video", None)
    if every_n is None and every_s is None:
        every_s = 1.0
    settings = f"every_n={every_n}" if every_n is not None else f"every_s={every_s!r}"
    try:
        digest = _hash_file(item.uri, storage)
        pts, tb, warning = probe_video(item.uri, storage)
    except ImageError as err:
        return [], [{"id": item.id, "reason": str(err)}], []
    except OSError as err:
        return [], [{"id": item.id, "reason": f"cannot read: {err.strerror or err}"}], []
    times = [(p - pts[0]) * tb for p in pts]
    chosen = select_frames(times, every_s=every_s, every_n=every_n, max_per_video=limit)
    out = [
        Sample(
            id=f"{item.id}#t={times[i]:.3f}",
            uri=item.uri,
            kind="frame",
            file=item.id,
            source_hash=digest,
            settings=settings,
            frame=i,
            pts=pts[i],
            time_s=round(times[i], 6),
        )
        for i in chosen
    ]
    return out, [], [f"{item.id}: {warning}"] if warning else []


# --------------------------------------------------------------------------- boxes


@dataclass(frozen=True)
class Box:
    """One annotated box before cropping: its key in the id, class, and coordinates."""

    key: int
    label: str | None  # None: unknown category (the reason says which)
    xyxy: tuple[float, float, float, float]
    normalized: bool = False  # YOLO: (cx, cy, w, h) as fractions of the image size
    problem: str | None = None


def parse_coco(data: bytes, where: str) -> tuple[dict[str, list[Box]], list[dict]]:
    """COCO JSON -> ({image file_name: [Box]}, skipped [{id, reason}]).

    JobError naming `where` when the file is not COCO JSON. An annotation naming an image id
    not in `images`, a bbox that is not [x, y, w, h] numbers, or a category id not in
    `categories` is skipped with its reason."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise JobError(f"{where}: not valid JSON ({err}); give a COCO annotation file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise JobError(
            f"{where}: not a COCO annotation file (needs 'images', 'annotations' and "
            "'categories' lists)"
        )
    images = {
        im.get("id"): str(im.get("file_name"))
        for im in doc.get("images") or []
        if isinstance(im, dict) and im.get("file_name") is not None
    }
    cats = {
        c.get("id"): str(c.get("name", c.get("id")))
        for c in doc.get("categories") or []
        if isinstance(c, dict)
    }
    boxes: dict[str, list[Box]] = {}
    skipped: list[dict] = []
    seen_ids: set[int] = set()
    for k, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            skipped.append({"id": f"annotations[{k}]", "reason": "not an object"})
            continue
        key = ann.get("id", k)
        if isinstance(key, bool) or not isinstance(key, int) or key < 0:
            skipped.append(
                {
                    "id": f"annotations[{k}]",
                    "reason": f"annotation id {key!r} is not a non-negative integer",
                }
            )
            continue
        if key in seen_ids:  # two samples must never share one id
            skipped.append({"id": f"annotation {key}", "reason": f"duplicate annotation id {key}"})
            continue
        seen_ids.add(key)
        file = images.get(ann.get("image_id"))
        if file is None:
            skipped.append(
                {
                    "id": f"annotation {key}",
                    "reason": f"image_id {ann.get('image_id')!r} is not in 'images'",
                }
            )
            continue
        bbox = ann.get("bbox")
        problem = None
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        ):
            problem, xyxy = f"bbox {bbox!r} is not [x, y, width, height]", (0.0, 0.0, 0.0, 0.0)
        else:
            x, y, w, h = (float(v) for v in bbox)
            xyxy = (x, y, x + w, y + h)
        label = cats.get(ann.get("category_id"))
        if label is None and problem is None:
            problem = f"unknown category id {ann.get('category_id')!r} (not in 'categories')"
        boxes.setdefault(file, []).append(Box(int(key), label, xyxy, problem=problem))
    return boxes, skipped


def parse_yolo(text: str, names: list[str] | None) -> list[Box]:
    """One YOLO label file ('class cx cy w h' per line, fractions of the image size)."""
    out = []
    for k, line in enumerate(text.splitlines()):
        parts = line.split()
        if not parts:
            continue
        problem, label, xyxy = None, None, (0.0, 0.0, 0.0, 0.0)
        try:
            cls = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:5])
            if len(parts) != 5:
                raise ValueError
            xyxy = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            if names is None:
                label = str(cls)
            elif 0 <= cls < len(names):
                label = names[cls]
            else:
                problem = f"unknown class id {cls} (the names list has {len(names)})"
        except ValueError:
            problem = f"line {k + 1} is not 'class cx cy w h': {line.strip()[:60]!r}"
        out.append(Box(k, label, xyxy, normalized=True, problem=problem))
    return out


def _yolo_names(files: dict[str, Item], storage) -> list[str] | None:
    """Class names of a YOLO folder: classes.txt (one per line) or data.yaml / dataset.yaml
    `names` (a list, or a mapping id -> name). None: ids are used as names."""
    import yaml

    for name in ("classes.txt", "obj.names"):
        if name in files:
            text = read_bytes(files[name].uri, storage).decode("utf-8", "replace")
            return [ln.strip() for ln in text.splitlines() if ln.strip()]
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        if name in files:
            uri = files[name].uri
            try:
                doc = yaml.safe_load(read_bytes(uri, storage)) or {}
            except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
                mark = getattr(err, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark else ""
                raise JobError(
                    f"{uri}: not valid YAML{where}; fix the YOLO {name} (its 'names') or remove it"
                ) from None
            names = doc.get("names") if isinstance(doc, dict) else None
            if isinstance(names, dict):
                ids = [k for k in names if str(k).isdigit()]
                if len(ids) != len(names):
                    raise JobError(
                        f"{uri}: 'names' must map class ids (0, 1, ...) to names; found keys "
                        f"{', '.join(repr(k) for k in list(names)[:5])}"
                    )
                top = max(int(k) for k in ids) + 1 if ids else 0
                return [str(names.get(i, names.get(str(i), i))) for i in range(top)]
            if isinstance(names, list):
                return [str(n) for n in names]
            if isinstance(names, str):
                raise JobError(
                    f"{uri}: 'names' is one string ({names[:40]!r}); give a list of class "
                    "names, e.g. names: [car, person]"
                )
    return None


def _list(root: str, extensions: tuple[str, ...], storage, policy) -> Listing:
    if is_s3(root):
        from worker.sources import s3

        return s3.list_items(root, extensions, storage)
    from worker.sources import local

    return local.list_items(root, extensions, policy or ListingPolicy())


def read_boxes(
    location: str, storage=None, policy=None, field: str = "boxes"
) -> tuple[dict[str, list[Box]], list[dict], bool]:
    """({image id or stem: [Box]}, skipped, keyed_by_stem) from a COCO file or YOLO folder.

    COCO keys are file_name values; YOLO keys are label-file stems (paired with images by
    stem, as masks are)."""
    if location.lower().endswith(".json"):
        try:
            data = read_bytes(location, storage)
        except OSError as err:
            raise JobError(
                f"{field}: cannot read {location} ({err.strerror or err}); check the path"
            ) from None
        boxes, skipped = parse_coco(data, f"{field} ({location})")
        return boxes, skipped, False
    files = _list(location, (".txt", ".yaml", ".yml", ".names"), storage, policy)
    by_id = {it.id: it for it in files}
    names = _yolo_names(by_id, storage)
    boxes = {}
    for it in files:
        if not it.id.endswith(".txt") or it.id in ("classes.txt",):
            continue
        try:
            text = read_bytes(it.uri, storage).decode("utf-8", "replace")
        except OSError as err:
            boxes[it.stem] = [Box(0, None, (0, 0, 0, 0), problem=f"cannot read {it.id}: {err}")]
            continue
        boxes[it.stem] = parse_yolo(text, names)
    return boxes, [], True


def _image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an image as decode_image shows it (EXIF orientation applied),
    from its header; ImageError when PIL cannot open it."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        try:
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        except Exception:  # noqa: BLE001
            turned = False
    except Exception as err:  # noqa: BLE001
        raise ImageError(f"cannot decode image ({err.__class__.__name__})") from None
    return (h, w) if turned else (w, h)


def crop_samples(
    item: Item, boxes: list[Box], crop, storage=None
) -> tuple[list[Sample], list[dict], int, list[str]]:
    """The crop samples of one image: (samples, skipped [{id, reason}], boxes clipped, ids of
    the boxes smaller than crop.min_size: left out by the job's setting, not failures, so
    they are a warning and do not count toward max_skipped_fraction)."""
    padding = float(getattr(crop, "padding", 0.0))
    min_size = int(getattr(crop, "min_size", 1))
    try:
        data = _source_bytes(item.uri, storage)
        width, height = _image_size(data)
    except ImageError as err:
        return [], [{"id": item.id, "reason": f"{err}; its {len(boxes)} box(es) not used"}], 0, []
    digest = hashlib.sha256(data).hexdigest()
    out, skipped, clipped, small = [], [], 0, []
    for b in boxes:
        sid = f"{item.id}#box={b.key}"
        if b.problem:
            skipped.append({"id": sid, "reason": b.problem})
            continue
        xyxy = b.xyxy
        if b.normalized:
            xyxy = (xyxy[0] * width, xyxy[1] * height, xyxy[2] * width, xyxy[3] * height)
        final, reason, was_clipped = crop_box(
            xyxy, width, height, padding=padding, min_size=min_size
        )
        if final is None:
            if "crop.min_size" in reason:  # dropped by the job's own setting: not a failure
                small.append(sid)
            else:
                skipped.append({"id": sid, "reason": reason})
            continue
        clipped += was_clipped
        out.append(
            Sample(
                id=sid,
                uri=item.uri,
                kind="crop",
                file=item.id,
                source_hash=digest,
                settings=f"padding={padding!r}",
                box=final,
                label=b.label,
            )
        )
    return out, skipped, clipped, small


# --------------------------------------------------------------------------- datasets


def list_dataset(root: str, storage=None, *, policy: ListingPolicy | None = None) -> Listing:
    """Image and video files under root (recursive), sorted by id."""
    from worker.sources import _log

    found = _list(root, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS, storage, policy)
    _log(found)
    return found


def _ordered_map(fn, items: list) -> list:
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(_EXPAND_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def expand_dataset(
    name: str,
    ds,
    listing: Listing,
    *,
    boxes_uri: str | None = None,
    storage=None,
    policy: ListingPolicy | None = None,
) -> list[tuple[str, Listing]]:
    """A dataset's listing (images and videos) as the listings of samples to embed.

    `ds`: its DatasetConfig (frames, crop, samples). images: whole images plus the frames of
    every video; crops: one sample per usable box; both: [(name, images), (name/crops, crops)].
    Each Listing keeps the listing's skipped entries and warnings plus its own."""
    mode = getattr(ds, "samples", None) or ("crops" if boxes_uri else "images")
    out: list[tuple[str, Listing]] = []
    videos = [it for it in listing if is_video(it.id)]
    images = [it for it in listing if not is_video(it.id)]
    if mode in ("images", "both"):
        items: list[Item] = []
        skipped, warnings = list(listing.skipped), list(listing.warnings)
        expanded = dict(
            zip(
                [v.id for v in videos],
                _ordered_map(lambda v: frame_samples(v, ds.frame_settings, storage), videos),
                strict=True,
            )
        )
        for it in listing:
            if it.id not in expanded:
                items.append(it)
                continue
            found, skip, warn = expanded[it.id]
            items.extend(found)
            skipped.extend(skip)
            warnings.extend(warn)
        out.append((name, Listing(items, skipped=skipped, warnings=warnings)))
    if mode in ("crops", "both"):
        field = f"datasets.{name}.boxes"
        boxes, skipped, by_stem = read_boxes(boxes_uri, storage, policy, field)
        warnings = [] if mode == "both" else list(listing.warnings)
        if mode == "crops":
            skipped = list(listing.skipped) + skipped
            if videos:
                warnings.append(
                    f"datasets.{name}: {len(videos)} video(s) not used (samples: crops "
                    "crops the boxes of images; use samples: both for frames too)"
                )
        key = (lambda it: it.stem) if by_stem else (lambda it: it.id)
        by_key = {key(it): it for it in images}
        if not by_stem:  # COCO file_name may be a bare name for an image in a subfolder
            bare: dict[str, list[Item]] = {}
            for it in images:
                bare.setdefault(it.id.rsplit("/", 1)[-1], []).append(it)
            for base, its in bare.items():
                if len(its) == 1:
                    by_key.setdefault(base, its[0])
        missing = sorted(k for k in boxes if k not in by_key)
        for k in missing:
            skipped.append(
                {"id": k, "reason": f"{len(boxes[k])} box(es) name an image not in the dataset"}
            )
        todo = [(by_key[k], boxes[k]) for k in boxes if k in by_key]
        todo.sort(key=lambda pair: pair[0].id)
        results = _ordered_map(lambda p: crop_samples(p[0], p[1], ds.crop_settings, storage), todo)
        items, clipped, small = [], 0, []
        for found, skip, n_clipped, n_small in results:
            items.extend(found)
            skipped.extend(skip)
            clipped += n_clipped
            small += n_small
        if small:
            warnings.append(
                f"datasets.{name}: {len(small)} box(es) smaller than crop.min_size "
                f"{ds.crop_settings.min_size} left out (e.g. {small[0]}); not counted as skipped"
            )
        if clipped:
            warnings.append(
                f"datasets.{name}: {clipped} box(es) reach outside their image; clipped"
            )
        crops_name = name + CROPS_SUFFIX if mode == "both" else name
        out.append((crops_name, Listing(items, skipped=skipped, warnings=warnings)))
    return out


def samples_of(items) -> dict[str, Sample]:
    """id -> Sample for the samples among items (whole images are left out)."""
    return {it.id: it for it in items if isinstance(it, Sample)}


def check_no_videos_for_adaptation(job, ds, listing) -> None:
    """JobError when adaptation is enabled and a dataset folder holds videos: adaptation
    trains on whole images with masks (frames have none)."""
    if not job.adaptation.enabled:
        return
    videos = [it.id for it in listing if is_video(it.id)]
    if videos:
        raise JobError(
            f"adaptation.enabled: datasets.{ds.name}.path holds {len(videos)} video file(s) "
            f"(e.g. {videos[0]}); adaptation trains on whole images with masks. Set "
            "adaptation.enabled: false, or move the videos to a job without adaptation"
        )
