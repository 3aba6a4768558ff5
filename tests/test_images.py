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
