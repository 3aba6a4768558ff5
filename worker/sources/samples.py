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
from worker.sources.boxes import (  # noqa: F401
    Box,
    _image_size,
    _list,
    _yolo_names,
    parse_coco,
    parse_yolo,
    read_boxes,
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


# --------------------------------------------------------------------------- crops


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
