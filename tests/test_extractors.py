"""The seven transformers extractors, on tiny random models saved and reloaded from disk.

Each tiny model is built from its config class, written with save_pretrained (model and
processor) and loaded back through worker.extractors.hf.build -> from_pretrained, the same
path a real checkpoint takes. Features are checked against a direct model call on the same
processed input: the checkpoint's own processor with its resize and crop turned off (the
model sees model.image_size), SAM's native resize kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.extractors import RESIZE, SIZE, save_tiny
from worker.errors import JobError
from worker.extractors import get_extractor
from worker.images import decode_image, decode_pixels, resize_square
from worker.job import ModelConfig

transformers = pytest.importorskip("transformers")

INPUT = {"sam": SIZE}  # model input side per family where it is not RESIZE


FAMILIES = ["sam", "clipseg", "efficientnet", "clip", "dinov2", "convnextv2", "swinv2"]

# Feature width with pooling "flatten" for the tiny models above.
FLAT_DIMS = {
    "sam": 16 * 4 * 4,  # output_channels x (64/16)^2 (native input 64)
    "clipseg": 3 * 37 * 16,  # decoder hidden states (3) x (1 + (96/16)^2 tokens) x reduce_dim
    "efficientnet": 128,  # pooler_output width
    "clip": 24,  # projection_dim
    "dinov2": 37 * 32,  # (1 + (96/16)^2 tokens) x hidden
    "convnextv2": 32 * 12 * 12,  # last width x (96/4/2)^2
    "swinv2": 144 * 32,  # (96/4/2)^2 tokens x 2*embed_dim
}


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {fam: save_tiny(fam, root / fam) for fam in FAMILIES}


@pytest.fixture(scope="session")
def extractors(tiny_dirs) -> dict:
    """One loaded extractor per family (pooling flatten), shared by the tests: the exact
    preparation, so features compare with a direct model call at float32 rounding (the fast
    path is compared with it in test_fast_preparation_equals_the_processor)."""
    return {
        fam: get_extractor(
            ModelConfig(
                name=fam,
                checkpoint=str(tiny_dirs[fam]),
                image_size=RESIZE,
                batch_size=2,
                preprocess="exact",
            )
        )
        for fam in FAMILIES
    }


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shapes = [(50, 80), (90, 60), (64, 64), (33, 120), (100, 100)]
    return [
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for h, w in shapes
    ]


def processor_input(ex, family: str, imgs: list[Image.Image]) -> torch.Tensor:
    """The checkpoint processor's batch for images resized to RESIZE: its own resize and crop
    off (SAM: its native resize to 64 and padding on)."""
    resized = [resize_square(im.convert("RGB"), RESIZE) for im in imgs]
    off = {} if family == "sam" else dict(do_resize=False, do_center_crop=False, do_pad=False)
    return ex.image_processor(images=resized, return_tensors="pt", **off)["pixel_values"]


def reference_features(ex, family: str, pooling: str, imgs: list[Image.Image]) -> np.ndarray:
    """The feature from a direct call on the loaded model, on the processor's batch output."""
    pixel_values = processor_input(ex, family, imgs)
    m = ex.model
    with torch.inference_mode():
        if family == "sam":
            emb = m.get_image_embeddings(pixel_values)
            out = emb.flatten(1) if pooling == "flatten" else emb.mean(dim=(2, 3))
        elif family == "clipseg":
            proc = transformers.AutoProcessor.from_pretrained(ex.info["checkpoint"], backend="pil")
            tok = proc.tokenizer([ex.prompt] * len(imgs), return_tensors="pt")
            res = m(
                **tok,
                pixel_values=pixel_values,
                output_hidden_states=True,
                interpolate_pos_encoding=True,
            )
            states = res.decoder_output.hidden_states
            pick = {
                "flatten": lambda h: h.flatten(1),
                "mean": lambda h: h[:, 1:].mean(1),
                "cls": lambda h: h[:, 0],
            }[pooling]
            out = torch.cat([pick(h) for h in states], dim=1)
        elif family == "efficientnet":
            out = m(pixel_values=pixel_values).pooler_output
        elif family == "clip":
            feats = m.get_image_features(pixel_values=pixel_values, interpolate_pos_encoding=True)
            out = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
        else:
            kw = {"interpolate_pos_encoding": True} if family == "swinv2" else {}
            h = m(pixel_values=pixel_values, **kw).last_hidden_state
            if pooling == "flatten":
                out = h.flatten(1)
            elif pooling == "cls":
                out = h[:, 0]
            elif family == "dinov2":
                out = h[:, 1:].mean(1)
            elif family == "convnextv2":
                out = h.mean(dim=(2, 3))
            else:
                out = h.mean(1)
    return out.float().numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 summation order (batches of 2 here vs one batch in the reference)."""
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_matches_direct_model_call(family, extractors, images):
    ex = extractors[family]
    feats = ex.embed(images)  # 5 images in batches of 2
    assert feats.dtype == np.float32
    assert feats.shape == (len(images), FLAT_DIMS[family])
    ref = reference_features(ex, family, "flatten", images)
    assert_close(feats, ref)
    assert ex.info["feature_dim"] == FLAT_DIMS[family]
    assert ex.info["name"] == family and ex.info["pooling"] == "flatten"
    assert ex.info["image_size"] == RESIZE
    assert ex.info["device"] == "cpu" and ex.info["dtype"] == "float32"
    assert ex.info["revision"] is None  # local folder, no revision given
    assert len(ex.info["checkpoint_sha256"]) == 64


@pytest.mark.parametrize(
    "family,pooling,dim",
    [
        ("sam", "mean", 16),
        ("dinov2", "mean", 32),
        ("dinov2", "cls", 32),
        ("clipseg", "mean", 3 * 16),
        ("clipseg", "cls", 3 * 16),
        ("convnextv2", "mean", 32),
        ("swinv2", "mean", 32),
    ],
)
def test_pooling(family, pooling, dim, tiny_dirs, images):
    cfg = ModelConfig(
        name=family,
        checkpoint=str(tiny_dirs[family]),
        pooling=pooling,
        image_size=RESIZE,
        preprocess="exact",
    )
    ex = get_extractor(cfg)
    feats = ex.embed(images[:3])
    assert feats.shape == (3, dim)
    assert_close(feats, reference_features(ex, family, pooling, images[:3]))
    assert f"pool={pooling}" in ex.cache_key


@pytest.mark.parametrize(
    "family,pooling",
    [
        ("efficientnet", "cls"),
        ("efficientnet", "mean"),
        ("clip", "mean"),
        ("clip", "cls"),
        ("sam", "cls"),
        ("convnextv2", "cls"),
        ("swinv2", "cls"),
    ],
)
def test_pooling_refused_where_it_does_not_apply(family, pooling, tiny_dirs):
    cfg = ModelConfig(name=family, checkpoint=str(tiny_dirs[family]), pooling=pooling)
    with pytest.raises(JobError, match="model.pooling"):
        get_extractor(cfg)


def test_prepare_then_embed_prepared_equals_embed(tiny_dirs, images):
    ex = get_extractor(
        ModelConfig(name="dinov2", checkpoint=str(tiny_dirs["dinov2"]), image_size=RESIZE)
    )
    prepared = [ex.prepare(im) for im in images]
    assert prepared[0].shape == (3, RESIZE, RESIZE) and prepared[0].dtype == np.uint8
    np.testing.assert_array_equal(ex.embed_prepared(prepared), ex.embed(images))


@pytest.mark.parametrize("family", FAMILIES)
def test_model_sees_the_input_size(family, extractors, images):
    """What reaches the model's first 3-channel convolution (the patch embedding or stem) is
    image_size x image_size (SAM: its native 64), and report.json says so."""
    ex = extractors[family]
    seen = []
    hooks = [
        mod.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
        for mod in ex.model.modules()
        if isinstance(mod, torch.nn.Conv2d) and mod.in_channels == 3
    ]
    try:
        ex.embed(images[:3])
    finally:
        for h in hooks:
            h.remove()
    side = INPUT.get(family, RESIZE)
    conv = side + 1 if family == "efficientnet" else side  # its stem pads (0, 1, 0, 1) first
    assert seen and set(seen) == {(2, 3, conv, conv), (1, 3, conv, conv)}  # batches 2 + 1
    assert ex.info["input_size"] == ex.input_size == side
    assert f"input={side}" in ex.cache_key and "prep=exact" in ex.cache_key


def _hostile_files() -> list[bytes]:
    """Odd sizes, an EXIF rotation, greyscale, RGBA, 16-bit and CMYK image files."""
    import io

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:61, 0:97]
    smooth = np.stack([(xx * 2) % 256, (yy * 4) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    out = []

    def encode(img: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    rotated = Image.fromarray(smooth)
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    out.append(encode(rotated, "JPEG", quality=95, exif=exif))
    out.append(encode(Image.fromarray(smooth[..., 0]), "PNG"))  # greyscale, odd size
    rgba = np.dstack([smooth, rng.integers(0, 256, smooth.shape[:2], dtype=np.uint8)])
    out.append(encode(Image.fromarray(rgba), "PNG"))  # RGBA
    sixteen = (smooth[..., 1].astype(np.uint16) * 257 + rng.integers(0, 257, (61, 97))).astype(
        np.uint16
    )
    out.append(encode(Image.fromarray(sixteen), "PNG"))  # 16-bit greyscale
    out.append(encode(Image.fromarray(rng.integers(0, 256, (7, 333, 3), dtype=np.uint8)), "PNG"))
    out.append(encode(Image.fromarray(smooth[:, :, ::-1]).convert("CMYK"), "JPEG", quality=95))
    out.append(encode(Image.fromarray(smooth[:33, :51]), "JPEG", quality=90, subsampling=2))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_preparation_equals_the_processor(family, extractors, tiny_dirs):
    """The fast path (torch's uint8 resize in threads, the processor's affine map as one
    tensor op per batch) gives the checkpoint processor's pixel values within 1/255 of the
    [0, 1] range (PIL's and torch's antialiased bilinear differ by at most 1), and features
    with cosine >= 0.9999 against the exact path's."""
    exact = extractors[family]
    ex = get_extractor(
        ModelConfig(name=family, checkpoint=str(tiny_dirs[family]), image_size=RESIZE)
    )
    assert ex.preprocess == "fast" and exact.preprocess == "exact"
    assert ex.cache_key != exact.cache_key and "prep=fast" in ex.cache_key
    files = _hostile_files()
    imgs = [decode_image(b) for b in files]
    assert imgs[0].size == (61, 97)  # the EXIF rotation was applied
    prepared = [ex.prepare(im) for im in imgs]
    # the job's path: decode_pixels' arrays (libjpeg-turbo for JPEGs), the same input
    for data, want in zip(files, prepared, strict=True):
        np.testing.assert_array_equal(ex.prepare(decode_pixels(data, ex.decode_size)), want)
    with ex._lock:  # the CPU's per-image affine map and the device's batched one agree
        cpu = ex._cpu_input(prepared).clone()
    fast = ex._forward_input(torch.from_numpy(np.stack(prepared)))
    torch.testing.assert_close(cpu, fast, rtol=0, atol=1e-6)
    assert_pixels_within_one(ex, family, fast, processor_input(ex, family, imgs))
    assert_cosine(ex.embed_prepared(prepared), exact.embed(imgs))


def assert_pixels_within_one(ex, family: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    """Model inputs within 1/255 of the [0, 1] range (1 in uint8 units) on every pixel: the
    normalised difference times the processor's std (twice for EfficientNet's include_top,
    which divides by it a second time)."""
    assert got.shape == ref.shape
    std = np.asarray(ex.image_processor.image_std, dtype=np.float64)
    err = (got - ref).abs().amax(dim=(0, 2, 3)).double().numpy() * std  # in [0, 1] units
    if family == "efficientnet":
        err = err * std
    assert err.max() <= 1 / 255 + 1e-5, err


def assert_cosine(a: np.ndarray, b: np.ndarray, least: float = 0.9999) -> None:
    """Row-wise cosine of two feature arrays >= least (float64); all-zero rows equal."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    live = norms > 0  # the tiny random EfficientNet's pooled features can be all zero
    np.testing.assert_array_equal(a[~live], b[~live])
    cos = (a * b).sum(1)[live] / norms[live]
    assert cos.size == 0 or cos.min() >= least, cos


def device_route(tiny_dirs, family: str, **kw):
    """A fast-path extractor on the CPU switched to the route a GPU takes (resize on the
    model's device, here CPU tensors)."""
    ex = get_extractor(
        ModelConfig(name=family, checkpoint=str(tiny_dirs[family]), image_size=RESIZE, **kw)
    )
    assert not ex._device_resize and "|prep=fast|" in ex.cache_key  # the CPU's own route
    ex._device_resize = True
    return ex


def test_resize_route_follows_the_device():
    """The fast path resizes on a GPU, in the loader threads on the CPU; never for the
    exact path or SAM's native input (its two PIL resizes stay)."""
    from worker.extractors.hf import resizes_on_device

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resizes_on_device(cuda, "fast", 448, 448)
    assert not resizes_on_device(cpu, "fast", 448, 448)
    assert not resizes_on_device(cuda, "exact", 448, 448)
    assert not resizes_on_device(cuda, "fast", 1024, 448)


def test_report_names_the_resize_route(extractors, tiny_dirs):
    """model.resize_on: cpu for the fast path on the CPU, device on a GPU, null for exact and
    hog, and the embed stage's ModelInfo (report.json's model block) carries it."""
    from worker.extractors.hf import resize_route
    from worker.results import ModelInfo

    fast = get_extractor(
        ModelConfig(name="dinov2", checkpoint=str(tiny_dirs["dinov2"]), image_size=RESIZE)
    )
    assert fast.info["resize_on"] == "cpu"
    assert extractors["dinov2"].info["resize_on"] is None  # the exact path
    keys = ModelInfo.model_fields
    assert ModelInfo(**{k: fast.info.get(k) for k in keys}).resize_on == "cpu"
    assert resize_route("fast", on_device=True) == "device"
    assert resize_route("fast", on_device=False) == "cpu"
    assert resize_route("exact", on_device=True) is None
    assert get_extractor(ModelConfig(name="hog", image_size=64)).info.get("resize_on") is None


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "sam"])
def test_device_resize_equals_the_processor(family, extractors, tiny_dirs):
    """The GPU's route on CPU tensors: prepare passes the decoded pixels on unchanged,
    embed_prepared resizes each image (float32, antialiased bilinear), stacks them and
    applies the affine map. Pixel values within 1/255 of the processor after PIL's resize
    on odd sizes, an EXIF rotation, greyscale, RGBA, 16-bit and CMYK files in one batch;
    features with cosine >= 0.9999 against the exact path's."""
    exact, ex = extractors[family], device_route(tiny_dirs, family)
    files = _hostile_files()
    imgs = [decode_image(b) for b in files]
    pixels = [decode_pixels(b, ex.decode_size) for b in files]
    prepared = [ex.prepare(px) for px in pixels]
    assert all(p is px for p, px in zip(prepared, pixels, strict=True))  # no resize here
    assert prepared[0].shape == (97, 61, 3)  # the EXIF rotation was applied
    np.testing.assert_array_equal(ex.prepare(imgs[2]), pixels[2])  # a PIL image: its pixels
    with ex._lock, torch.inference_mode():
        x = ex._list_input(prepared)
    assert_pixels_within_one(ex, family, x, processor_input(ex, family, imgs))
    assert_cosine(ex.embed_prepared(prepared), exact.embed(imgs))


def _write_files(folder: Path, files: list[bytes]) -> Path:
    """The files under names with their format's extension (JPEG or PNG)."""
    folder.mkdir()
    for i, data in enumerate(files):
        ext = ".jpg" if data[:3] == b"\xff\xd8\xff" else ".png"
        (folder / f"img{i}{ext}").write_bytes(data)
    return folder


def test_device_resize_mixed_sizes_in_one_batch(tiny_dirs, tmp_path, monkeypatch):
    """A batch of seven images of four sizes on the device route: every row is the feature
    of its image embedded alone (the stacked batch mixes no images, also when the images of
    one size go up in several parts), and the job's path (embed_items: loader threads,
    decode_pixels, prepare, batches of 3) gives the same rows."""
    from worker.embeddings import embed_items
    from worker.extractors import hf
    from worker.sources import list_images

    ex = device_route(tiny_dirs, "dinov2", batch_size=8)
    files = _hostile_files()
    pixels = [decode_pixels(b, ex.decode_size) for b in files]
    shapes = [p.shape[:2] for p in pixels]
    assert len(set(shapes)) == 4 and shapes.count((61, 97)) == 4  # and 97 x 61, 7 x 333, 33 x 51
    together = ex.embed_prepared(pixels)  # one batch
    alone = np.concatenate([ex.embed_prepared([p]) for p in pixels])
    assert_close(together, alone)
    monkeypatch.setattr(hf, "DEVICE_RESIZE_PIXELS", 2 * 61 * 97)  # 61 x 97 in two parts
    np.testing.assert_array_equal(ex.embed_prepared(pixels), together)
    items = list_images(str(_write_files(tmp_path / "imgs", files)))
    got = embed_items("d", items, ex, batch_size=3, num_workers=2)
    assert got.ids == [
        f"img{i}" + (".jpg" if f[:2] == b"\xff\xd8" else ".png") for i, f in enumerate(files)
    ]
    assert_close(got.vectors, together)


def test_device_resize_has_its_own_cache_key(tiny_dirs, tmp_path):
    """The two fast routes' features agree (cosine >= 0.9999) but are not bit-identical (the
    two resizes differ by 1 on some pixels), so a cache must not mix them: the keys differ
    in the preparation only, and a cache filled by one route is a miss for the other and a
    hit for its own."""
    from worker.cache import EmbeddingCache
    from worker.embeddings import embed_items
    from worker.sources import list_images

    cpu = get_extractor(
        ModelConfig(name="dinov2", checkpoint=str(tiny_dirs["dinov2"]), image_size=RESIZE)
    )
    dev = device_route(tiny_dirs, "dinov2")
    assert dev.cache_key == cpu.cache_key.replace("|prep=fast|", "|prep=fast-device|")
    files = _hostile_files()
    items = list_images(str(_write_files(tmp_path / "imgs", files)))
    folder = str(tmp_path / "cache")
    runs = {}
    for name, ex in (("cpu", cpu), ("dev", dev), ("cpu again", cpu), ("dev again", dev)):
        cache = EmbeddingCache(folder)
        runs[name] = embed_items("d", items, ex, cache=cache, num_workers=0).vectors
        fresh = not name.endswith("again")
        assert cache.stats["misses"] == (len(files) if fresh else 0), (name, cache.stats)
        assert cache.stats["hits"] == (0 if fresh else len(files)), (name, cache.stats)
    assert not np.array_equal(runs["cpu"], runs["dev"])
    assert_cosine(runs["cpu"], runs["dev"])
    np.testing.assert_array_equal(runs["cpu again"], runs["cpu"])
    np.testing.assert_array_equal(runs["dev again"], runs["dev"])


def test_clipseg_prompt_changes_features_and_key(tiny_dirs, extractors, images):
    base = extractors["clipseg"]
    assert base.prompt == "line structures" and "prompt=line structures" in base.cache_key
    other = get_extractor(
        ModelConfig(
            name="clipseg",
            checkpoint=str(tiny_dirs["clipseg"]),
            image_size=RESIZE,
            prompt="cracks",
            preprocess="exact",
        )
    )
    assert other.cache_key != base.cache_key
    a, b = base.embed(images[:2]), other.embed(images[:2])
    assert not np.allclose(a, b)
    assert_close(b, reference_features(other, "clipseg", "flatten", images[:2]))


def test_cache_key_covers_size_pooling_and_weights(tmp_path, tiny_dirs, extractors):
    base = extractors["dinov2"]
    other_size = get_extractor(
        ModelConfig(name="dinov2", checkpoint=str(tiny_dirs["dinov2"]), image_size=112)
    )
    assert other_size.cache_key != base.cache_key
    # Same weights in another folder: same key. Different weights: different key.
    copy = save_tiny("dinov2", tmp_path / "copy")
    same = get_extractor(
        ModelConfig(name="dinov2", checkpoint=str(copy), image_size=RESIZE, preprocess="exact")
    )
    assert same.cache_key == base.cache_key
    cfg = json.loads((copy / "config.json").read_text())
    cfg["layer_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(cfg))
    changed = get_extractor(
        ModelConfig(name="dinov2", checkpoint=str(copy), image_size=RESIZE, preprocess="exact")
    )
    assert changed.cache_key != base.cache_key


def test_default_image_size_and_feature_dim_property(tiny_dirs):
    ex = get_extractor(ModelConfig(name="convnextv2", checkpoint=str(tiny_dirs["convnextv2"])))
    assert ex.image_size == 448 and ex.info["image_size"] == 448
    assert ex.info["feature_dim"] is None
    dim = 32 * (448 // 8) ** 2  # the model sees 448: last width x (448/4/2)^2
    assert ex.feature_dim == dim  # one forward pass on a blank image
    assert ex.info["feature_dim"] == dim and ex.info["input_size"] == 448


def test_bfloat16_on_cpu_returns_float32(tiny_dirs, images, extractors):
    ex = get_extractor(
        ModelConfig(
            name="dinov2",
            checkpoint=str(tiny_dirs["dinov2"]),
            image_size=RESIZE,
            dtype="bfloat16",
            preprocess="exact",
        )
    )
    assert ex.info["dtype"] == "bfloat16" and "dtype=bfloat16" in ex.cache_key
    assert ex.cache_key != extractors["dinov2"].cache_key
    feats = ex.embed(images[:2])
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    ref = extractors["dinov2"].embed(images[:2])
    assert np.abs(feats - ref).max() < 0.1 * np.abs(ref).max()


def test_missing_local_checkpoint_names_the_field(tmp_path):
    with pytest.raises(JobError, match="model.checkpoint") as err:
        get_extractor(ModelConfig(name="dinov2", checkpoint=str(tmp_path / "nope")))
    assert "not found" in str(err.value)


def test_unloadable_checkpoint_suggests_offline_or_local(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobError, match="model.checkpoint") as err:
        get_extractor(ModelConfig(name="dinov2", checkpoint=str(tmp_path / "empty")))
    assert "HF_HUB_OFFLINE" in str(err.value) and "local folder" in str(err.value)


def test_missing_processor_is_a_job_error(tmp_path, tiny_dirs):
    folder = tmp_path / "noproc"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny_dirs["dinov2"] / name).read_bytes())
    with pytest.raises(JobError, match="image processor"):
        get_extractor(ModelConfig(name="dinov2", checkpoint=str(folder)))


def test_family_mismatch_is_a_job_error(tiny_dirs):
    with pytest.raises(JobError, match="is a 'clip' model"):
        get_extractor(ModelConfig(name="dinov2", checkpoint=str(tiny_dirs["clip"])))


def test_remote_code_is_never_run(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "ran.txt"
    (folder / "config.json").write_text(
        json.dumps(
            {"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}
        )
    )
    (folder / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    with pytest.raises(JobError, match="model.checkpoint"):
        get_extractor(ModelConfig(name="dinov2", checkpoint=str(folder)))
    assert not marker.exists()


def test_prompt_only_for_clipseg(tiny_dirs):
    with pytest.raises(JobError, match="model.prompt"):
        get_extractor(
            ModelConfig(name="dinov2", checkpoint=str(tiny_dirs["dinov2"]), prompt="cracks")
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_job_error(tiny_dirs):
    with pytest.raises(JobError, match="model.device"):
        get_extractor(
            ModelConfig(name="dinov2", checkpoint=str(tiny_dirs["dinov2"]), device="cuda")
        )


def test_paper_checkpoints_are_the_defaults():
    from worker.extractors.hf import FAMILIES as DEFAULTS

    assert {k: v.checkpoint for k, v in DEFAULTS.items()} == {
        "sam": "facebook/sam-vit-base",
        "clipseg": "CIDAS/clipseg-rd64-refined",
        "efficientnet": "google/efficientnet-b3",
        "clip": "openai/clip-vit-base-patch32",
        "dinov2": "facebook/dinov2-base",
        "convnextv2": "facebook/convnextv2-tiny-1k-224",
        "swinv2": "microsoft/swinv2-tiny-patch4-window8-256",
    }


@pytest.mark.parametrize("shape", [(61, 97), (480, 640), (7, 333), (96, 96), (1000, 30)])
def test_uint8_resize_is_within_one_of_pil(shape):
    """worker.extractors.hf.resize_uint8 (torch) and resize_on_device against PIL's bilinear
    resize (the exact path's): at most 1 apart on every pixel, down- and upsampling, odd
    sizes."""
    from worker.extractors.hf import resize_on_device, resize_uint8

    h, w = shape
    rng = np.random.default_rng(h * w)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 3) % 256, (yy * 5) % 256, (xx + 2 * yy) % 256], -1)
    arr = np.clip(arr + rng.integers(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    got = resize_uint8(arr, RESIZE).astype(int)
    ref = np.asarray(resize_square(Image.fromarray(arr), RESIZE)).astype(int).transpose(2, 0, 1)
    assert got.shape == ref.shape == (3, RESIZE, RESIZE)
    assert np.abs(got - ref).max() <= 1
    # the GPU route's float32 resize (here on CPU tensors), also at the paper's 448
    for size in (RESIZE, 448):
        ref = np.asarray(resize_square(Image.fromarray(arr), size)).transpose(2, 0, 1)
        dev = resize_on_device([arr], size, torch.device("cpu"))
        assert dev.shape == (1, 3, size, size) and dev.dtype == torch.float32
        assert np.abs(dev[0].double().numpy() - ref).max() <= 1
