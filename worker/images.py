"""Decode and normalise images: the one place that turns bytes into an RGB PIL image.

Every mode is converted the same way every time: palette and grey to RGB, alpha composited
on black, CMYK through PIL's conversion, 16-bit scaled to 8-bit by its full range (>> 8).
The EXIF orientation tag (phone pictures) is applied first, with PIL.ImageOps.exif_transpose,
so an image is seen the way viewers show it; a damaged EXIF block leaves the pixels as stored.

`decode_image(data, draft=size)` lets a JPEG decode at 1/2, 1/4 or 1/8 scale in the DCT
(PIL's draft mode, libjpeg's scaled IDCT) when the scaled image still has at least `size`
pixels on both sides: a 4000 x 3000 photo for a 448 model decodes as 1000 x 750, about 10x
less work. The pixels then differ slightly from a full decode followed by the same resize
(tests/test_images.py bounds it); without `draft` decoding is exact.

`decode_pixels(data, draft)` gives the same pixels as a uint8 (H, W, 3) array, faster: an RGB
or greyscale JPEG is decoded by libjpeg-turbo straight into the array (simplejpeg: the same
library, version and settings as PIL's decoder, so the pixels are bit-identical,
tests/test_images.py), the same DCT scale chosen, its EXIF orientation applied as an array
transpose. It skips PIL's 4-byte pixel storage and the copy out of it (about 1.5 ms of a
640 x 480 JPEG's 3.9 ms here). Every other image (PNG, CMYK, MPO, a truncated or damaged
JPEG, ...) goes through decode_image.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import simplejpeg
from PIL import Image, ImageFile

#: changes whenever decoding gives other pixels for the same bytes (EXIF orientation was added
#: in "exif1"); embedding cache keys should include it so no stale vector is reused
DECODE_VERSION = "rgb8-exif1"

MAX_IMAGE_PIXELS = 100_000_000  # decompression-bomb guard: larger images are skipped


class ImageError(Exception):
    """An image that cannot be used; the message is the reason listed in `skipped`."""


def decode_image(data: bytes, draft: int | None = None) -> Image.Image:
    """Bytes to an RGB image, or ImageError with a short reason. `draft`: the square side
    the image will be resized to; a JPEG may then decode at a DCT scale that keeps both of
    its sides >= draft."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    # WeasyPrint sets PIL's process-wide LOAD_TRUNCATED_IMAGES when it is imported; a
    # truncated dataset image must be skipped whatever was imported before.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # our own limit below replaces PIL's warning; PIL's hard error still applies
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageError(f"too large ({w}x{h} pixels > {MAX_IMAGE_PIXELS})")
            if draft is not None and img.format == "JPEG":
                img.draft(img.mode, (draft, draft))
            img.load()
            if img.mode == "F":
                bad = int(np.count_nonzero(~np.isfinite(np.asarray(img))))
                if bad:
                    raise ImageError(
                        f"float image with {bad} pixel(s) that are inf or NaN; not used "
                        "(save it without them, or as 8/16-bit)"
                    )
            img = upright(img)  # an animated GIF (or multi-page TIFF): its first frame
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(f"too large (decompression bomb guard): {err}") from None
    except Exception as err:  # PIL raises many types for corrupt data
        raise ImageError(f"cannot decode image ({err.__class__.__name__})") from None
    return to_rgb(img)


def decode_pixels(data: bytes, draft: int | None = None) -> np.ndarray:
    """np.asarray(decode_image(data, draft)): the same uint8 (H, W, 3) pixels, or the same
    ImageError; RGB and greyscale JPEGs decoded by libjpeg-turbo straight into the array."""
    if data[:3] == b"\xff\xd8\xff":  # JPEG start of image, then a marker
        pixels = _jpeg_pixels(data, draft)
        if pixels is not None:
            return pixels
    return np.asarray(decode_image(data, draft))


def _jpeg_pixels(data: bytes, draft: int | None) -> np.ndarray | None:
    """decode_pixels for a JPEG PIL reads as RGB or L, or None to leave it to decode_image
    (other modes, too large, damaged, truncated: its errors name the reason)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # the header only: size, mode, EXIF
        w, h = img.size
        if img.format != "JPEG" or img.mode not in ("RGB", "L") or w * h > MAX_IMAGE_PIXELS:
            return None
        scale = 1  # PIL's draft: the largest of 8, 4, 2 that keeps both sides >= draft
        if draft is not None:
            fit = min(w // draft, h // draft)
            scale = next((s for s in (8, 4, 2) if fit >= s), 1)
        size = (-(-h // scale), -(-w // scale))
        # min_height/min_width pick the smallest M/8 DCT scale with both sides >= size:
        # 8/scale, PIL's; strict: a libjpeg warning (truncated data, ...) raises
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_height=size[0], min_width=size[1], strict=True
        )
    except Exception:  # noqa: BLE001 - decode_image gives the reason, or decodes it after all
        return None
    if pixels.shape != (*size, 3):
        return None
    return _oriented(pixels, _orientation(img))


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1-8) that `upright` applies; 1 when none or unreadable."""
    try:
        tag = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block leaves the pixels as stored
        return 1
    return tag if tag in range(2, 9) else 1


def _oriented(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) pixels turned as PIL.ImageOps.exif_transpose turns the image (C-contiguous)."""
    if orientation == 1:
        return pixels
    t = pixels.transpose(1, 0, 2)
    turned = {
        2: pixels[:, ::-1],  # FLIP_LEFT_RIGHT
        3: pixels[::-1, ::-1],  # ROTATE_180
        4: pixels[::-1],  # FLIP_TOP_BOTTOM
        5: t,  # TRANSPOSE
        6: t[:, ::-1],  # ROTATE_270 (90 degrees clockwise)
        7: t[::-1, ::-1],  # TRANSVERSE
        8: t[::-1],  # ROTATE_90
    }[orientation]
    return np.ascontiguousarray(turned)


def upright(img: Image.Image) -> Image.Image:
    """The image turned by its EXIF orientation tag (1-8), the way viewers show it.

    No tag, tag 1, or an EXIF block PIL cannot parse: the image as stored."""
    from PIL import ImageOps

    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is not a reason to skip pixels
        return img
    if orientation in (None, 1) or orientation not in range(2, 9):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, the same way every time."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        if img.mode == "I" and arr.max(initial=0) > 65535:
            arr = arr >> 24
        else:
            arr = arr >> 8
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Resize to size x size (bilinear), as the paper does before feature extraction."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BILINEAR)


PERTURBATIONS = ("brighten", "darken", "blur")


def perturb_image(img: Image.Image, kind: str) -> Image.Image:
    """The robustness probe's perturbations (paper appendix D): brightness +30% / -30%,
    Gaussian blur (radius 2 pixels)."""
    from PIL import ImageEnhance, ImageFilter

    if kind == "brighten":
        return ImageEnhance.Brightness(img).enhance(1.3)
    if kind == "darken":
        return ImageEnhance.Brightness(img).enhance(0.7)
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=2))
    raise ValueError(f"unknown perturbation {kind!r}")
