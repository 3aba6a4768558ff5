"""Image decoding: every mode to the same RGB, bad files as ImageError with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from worker.images import ImageError, decode_image


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_rgb_roundtrip_is_exact():
    arr = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    out = decode_image(_encode(Image.fromarray(arr)))
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), arr)


def test_grey_palette_alpha_cmyk_and_16bit():
    grey = Image.fromarray(np.full((4, 4), 77, np.uint8), mode="L")
    assert np.asarray(decode_image(_encode(grey))).tolist() == [[[77] * 3] * 4] * 4

    pal = grey.convert("P")
    np.testing.assert_array_equal(np.asarray(decode_image(_encode(pal))), np.full((4, 4, 3), 77))

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128  # half transparent red over black -> about 100
    out = np.asarray(decode_image(_encode(Image.fromarray(rgba, mode="RGBA"))))
    assert out[0, 0, 0] == pytest.approx(100, abs=1) and out[0, 0, 1] == 0

    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # pure red
    out = np.asarray(decode_image(_encode(cmyk, "JPEG")))
    assert out[..., 0].min() > 200 and out[..., 1].max() < 60

    deep = Image.fromarray(np.full((3, 3), 51400, np.uint16))  # 51400 >> 8 = 200
    out = np.asarray(decode_image(_encode(deep)))
    assert out.shape == (3, 3, 3) and (out == 200).all()


def test_same_input_same_output_every_time():
    img = Image.new("CMYK", (5, 5), (10, 20, 30, 40))
    data = _encode(img, "JPEG")
    assert np.array_equal(np.asarray(decode_image(data)), np.asarray(decode_image(data)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"not an image at all", "cannot decode"),
    ],
)
def test_bad_bytes(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data)


def test_truncated_png_is_skipped():
    data = _encode(Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 9))
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_refused(monkeypatch):
    import worker.images as images

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="too large"):
        decode_image(_encode(Image.new("L", (20, 20))))


def test_truncated_png_is_skipped_even_after_weasyprint_import():
    import weasyprint  # noqa: F401  (sets PIL's LOAD_TRUNCATED_IMAGES globally)

    test_truncated_png_is_skipped()


def _photo_jpeg(w: int, h: int, seed: int = 0, exif_orientation: int | None = None) -> bytes:
    """A smooth, slightly noisy picture (like a photo, not like white noise) as a JPEG."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    arr = np.stack(
        [
            128 + 100 * np.sin(6 * xx + 3 * yy),
            128 + 100 * np.cos(9 * yy),
            128 + 60 * np.sin(20 * xx * yy),
        ],
        -1,
    )
    arr = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    kw = {}
    if exif_orientation is not None:
        exif = img.getexif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def test_draft_is_exact_when_no_dct_scale_fits():
    """640 x 480 for 448: half scale (320 x 240) would be too small, so nothing changes."""
    data = _photo_jpeg(640, 480)
    np.testing.assert_array_equal(
        np.asarray(decode_image(data, draft=448)), np.asarray(decode_image(data))
    )


@pytest.mark.parametrize("size", [(1000, 900), (2000, 1500), (4000, 3000)])
def test_draft_decode_stays_within_the_documented_tolerance(size):
    """DCT-scaled decoding, then the same resize to 448: mean |difference| <= 1/255 and the
    99th percentile <= 3/255 of the full decode's pixels (docs/method.md §9)."""
    from worker.images import resize_square

    data = _photo_jpeg(*size)
    scaled = decode_image(data, draft=448)
    assert min(scaled.size) >= 448 and scaled.size[0] < size[0]  # it did decode smaller
    full = np.asarray(resize_square(decode_image(data), 448), dtype=np.float64)
    fast = np.asarray(resize_square(scaled, 448), dtype=np.float64)
    diff = np.abs(full - fast)
    assert diff.mean() <= 1.0 and np.percentile(diff, 99) <= 3.0, (diff.mean(), diff.max())


def test_draft_keeps_the_exif_rotation_and_greyscale():
    rotated = decode_image(_photo_jpeg(2000, 1000, exif_orientation=6), draft=448)
    assert rotated.size == (500, 1000) and rotated.mode == "RGB"  # half scale, turned upright
    grey = Image.open(io.BytesIO(_photo_jpeg(2000, 1000))).convert("L")
    out = decode_image(_encode(grey, "JPEG"), draft=448)
    assert out.size == (1000, 500) and out.mode == "RGB"
    r, g, b = np.asarray(out).transpose(2, 0, 1)
    assert (r == g).all() and (g == b).all()


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _decode_pixels_cases() -> dict[str, bytes]:
    """JPEGs the libjpeg-turbo path decodes and files it leaves to PIL (decode_pixels)."""
    photo = Image.open(io.BytesIO(_photo_jpeg(97, 61)))
    rng = np.random.default_rng(3)
    cases = {f"subsampling {s}": _jpeg(photo, quality=90, subsampling=s) for s in (0, 1, 2)}
    cases["progressive"] = _jpeg(photo, quality=90, progressive=True)
    cases["greyscale"] = _jpeg(photo.convert("L"), quality=90)
    cases["7 x 333 noise"] = _jpeg(
        Image.fromarray(rng.integers(0, 256, (333, 7, 3), dtype=np.uint8)), quality=75
    )
    for orientation in range(1, 9):
        cases[f"EXIF orientation {orientation}"] = _photo_jpeg(97, 61, exif_orientation=orientation)
    exif = photo.getexif()
    exif[0x0112] = 42  # not an orientation: the pixels as stored
    cases["EXIF orientation 42"] = _jpeg(photo, exif=exif)
    cases["CMYK JPEG"] = _jpeg(Image.new("CMYK", (9, 5), (0, 255, 255, 0)))
    cases["RGBA PNG"] = _encode(
        Image.fromarray(rng.integers(0, 256, (5, 7, 4), dtype=np.uint8), mode="RGBA")
    )
    cases["16-bit PNG"] = _encode(Image.fromarray(np.full((3, 4), 51400, np.uint16)))
    return cases


@pytest.mark.parametrize(("name", "data"), list(_decode_pixels_cases().items()))
@pytest.mark.parametrize("draft", [None, 48])
def test_decode_pixels_equals_decode_image(name, data, draft):
    """Bit-identical to PIL's decode, DCT scale and EXIF orientation included (greyscale,
    odd sizes, every chroma subsampling, progressive; CMYK, PNGs go through PIL)."""
    from worker.images import decode_pixels

    ref = np.asarray(decode_image(data, draft=draft))
    got = decode_pixels(data, draft=draft)
    assert got.dtype == np.uint8 and got.shape == ref.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("size", [(1000, 900), (2000, 1500)])
def test_decode_pixels_uses_the_same_dct_scale_as_draft(size):
    from worker.images import decode_pixels

    data = _photo_jpeg(*size, exif_orientation=6)
    got = decode_pixels(data, draft=448)
    assert got.shape[0] == size[0] // 2 and got.shape[1] < size[1]  # half scale, upright
    np.testing.assert_array_equal(got, np.asarray(decode_image(data, draft=448)))


def test_decode_pixels_decodes_jpegs_without_pil(monkeypatch):
    """RGB and greyscale JPEGs take the libjpeg-turbo path (PIL reads only the header)."""
    import worker.images as images

    def refuse(*_a, **_k):
        raise AssertionError("decode_image was called")

    data = _photo_jpeg(97, 61, exif_orientation=6)
    grey = _jpeg(Image.open(io.BytesIO(data)).convert("L"))
    expected = [np.asarray(decode_image(d)) for d in (data, grey)]
    monkeypatch.setattr(images, "decode_image", refuse)
    for d, ref in zip((data, grey), expected, strict=True):
        np.testing.assert_array_equal(images.decode_pixels(d), ref)


@pytest.mark.parametrize(
    ("cut", "reason"), [(0.5, "cannot decode"), (0.0, "empty file"), (0.001, "cannot decode")]
)
def test_decode_pixels_bad_jpeg_gives_decode_images_error(cut, reason):
    """A truncated or damaged JPEG: the same ImageError as decode_image (no grey half)."""
    from worker.images import decode_pixels

    data = _photo_jpeg(97, 61)
    data = data[: int(len(data) * cut)]
    with pytest.raises(ImageError, match=reason):
        decode_image(data)
    with pytest.raises(ImageError, match=reason):
        decode_pixels(data)


def test_decode_pixels_bomb_guard(monkeypatch):
    import worker.images as images

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="too large"):
        images.decode_pixels(_photo_jpeg(20, 20))
