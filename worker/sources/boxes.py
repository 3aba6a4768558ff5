"""Boxes for object crops (moved out of worker.sources.samples; docs/samples.md): COCO JSON
or a folder of YOLO txt files -> boxes per image, with every unusable annotation listed.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from worker.errors import JobError
from worker.images import ImageError
from worker.sources import (
    Item,
    Listing,
    ListingPolicy,
    is_s3,
    read_bytes,
)


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
