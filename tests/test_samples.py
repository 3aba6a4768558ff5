"""Video frames and object crops as samples (worker/sources/samples.py, docs/samples.md).

Videos are encoded here with PyAV (one truncated); boxes are COCO JSON and YOLO txt over
scikit-image pictures with known boxes. References: frame indices recomputed from the
sampling rule, frames decoded sequentially by PyAV, crops as numpy slices of the image."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data as skdata

from worker.embeddings import embed_items
from worker.errors import JobError
from worker.extractors import get_extractor
from worker.images import decode_image
from worker.job import CropConfig, DatasetConfig, FramesConfig, ModelConfig, parse_job
from worker.sources import Item
from worker.sources import samples as smp

#: every test here runs with planted AWS credentials and no AWS config (tests/helpers/s3.py)
pytestmark = pytest.mark.usefixtures("aws_env")

# --------------------------------------------------------------------------- fixtures


def write_video(path: Path, frames: int, fps: int, codec: str = "mpeg4", size=(64, 48)) -> None:
    """A video whose frame i has red = 7 i mod 256 and a green bar i pixels wide."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            arr = np.zeros((size[1], size[0], 3), np.uint8)
            arr[..., 0] = (i * 7) % 256
            arr[:, : i % size[0], 1] = 200
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def sequential_frames(path: Path) -> list[np.ndarray]:
    """Every frame, decoded start to end (the reference for seek-and-decode)."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def rule_indices(n: int, fps: float, every_s=None, every_n=None, limit=None) -> list[int]:
    """The sampling rule written out independently: k-th multiple of every_s -> the first
    frame index i with i / fps >= k * every_s (ceil), repeats dropped; every_n: range."""
    if every_n is not None:
        idx = list(range(0, n, every_n))
    else:
        idx = []
        for k in range(int(n / fps / every_s) + 2):
            i = math.ceil(round(k * every_s * fps, 9))
            if i < n and i not in idx:
                idx.append(i)
    if limit is not None and len(idx) > limit:
        idx = [idx[int(np.rint(j))] for j in np.linspace(0, len(idx) - 1, limit)]
    return idx


PICTURES = {
    "astronaut.png": skdata.astronaut(),
    "sub/coffee.png": skdata.coffee(),
    "chelsea.jpg": skdata.chelsea(),
}
# (image, class, x0, y0, w, h) in pixels
BOXES = [
    ("astronaut.png", "person", 100, 50, 80, 60),
    ("astronaut.png", "rocket", 400, 300, 100, 200),  # reaches y = 500 < 512: inside
    ("astronaut.png", "person", 480, 480, 60, 60),  # reaches outside: clipped to 480..512
    ("sub/coffee.png", "cup", 200, 100, 150, 120),
    ("sub/coffee.png", "cup", 10, 10, 5, 5),  # below min_size 16: skipped
    ("sub/coffee.png", "cup", 700, 100, 50, 50),  # entirely outside: skipped
    ("chelsea.jpg", "cat", 50.5, 20.25, 200, 150),
]
CLASSES = ["person", "rocket", "cup", "cat"]


def write_pictures(folder: Path) -> None:
    for name, arr in PICTURES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / name, quality=95)


def write_coco(path: Path, extra_annotations=()) -> None:
    names = list(PICTURES)
    doc = {
        "images": [{"id": i + 1, "file_name": n} for i, n in enumerate(names)]
        + [{"id": 99, "file_name": "missing.png"}],
        "categories": [{"id": 10 + k, "name": c} for k, c in enumerate(CLASSES)],
        "annotations": [
            {
                "id": 100 + k,
                "image_id": names.index(img) + 1,
                "category_id": 10 + CLASSES.index(cls),
                "bbox": [x, y, w, h],
            }
            for k, (img, cls, x, y, w, h) in enumerate(BOXES)
        ]
        + list(extra_annotations),
    }
    path.write_text(json.dumps(doc))


def write_yolo(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    lines: dict[str, list[str]] = {}
    for img, cls, x, y, w, h in BOXES:
        height, width = PICTURES[img].shape[:2]
        cx, cy = (x + w / 2) / width, (y + h / 2) / height
        lines.setdefault(img, []).append(
            f"{CLASSES.index(cls)} {cx!r} {cy!r} {w / width!r} {h / height!r}"
        )
    for img, ls in lines.items():
        target = folder / (img.rsplit(".", 1)[0] + ".txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(ls) + "\n")
    (folder / "chelsea.txt").write_text(
        (folder / "chelsea.txt").read_text() + "7 0.5 0.5 0.2 0.2\n"
    )
    (folder / "ghost.txt").write_text("0 0.5 0.5 0.5 0.5\n")  # no image ghost.*


def expected_crop(img: str, x, y, w, h, padding: float) -> tuple[int, int, int, int]:
    """The crop box written out: clip, pad by padding x size, round outwards, clip."""
    height, width = PICTURES[img].shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    pw, ph = padding * (x1 - x0), padding * (y1 - y0)
    return (
        max(0, math.floor(x0 - pw)),
        max(0, math.floor(y0 - ph)),
        min(width, math.ceil(x1 + pw)),
        min(height, math.ceil(y1 + ph)),
    )


# --------------------------------------------------------------------------- pure rules


def test_select_frames_hand_vectors():
    t = np.arange(35) / 10.0  # 10 fps, 3.4 s
    assert smp.select_frames(t, every_s=1.0) == [0, 10, 20, 30]
    assert smp.select_frames(t, every_n=30) == [0, 30]
    assert smp.select_frames(t, every_n=1, max_per_video=3) == [0, 17, 34]
    # irregular times: the first frame at or after each multiple, never a frame twice
    assert smp.select_frames([0.0, 0.4, 1.7, 1.8, 2.1, 5.0], every_s=1.0) == [0, 2, 4, 5]
    assert smp.select_frames([0.0, 0.4, 1.7], every_s=0.25) == [0, 1, 2]
    assert smp.select_frames([], every_s=1.0) == []


@pytest.mark.parametrize(
    ("n", "fps", "every_s", "every_n", "limit"),
    [
        (35, 10, 1.0, None, None),
        (60, 25, 0.3, None, None),
        (61, 30, None, 7, 4),
        (20, 8, 0.5, None, 3),
    ],
)
def test_select_frames_against_rule(n, fps, every_s, every_n, limit):
    t = np.arange(n) / fps
    got = smp.select_frames(t, every_s=every_s, every_n=every_n, max_per_video=limit)
    assert got == rule_indices(n, fps, every_s, every_n, limit)


def test_crop_box_hand_vectors():
    assert smp.crop_box((10, 20, 50, 60), 100, 100) == ((10, 20, 50, 60), None, False)
    # padding 0.1 of a 40 x 40 box: 4 pixels each side
    assert smp.crop_box((10, 20, 50, 60), 100, 100, padding=0.1)[0] == (6, 16, 54, 64)
    # padding is clipped to the image; a box reaching outside is clipped and flagged
    assert smp.crop_box((-5, 90, 30, 130), 100, 100, padding=0.5) == ((0, 85, 45, 100), None, True)
    # fractional coordinates round outwards
    assert smp.crop_box((1.5, 2.25, 3.5, 4.75), 10, 10)[0] == (1, 2, 4, 5)
    box, reason, _ = smp.crop_box((120, 0, 150, 10), 100, 100)
    assert box is None and "outside" in reason
    box, reason, _ = smp.crop_box((0, 0, 10, 40), 100, 100, min_size=16)
    assert box is None and "min_size 16" in reason and "10x40" in reason
    box, reason, _ = smp.crop_box((5, 5, 2, 9), 100, 100)
    assert box is None and "not a box" in reason


def test_class_distances_against_numpy():
    from worker.metrics import class_distances

    i_dist = np.array([1.0, 4.0, 2.5, 7.0, 0.5])
    labels = ["cat", "dog", "cat", None, "dog"]
    rows = class_distances(i_dist, labels, 4)
    assert [r["name"] for r in rows] == ["cat", "dog"]
    assert [r["count"] for r in rows] == [2, 2]
    assert rows[0]["o_dist"] == pytest.approx(np.mean([1.0, 2.5]))
    assert rows[1]["o_dist"] == pytest.approx(np.mean([4.0, 0.5]))
    assert rows[1]["o_dist_mean"] == pytest.approx(2.25 / 4)


# --------------------------------------------------------------------------- videos


@pytest.mark.parametrize(("codec", "ext"), [("mpeg4", "mp4"), ("libx264", "mkv")])
def test_frames_follow_the_rule_and_equal_sequential_decoding(tmp_path, codec, ext):
    path = tmp_path / f"clip.{ext}"
    write_video(path, 35, 10, codec)
    frames = FramesConfig(every_s=0.7, max_per_video=4)
    samples, skipped, warnings = smp.frame_samples(Item(f"clip.{ext}", str(path)), frames)
    assert skipped == [] and warnings == []
    want = rule_indices(35, 10, every_s=0.7, limit=4)
    assert [s.frame for s in samples] == want
    assert [s.id for s in samples] == [f"clip.{ext}#t={i / 10:.3f}" for i in want]
    ref = sequential_frames(path)
    for s in samples:
        assert s.time_s == pytest.approx(s.frame / 10)
        np.testing.assert_array_equal(np.asarray(s.pixels()), ref[s.frame])
        assert s.source() == {"file": f"clip.{ext}", "time_s": s.time_s, "frame": s.frame}
    # the cache key: source hash + position + settings
    other, _, _ = smp.frame_samples(Item(f"clip.{ext}", str(path)), FramesConfig(every_n=7))
    assert samples[0].frame == other[0].frame and samples[0].digest != other[0].digest
    again, _, _ = smp.frame_samples(Item(f"clip.{ext}", str(path)), frames)
    assert [s.digest for s in again] == [s.digest for s in samples]
    assert len({s.digest for s in samples}) == len(samples)


def test_bad_videos_are_skipped_with_reasons(tmp_path):
    good = tmp_path / "good.mp4"
    write_video(good, 20, 10)
    raw = good.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(raw[: len(raw) // 2])  # moov atom lost
    (tmp_path / "garbage.mov").write_bytes(b"\x00not a video at all" * 50)
    (tmp_path / "empty.webm").write_bytes(b"")
    write_video(tmp_path / "cut.mkv", 40, 10, "libx264")
    cut = (tmp_path / "cut.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(cut[: int(len(cut) * 0.6)])
    listing = smp.list_dataset(str(tmp_path))
    assert [it.id for it in listing] == sorted(
        ["good.mp4", "truncated.mp4", "garbage.mov", "empty.webm", "cut.mkv"]
    )
    ds = DatasetConfig(name="S", path=str(tmp_path), frames=FramesConfig(every_n=5))
    [(name, items)] = smp.expand_dataset("S", ds, listing)
    reasons = {s["id"]: s["reason"] for s in items.skipped}
    assert set(reasons) == {"truncated.mp4", "garbage.mov", "empty.webm"}
    assert all("video" in r for r in reasons.values())
    good_ids = [it.id for it in items if it.id.startswith("good.mp4")]
    assert good_ids == [f"good.mp4#t={i / 10:.3f}" for i in (0, 5, 10, 15)]
    # the cut mkv keeps the frames before the cut; each of them decodes or is skipped
    cut_items = [it for it in items if it.id.startswith("cut.mkv")]
    assert 1 <= len(cut_items) < 8
    ref = sequential_frames(tmp_path / "cut.mkv")
    emb = embed_items("S", items, get_extractor(ModelConfig(name="hog")), num_workers=0)
    for it in cut_items:
        if it.id in emb.ids:
            np.testing.assert_array_equal(np.asarray(it.pixels()), ref[it.frame])
    assert set(emb.ids) >= set(good_ids)
    assert {s["id"] for s in emb.skipped} >= set(reasons)


# --------------------------------------------------------------------------- crops


def _check_crops(items, padding: float, key_of) -> None:
    """Every crop equals the numpy slice of its decoded picture at the expected box."""
    want = {}
    for k, (img, cls, x, y, w, h) in enumerate(BOXES):
        if (img, k) in {("sub/coffee.png", 4), ("sub/coffee.png", 5)}:
            continue
        want[f"{img}#box={key_of(k, img)}"] = (img, cls, expected_crop(img, x, y, w, h, padding))
    assert sorted(it.id for it in items) == sorted(want)
    for it in items:
        img, cls, box = want[it.id]
        assert it.box == box and it.label == cls and it.file == img
        decoded = np.asarray(decode_image((Path(it.uri)).read_bytes()))
        x0, y0, x1, y1 = box
        np.testing.assert_array_equal(np.asarray(it.pixels()), decoded[y0:y1, x0:x1])
        assert it.source() == {"file": img, "box": list(box), "class": cls}


def test_coco_crops_equal_numpy_slices_and_bad_boxes_are_skipped(tmp_path):
    images = tmp_path / "images"
    write_pictures(images)
    coco = tmp_path / "ann.json"
    extra = [
        {"id": 900, "image_id": 1, "category_id": 77, "bbox": [0, 0, 50, 50]},
        {"id": 901, "image_id": 42, "category_id": 10, "bbox": [0, 0, 50, 50]},
        {"id": 902, "image_id": 1, "category_id": 10, "bbox": "wide"},
        {"id": 903, "image_id": 99, "category_id": 10, "bbox": [0, 0, 50, 50]},
    ]
    write_coco(coco, extra)
    listing = smp.list_dataset(str(images))
    ds = DatasetConfig(name="S", path=str(images), boxes=str(coco), crop=CropConfig(padding=0.1))
    [(name, items)] = smp.expand_dataset("S", ds, listing, boxes_uri=str(coco))
    assert name == "S"

    def coco_key(k, img):  # COCO ids are annotation ids
        return 100 + k

    _check_crops(list(items), 0.1, coco_key)
    reasons = {s["id"]: s["reason"] for s in items.skipped}
    # below crop.min_size: the job's own setting left it out; a warning, not a skip
    assert "sub/coffee.png#box=104" not in reasons
    assert any("smaller than crop.min_size 16" in w and "box=104" in w for w in items.warnings)
    assert "outside" in reasons["sub/coffee.png#box=105"]
    assert "unknown category id 77" in reasons["astronaut.png#box=900"]
    assert "image_id 42" in reasons["annotation 901"]
    assert "not [x, y, width, height]" in reasons["astronaut.png#box=902"]
    assert "not in the dataset" in reasons["missing.png"]
    assert any("1 box(es) reach outside" in w for w in items.warnings)


def test_yolo_crops_equal_numpy_slices(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    write_pictures(images)
    write_yolo(labels)
    listing = smp.list_dataset(str(images))
    ds = DatasetConfig(
        name="S", path=str(images), boxes=str(labels), crop=CropConfig(padding=0.0, min_size=16)
    )
    [(_, items)] = smp.expand_dataset("S", ds, listing, boxes_uri=str(labels))
    order: dict[str, int] = {}
    line = {}
    for k, (img, *_rest) in enumerate(BOXES):
        line[k] = order.get(img, 0)
        order[img] = line[k] + 1
    _check_crops(list(items), 0.0, lambda k, img: line[k])
    reasons = {s["id"]: s["reason"] for s in items.skipped}
    assert "unknown class id 7" in reasons["chelsea.jpg#box=1"]
    assert "not in the dataset" in reasons["ghost"]


def test_yolo_names_from_data_yaml_and_ids_without_names(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    write_pictures(images)
    write_yolo(labels)
    (labels / "classes.txt").unlink()
    listing = smp.list_dataset(str(images))
    ds = DatasetConfig(name="S", path=str(images), boxes=str(labels))
    [(_, items)] = smp.expand_dataset("S", ds, listing, boxes_uri=str(labels))
    assert {it.label for it in items} == {"0", "1", "2", "3", "7"}
    (labels / "data.yaml").write_text(
        yaml.safe_dump({"names": {i: c for i, c in enumerate(CLASSES)}})
    )
    [(_, items)] = smp.expand_dataset("S", ds, listing, boxes_uri=str(labels))
    assert {it.label for it in items} == set(CLASSES)


def test_both_gives_two_listings(tmp_path):
    images = tmp_path / "images"
    write_pictures(images)
    write_video(images / "clip.mp4", 25, 10)
    coco = tmp_path / "ann.json"
    write_coco(coco)
    ds = DatasetConfig(name="S", path=str(images), boxes=str(coco), samples="both")
    out = smp.expand_dataset("S", ds, smp.list_dataset(str(images)), boxes_uri=str(coco))
    assert [n for n, _ in out] == ["S", "S/crops"]
    assert [it.id for it in out[0][1]] == [
        "astronaut.png",
        "chelsea.jpg",
        "clip.mp4#t=0.000",
        "clip.mp4#t=1.000",
        "clip.mp4#t=2.000",
        "sub/coffee.png",
    ]
    assert all(isinstance(it, smp.Sample) and it.kind == "crop" for it in out[1][1])


# --------------------------------------------------------------------------- cache


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    """A tiny DINOv2 whose forward passes are counted (as in tests/test_cache.py)."""
    from tests.helpers.extractors import save_tiny

    folder = save_tiny("dinov2", tmp_path_factory.mktemp("samples_model") / "dinov2")
    ex = get_extractor(ModelConfig(name="dinov2", checkpoint=str(folder), image_size=72))
    ex.forwarded = 0

    def count(module, args, kwargs, output):
        ex.forwarded += kwargs["pixel_values"].shape[0]

    ex.model.register_forward_hook(count, with_kwargs=True)
    return ex


def test_rerun_decodes_and_forwards_nothing(tmp_path, counted, monkeypatch):
    from worker.cache import EmbeddingCache

    images = tmp_path / "images"
    write_pictures(images)
    write_video(images / "a.mp4", 30, 10)
    write_video(images / "b.mkv", 20, 10, "libx264")
    coco = tmp_path / "ann.json"
    write_coco(coco)
    ds = DatasetConfig(name="S", path=str(images), boxes=str(coco), samples="both")
    cache = EmbeddingCache(str(tmp_path / "cache"))
    decodes = {"n": 0}
    real = smp.Sample.pixels

    def pixels(self, storage=None):
        decodes["n"] += 1
        return real(self, storage)

    monkeypatch.setattr(smp.Sample, "pixels", pixels)

    def run():
        out = smp.expand_dataset("S", ds, smp.list_dataset(str(images)), boxes_uri=str(coco))
        return [embed_items(n, items, counted, cache=cache, batch_size=4) for n, items in out]

    counted.forwarded = 0
    first = run()
    total = sum(e.count for e in first)
    samples = sum(len(e.samples) for e in first)
    assert total == 3 + 5 + 5 and samples == 10  # 3 images + 3 + 2 frames; 5 usable boxes
    assert counted.forwarded == total and decodes["n"] == samples
    counted.forwarded = decodes["n"] = 0
    second = run()
    assert counted.forwarded == 0 and decodes["n"] == 0
    for a, b in zip(first, second, strict=True):
        assert a.ids == b.ids and a.hashes == b.hashes
        np.testing.assert_array_equal(a.vectors, b.vectors)
    # a new sampling setting is a new key for the frames only
    ds.frames = FramesConfig(every_n=5)
    counted.forwarded = 0
    third = run()
    assert counted.forwarded == 6 + 4  # a.mp4: 0,5,..,25; b.mkv: 0,5,10,15
    np.testing.assert_array_equal(third[1].vectors, first[1].vectors)


# --------------------------------------------------------------------------- job


def _job(tmp_path, secondary: dict, **extra):
    data = {
        "datasets": {"primary": {"name": "P", "path": "p"}, "secondary": [secondary]},
        **extra,
    }
    return parse_job(data, tmp_path)


def test_job_validation(tmp_path):
    job = _job(tmp_path, {"name": "S", "path": "s", "boxes": "b.json", "samples": "both"})
    assert job.datasets.secondary[0].sample_names() == ["S", "S/crops"]
    assert job.datasets.secondary[0].crop_settings.padding == 0.1
    bad = [
        ({"name": "S", "path": "s", "samples": "crops"}, "samples: 'crops' needs 'boxes'"),
        ({"name": "S", "embeddings": "e.npy", "frames": {"every_n": 3}}, "frames: needs 'path'"),
        ({"name": "S", "path": "s", "frames": {"every_s": 1, "every_n": 3}}, "not both"),
        ({"name": "S", "path": "s", "frames": {"every_s": 0}}, "greater than 0"),
        ({"name": "S", "path": "s", "crop": {"padding": 0.2}}, "crop: needs 'boxes'"),
        ({"name": "S", "path": "s", "boxes": "b.json", "masks": "m"}, "masks belong to whole"),
        ({"name": "S", "path": "s", "box": "b.json"}, "unknown key"),
    ]
    for sec, message in bad:
        with pytest.raises(JobError, match=message):
            _job(tmp_path, sec)
    with pytest.raises(JobError, match="datasets.primary.samples: 'both'"):
        parse_job(
            {
                "datasets": {
                    "primary": {"name": "P", "path": "p", "boxes": "b.json", "samples": "both"},
                    "secondary": [{"name": "S", "path": "s"}],
                }
            },
            tmp_path,
        )
    with pytest.raises(JobError, match=r"adaptation.enabled: .*datasets.S.frames"):
        _job(tmp_path, {"name": "S", "path": "s", "frames": {}}, adaptation={"enabled": True})
    # a gate may name the crops half of a `both` dataset
    ok = _job(
        tmp_path,
        {"name": "S", "path": "s", "boxes": "b.json", "samples": "both"},
        gates=[{"metric": "o_dist_scaled", "dataset": "S/crops", "max": 1.0}],
    )
    assert ok.gates[0].dataset == "S/crops"


def test_validate_refuses_adaptation_on_a_video_folder(tmp_path, capsys):
    from worker.__main__ import main

    for name in ("p", "s"):
        (tmp_path / name).mkdir()
        Image.fromarray(skdata.coffee()).save(tmp_path / name / "a.png")
    write_video(tmp_path / "s" / "clip.mp4", 10, 10)
    job = {
        "datasets": {
            "primary": {"name": "P", "path": "p"},
            "secondary": [{"name": "S", "path": "s"}],
        }
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["validate", str(tmp_path / "job.yaml")]) == 0
    assert "S: 1 images, 1 videos" in capsys.readouterr().out
    job["adaptation"] = {"enabled": True}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["validate", str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err
    assert "adaptation.enabled: datasets.S.path holds 1 video file(s)" in err


# --------------------------------------------------------------------------- end to end


def test_job_with_frames_and_crops_end_to_end(tmp_path):
    """P images; S1 a folder of videos (one truncated); S2 images with COCO boxes, both."""
    from tests.helpers.jobs import write_job
    from tests.helpers.pdf import pdf_text
    from worker.job import load_job
    from worker.metrics import class_distances
    from worker.pipeline import run

    rng = np.random.default_rng(0)
    (tmp_path / "p").mkdir()
    for k, arr in enumerate([skdata.rocket(), skdata.camera(), skdata.brick(), skdata.grass()]):
        for j in range(2):
            y, x = rng.integers(0, 200, 2)
            Image.fromarray(np.asarray(arr)[y : y + 96, x : x + 96]).save(
                tmp_path / "p" / f"{k}_{j}.png"
            )
    (tmp_path / "s1").mkdir()
    write_video(tmp_path / "s1" / "a.mp4", 30, 10)
    write_video(tmp_path / "s1" / "b.mkv", 25, 10, "libx264", size=(80, 64))
    raw = (tmp_path / "s1" / "a.mp4").read_bytes()
    (tmp_path / "s1" / "broken.mp4").write_bytes(raw[: len(raw) // 3])
    write_pictures(tmp_path / "s2")
    write_coco(tmp_path / "ann.json")
    job = {
        "seed": 1,
        "model": {"name": "hog"},
        "pca": {"dims": 4, "sweep": [2, 4]},
        "datasets": {
            "primary": {"name": "P", "path": "p"},
            "secondary": [
                {"name": "S1", "path": "s1", "frames": {"every_s": 1.0}},
                {
                    "name": "S2",
                    "path": "s2",
                    "boxes": "ann.json",
                    "samples": "both",
                    "select": False,  # applies to S2 and S2/crops
                },
            ],
        },
        "metrics": {"null_repeats": 2, "mmd_permutations": 10},
        "selection": {"strategy": ["farthest"], "counts": [1, 2]},
        "gates": [{"metric": "o_dist_scaled", "dataset": "S2/crops", "max": 1.0}],
        "max_skipped_fraction": 0.5,
        "cache": {"dir": str(tmp_path / "cache")},
    }
    result = run(load_job(write_job(tmp_path, job)), out_dir=str(tmp_path / "out"))
    run_dir = Path(result.run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    secs = {s["name"]: s for s in report["secondaries"]}
    assert list(secs) == ["S1", "S2", "S2/crops"]
    s1 = secs["S1"]
    assert [im["id"] for im in s1["images"]] == [
        "a.mp4#t=0.000",
        "a.mp4#t=1.000",
        "a.mp4#t=2.000",
        "b.mkv#t=0.000",
        "b.mkv#t=1.000",
        "b.mkv#t=2.000",
    ]
    assert s1["images"][4]["source"] == {"file": "b.mkv", "time_s": 1.0, "frame": 10}
    assert "crops" not in s1
    assert [s["id"] for s in report["skipped"] if s["dataset"] == "S1"] == ["broken.mp4"]
    assert all("source" not in im for im in secs["S2"]["images"])
    crops = secs["S2/crops"]
    assert crops["count"] == 5
    first = crops["images"][0]
    assert first["id"] == "astronaut.png#box=100"
    assert first["source"] == {
        "file": "astronaut.png",
        "box": list(expected_crop("astronaut.png", 100, 50, 80, 60, 0.1)),
        "class": "person",
    }
    labels = [im["source"]["class"] for im in crops["images"]]
    i_dist = np.array([im["i_dist"] for im in crops["images"]])
    want = class_distances(i_dist, labels, report["primary"]["count"])
    got = crops["crops"]["classes"]
    assert [c["name"] for c in got] == ["cat", "cup", "person", "rocket"]
    assert [c["count"] for c in got] == [1, 1, 2, 1]
    for g, w in zip(got, want, strict=True):
        assert g["o_dist"] == pytest.approx(w["o_dist"], rel=1e-12)
        person = i_dist[[k for k, lab in enumerate(labels) if lab == g["name"]]]
        assert g["o_dist"] == pytest.approx(float(np.mean(person)), rel=1e-12)
    assert report["gates"][0]["dataset"] == "S2/crops" and report["passed"]
    assert secs["S2"]["selections"] == crops["selections"] == []
    assert [s["count"] for s in s1["selections"]] == [1, 2]
    text = pdf_text(run_dir / "report.pdf")
    assert " ".join(text.split()).count("closest to and farthest from") == 3  # pictures
    assert "Object crops of S2/crops per class" in text


def test_thumbnails_show_the_frame_and_the_crop(tmp_path):
    from worker.report.pictures import load_thumbnail

    write_video(tmp_path / "v.mp4", 12, 10, size=(320, 240))
    [sample, *_] = smp.frame_samples(Item("v.mp4", str(tmp_path / "v.mp4")), FramesConfig())[0]
    thumb = load_thumbnail(sample.uri, sample=sample, size=160)
    want = sample.pixels()
    want.thumbnail((160, 160))
    assert thumb.size == (160, 120)
    np.testing.assert_array_equal(np.asarray(thumb), np.asarray(want))
    assert load_thumbnail(sample.uri) is None  # a video is no image: the sample is needed
    write_pictures(tmp_path / "img")
    crop = smp.Sample(
        id="chelsea.jpg#box=0",
        uri=str(tmp_path / "img" / "chelsea.jpg"),
        kind="crop",
        file="chelsea.jpg",
        box=(10, 20, 60, 50),
        label="cat",
    )
    thumb = load_thumbnail(crop.uri, sample=crop)
    decoded = np.asarray(decode_image((tmp_path / "img" / "chelsea.jpg").read_bytes()))
    np.testing.assert_array_equal(np.asarray(thumb), decoded[20:50, 10:60])


# --------------------------------------------------------------------------- S3


def test_video_dataset_on_s3_equals_local(tmp_path, s3_storage):
    client, name, storage = s3_storage
    local = tmp_path / "videos"
    local.mkdir()
    write_video(local / "a.mp4", 25, 10)
    write_video(local / "c.mkv", 18, 10, "libx264")
    (local / "bad.mov").write_bytes(b"garbage" * 40)
    for f in sorted(local.rglob("*.*")):
        client.put_object(Bucket=name, Key=f"vids/{f.relative_to(local)}", Body=f.read_bytes())
    ds = DatasetConfig(name="S", path="s3://x", frames=FramesConfig(every_n=4, max_per_video=3))
    hog = get_extractor(ModelConfig(name="hog"))
    remote = smp.list_dataset(f"s3://{name}/vids", storage)
    [(_, r_items)] = smp.expand_dataset("S", ds, remote, storage=storage)
    [(_, l_items)] = smp.expand_dataset("S", ds, smp.list_dataset(str(local)))
    assert [it.id for it in r_items] == [it.id for it in l_items]
    assert [it.digest for it in r_items] == [it.digest for it in l_items]
    assert [s["id"] for s in r_items.skipped] == ["bad.mov"]
    r = embed_items("S", r_items, hog, storage=storage)
    loc = embed_items("S", l_items, hog)
    assert r.ids == loc.ids and len(r.ids) == 6
    np.testing.assert_array_equal(r.vectors, loc.vectors)


@pytest.fixture
def s3_storage(request):
    """(admin client, bucket, StorageConfig) on moto's server (tests/test_s3.py fixtures)."""
    from tests.helpers.s3 import storage_config

    value = request.getfixturevalue
    return value("admin"), value("bucket"), storage_config(value("moto_endpoint"))
