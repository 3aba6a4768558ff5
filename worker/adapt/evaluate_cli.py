"""`python -m worker evaluate --pred DIR --masks DIR [--json]`: score saved probability maps.

For users who bring their own model: every mask needs a probability map with the same stem
(relative path without extension) saved as an 8-bit PNG (prob = value / 255), and every map a
mask. Scores are the ODS / OIS F-score of `worker.adapt.ods` (docs/method.md §5.2-5.3). Missing
pairs, unreadable files and size mismatches are errors naming the files (exit code 2).
"""

from __future__ import annotations

import argparse
import io
import json
import sys

import numpy as np
from PIL import Image

from worker.adapt import ods
from worker.errors import JobError
from worker.sources import list_images, read_bytes

EXIT_OK, EXIT_INVALID = 0, 2
_SHOW = 5


def _open_image(data: bytes, where: str, what: str, hint: str = "") -> Image.Image:
    """Decode image bytes, or a JobError naming the file and what it should be."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # PIL raises many types for corrupt data
        raise JobError(f"{where}: cannot decode {what} ({err.__class__.__name__}){hint}") from None
    return img


def decode_mask(data: bytes, where: str) -> np.ndarray:
    """Mask bytes -> bool (H, W). Palette masks use their indices, colour masks any channel.
    Integer values: 0/1 and 0/k (one class index k < 128) are positive where > 0, 0/255 (with
    compression noise) where >= 128; several class indices are refused (JobError)."""
    img = _open_image(
        data,
        where,
        "mask",
        "; masks must be images (PNG recommended) with 0/255 or 0/1 values",
    )
    if img.mode == "1":
        return np.asarray(img, dtype=bool)
    if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        arr = np.asarray(img.convert("RGB")).max(axis=-1)
    elif img.mode in ("LA", "PA"):
        arr = np.asarray(img)[..., 0]
    else:  # L, P (indices), I, I;16, F
        arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr)
        return arr >= 0.5 if arr.max(initial=0) <= 1 else arr >= 128
    top = int(arr.max(initial=0))
    if 1 < top < 128:  # class indices (0/2, 0/1/2, ...), not 0/255 with compression noise
        values = np.unique(arr)
        if len(values) > 2:
            shown = ", ".join(str(int(v)) for v in values[:6])
            raise JobError(
                f"{where}: mask holds class indices {shown}{', ...' if len(values) > 6 else ''}"
                "; the worker measures one class: give a binary mask (0/255 or 0/1) of it"
            )
        return arr > 0  # one class index k > 0 on a 0 background: k is the foreground
    return ods.binarize_mask(arr)


def decode_prob_map(data: bytes, where: str) -> np.ndarray:
    """An 8-bit probability map as uint8 (H, W). Grey PNGs are read as they are; colour maps
    through PIL's grey conversion; 16-bit maps are scaled to 8 bits (>> 8)."""
    img = _open_image(data, where, "probability map")
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return (np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
    if img.mode in ("LA", "PA"):
        return np.asarray(img.convert("LA"), dtype=np.uint8)[..., 0]
    if img.mode == "F":
        raise JobError(f"{where}: float image; save probability maps as 8-bit PNG (value = p*255)")
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _missing(kind: str, stems: list[str], folder: str) -> str:
    shown = ", ".join(stems[:_SHOW]) + (
        f" and {len(stems) - _SHOW} more" if len(stems) > _SHOW else ""
    )
    return f"{len(stems)} {kind} in {folder}: {shown}"


def evaluate(pred_dir: str, masks_dir: str, storage=None) -> dict:
    """ODS / OIS of the PNG maps in pred_dir against the masks in masks_dir (paired by stem).

    Returns {ods_f, ods_threshold, ois_f, precision, recall, count, per_image [{id, f}]}; ids are
    the mask stems. Raises JobError for missing pairs, bad files or size mismatches.
    """
    masks = list_images(masks_dir, storage)
    preds = [it for it in list_images(pred_dir, storage) if it.id.lower().endswith(".png")]
    if not masks:
        raise JobError(f"--masks: no mask images found in {masks_dir}")
    mask_by = {}
    for m in masks:
        if m.stem in mask_by:
            raise JobError(f"--masks: two masks share the stem {m.stem!r} in {masks_dir}; keep one")
        mask_by[m.stem] = m
    pred_by = {}
    for p in preds:
        if p.stem in pred_by:
            raise JobError(f"--pred: two maps share the stem {p.stem!r} in {pred_dir}; keep one")
        pred_by[p.stem] = p
    no_pred = sorted(set(mask_by) - set(pred_by))
    no_mask = sorted(set(pred_by) - set(mask_by))
    if no_pred or no_mask:
        parts = []
        if no_pred:
            parts.append(
                _missing("masks have no probability map (8-bit PNG, same stem)", no_pred, pred_dir)
            )
        if no_mask:
            parts.append(_missing("probability maps have no mask", no_mask, masks_dir))
        raise JobError("evaluate: unpaired files; " + "; ".join(parts))
    stems = sorted(mask_by)
    counts = []
    for stem in stems:
        m, p = mask_by[stem], pred_by[stem]
        mask = decode_mask(read_bytes(m.uri, storage), m.uri)
        prob = decode_prob_map(read_bytes(p.uri, storage), p.uri)
        if prob.shape != mask.shape:
            raise JobError(
                f"{p.uri}: probability map is {prob.shape[1]}x{prob.shape[0]} but mask {m.uri} is "
                f"{mask.shape[1]}x{mask.shape[0]}; save maps at the mask's size"
            )
        counts.append(ods.threshold_counts(prob, mask))
    result = ods.evaluate_counts(np.stack(counts), stems)
    result.pop("curve", None)
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m worker evaluate",
        description="ODS/OIS F-score of saved probability maps vs masks",
    )
    p.add_argument("--pred", required=True, help="folder of 8-bit PNG probability maps")
    p.add_argument("--masks", required=True, help="folder of masks with the same stems")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def run_args(args: argparse.Namespace, out=None, err=None) -> int:
    """Run with parsed arguments (pred, masks, json); returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        result = evaluate(args.pred, args.masks)
    except JobError as e:
        print(f"error: {e}", file=err)
        return EXIT_INVALID
    if args.json:
        keys = ("ods_f", "ods_threshold", "ois_f", "precision", "recall", "count", "per_image")
        print(json.dumps({k: result[k] for k in keys}), file=out)
    else:
        print(
            f"images: {result['count']}\n"
            f"ODS F: {result['ods_f']:.4f} at threshold {result['ods_threshold']:.2f} "
            f"(precision {result['precision']:.4f}, recall {result['recall']:.4f})\n"
            f"OIS F: {result['ois_f']:.4f}",
            file=out,
        )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`evaluate` on its own: `main(["--pred", DIR, "--masks", DIR, "--json"])`."""
    return run_args(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
