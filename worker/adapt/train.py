"""Loading image / mask pairs and seeded, resumable training of a Segmenter (docs/method.md §5.1).

- Images are decoded by `worker.images.decode_image` and resized to image_size x image_size
  (bilinear); masks (0/255 or 0/1, any PIL mode) are binarised and resized with nearest
  neighbour. A mask must have the size of its image; a missing or mismatched mask is a JobError
  that names the file.
- Training: BCE-with-logits + soft Dice, AdamW (job lr, weight decay 1e-4), batches shuffled by
  a generator seeded from (seed, epoch), the global torch RNG re-seeded at every epoch (dropout,
  drop-path), deterministic algorithms on. A run that stops and restarts from the last epoch
  checkpoint therefore ends with the same weights as one that never stopped.
- Checkpoints: `<checkpoint_dir>/last.pt` (atomic), written after every epoch, holding the
  model and optimiser state, the epoch count, the loss history and a fingerprint of the
  training set and settings; a checkpoint with another fingerprint is ignored (training starts
  over).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from worker.adapt.evaluate_cli import decode_mask
from worker.adapt.masks import Sample  # noqa: F401  (re-exported)
from worker.adapt.segmenters import Segmenter
from worker.errors import JobError
from worker.images import ImageError, decode_image, resize_square
from worker.interrupt import stoppable
from worker.sources import read_bytes

LOGGER = logging.getLogger("worker")
CHECKPOINT_NAME = "last.pt"


def load_image(sample: Sample, storage=None) -> Image.Image | None:
    """The decoded RGB image, or None (logged) when it cannot be decoded."""
    try:
        return decode_image(read_bytes(sample.image_uri, storage))
    except ImageError as err:
        LOGGER.warning("adaptation: skipping %s (%s)", sample.image_uri, err)
        return None
    except FileNotFoundError:
        raise JobError(f"{sample.image_uri}: image not found") from None


def load_mask(sample: Sample, size: tuple[int, int], storage=None) -> np.ndarray:
    """The mask of `sample` as bool (H, W), checked against the image size (W, H)."""
    if sample.mask_uri is None:
        if sample.empty_mask:
            return np.zeros((size[1], size[0]), dtype=bool)
        raise JobError(
            f"{sample.image_uri}: no mask with the same stem in the masks folder of dataset "
            f"{sample.dataset!r}; add the mask or remove the image"
        )
    try:
        data = read_bytes(sample.mask_uri, storage)
    except FileNotFoundError:
        raise JobError(f"{sample.mask_uri}: mask not found") from None
    mask = decode_mask(data, sample.mask_uri)
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        raise JobError(
            f"{sample.mask_uri}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
            f"{sample.image_uri} is {size[0]}x{size[1]}; masks must have their image's size"
        )
    return mask


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """bool (H, W) -> bool (size, size), nearest neighbour."""
    if mask.shape == (size, size):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    return np.asarray(img.resize((size, size), Image.Resampling.NEAREST)) >= 128


def load_pair(
    sample: Sample, image_size: int, storage=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(image uint8 (S, S, 3), resized mask bool (S, S), original mask bool (H, W)), or None
    when the image cannot be decoded."""
    img = load_image(sample, storage)
    if img is None:
        return None
    mask = load_mask(sample, img.size, storage)
    image = np.array(resize_square(img, image_size), dtype=np.uint8)
    return image, resize_mask(mask, image_size), mask


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy on logits plus soft Dice (over the whole batch)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    dice = 1.0 - (2.0 * inter + smooth) / (prob.sum() + target.sum() + smooth)
    return bce + dice


def as_float_images(x: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """A batch as float32 in [0, 1] on `device`: uint8 batches (0..255) are scaled."""
    if device is not None:
        x = x.to(device)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


@contextmanager
def deterministic():
    """torch.use_deterministic_algorithms(True, warn_only=True) and deterministic cuDNN,
    restored afterwards. Bit-exact on CPU; on CUDA as far as the kernels allow (cuBLAS also
    needs CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment)."""
    was = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def resolve_device(name: str | None) -> torch.device:
    """The device training runs on, by the one device rule (worker.devices; compute.device)."""
    from worker.devices import resolve_device as resolve

    return resolve(name, "compute.device")


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def _load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file: start over
        LOGGER.warning("adaptation: ignoring unreadable checkpoint %s (%s)", path, err)
        return None
    if state.get("fingerprint") != fingerprint:
        LOGGER.warning("adaptation: %s is from other data or settings; training from scratch", path)
        return None
    return state


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train_segmenter(
    model: Segmenter,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str = "",
    weight_decay: float = 1e-4,
    progress: Callable[[int, int, float], None] | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Train `model` in place on (x, y); returns {losses (per epoch), resumed_from, seconds}.

    x: (N, 3, S, S) float in [0, 1] or uint8 (0..255, 4x less memory); y: (N, 1, S, S) 0/1
    (float, uint8 or bool).

    With `checkpoint_dir`, training resumes from `last.pt` there when its fingerprint matches,
    and writes it after every epoch. `progress(epoch, epochs, loss)` is called per epoch.
    `device`: where to train (default: where the model is); x and y may stay on the CPU.
    """
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("no training images")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    start, losses = 0, []
    if ckpt is not None:
        state = _load_checkpoint(ckpt, fingerprint)
        if state is not None and int(state["epoch"]) > epochs:
            LOGGER.warning(
                "adaptation: %s is at epoch %d, past the %d asked for; training from scratch",
                ckpt,
                int(state["epoch"]),
                epochs,
            )
        elif state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["epoch"])
            losses = [float(v) for v in state["losses"]][:start]
            LOGGER.info("adaptation: resuming from %s at epoch %d", ckpt, start)
    t0 = time.perf_counter()
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    with deterministic(), torch.random.fork_rng(devices=cuda):
        for epoch in range(start, epochs):
            torch.manual_seed(_epoch_seed(seed, epoch))
            gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch) + 1)
            order = torch.randperm(n, generator=gen)
            model.train()
            total = 0.0
            for b in stoppable(range(0, n, batch_size)):  # a stop takes effect between steps
                idx = order[b : b + batch_size]
                optimizer.zero_grad(set_to_none=True)
                xb, yb = as_float_images(x[idx], dev), y[idx].to(dev).float()
                loss = bce_dice_loss(model(xb), yb)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / n)
            if ckpt is not None:
                _save_checkpoint(
                    ckpt,
                    {
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "losses": losses,
                        "fingerprint": fingerprint,
                    },
                )
            if progress is not None:
                progress(epoch + 1, epochs, losses[-1])
    model.eval()
    return {"losses": losses, "resumed_from": start, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def predict_probs(model: Segmenter, x: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Sigmoid probabilities (N, 1, S, S) float32 on the CPU of images in [0, 1] (on the
    model's device)."""
    model.eval()
    dev = next(model.parameters()).device
    out = [
        torch.sigmoid(model(as_float_images(x[b : b + batch_size], dev))).float().cpu()
        for b in stoppable(range(0, x.shape[0], batch_size))
    ]
    if not out:
        return torch.zeros((0, 1, *x.shape[-2:]), dtype=torch.float32)
    return torch.cat(out, dim=0)


def to_uint8_prob(prob: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """A (1, S, S) or (S, S) probability map -> uint8 (H, W), bilinear to size (H, W) first.

    8-bit quantisation (round(p * 255)) matches a map saved as PNG and scored by `evaluate`.
    """
    p = prob.reshape(1, 1, *prob.shape[-2:]).float()
    if size is not None and tuple(p.shape[-2:]) != tuple(size):
        p = F.interpolate(p, size=tuple(size), mode="bilinear", align_corners=False)
    return (p[0, 0].clamp_(0, 1) * 255.0).round_().to(torch.uint8).numpy()
