"""The paper's seven transformers extractors (docs/method.md §9; paper tables 1 and 8).

| name         | model class                  | feature (pooling "flatten", the paper's)          |
|--------------|------------------------------|---------------------------------------------------|
| sam          | SamModel                     | get_image_embeddings (C x h x w), flattened        |
| clipseg      | CLIPSegForImageSegmentation  | decoder hidden states with the prompt, concatenated|
| efficientnet | EfficientNetModel            | pooler_output                                      |
| clip         | CLIPModel                    | get_image_features (projected image embedding)     |
| dinov2       | Dinov2Model                  | last_hidden_state (tokens x hidden), flattened     |
| convnextv2   | ConvNextV2Model              | last_hidden_state (C x h x w), flattened           |
| swinv2       | Swinv2Model                  | last_hidden_state (tokens x hidden), flattened     |

Pooling acts on the paper's feature tensor: `flatten` keeps all of it, `mean` averages over
positions (spatial cells or patch tokens; a CLS token is left out), `cls` takes the CLS token.
Families whose feature has no CLS token refuse `cls`; EfficientNet and CLIP, whose features
are already one vector, accept only `flatten`. For CLIPSeg, `mean` and `cls` apply to each
decoder hidden state and the results are concatenated.

The model sees `image_size` (docs/method.md §9, "Model input"): each image is resized to
`image_size` x `image_size` (PIL bilinear, default 448 as in the paper) and only the
checkpoint processor's rescale and normalisation are applied; its own resize and crop are
not (a DINOv2 processor would otherwise crop every image to 224). DINOv2 interpolates its
position embeddings itself; CLIP, CLIPSeg and SwinV2 are called with
`interpolate_pos_encoding=True`; EfficientNet and ConvNeXtV2 are convolutional. SAM's ViT has
fixed position embeddings and no interpolation: its native handling stays (the `image_size`
square is resized to the checkpoint's input size, 1024 for the paper's, with the
processor's resample). `input_size` (report.json `model.input_size`) is the side of the
square the model sees.

Preparation (`model.preprocess`):

- `fast` (default): the loader threads decode JPEGs with libjpeg-turbo straight into an
  array (worker.images.decode_pixels, bit-identical to PIL's decode); the resize and the
  processor's per-channel affine map (rescale, normalise, EfficientNet's offset and
  `include_top`) follow, by one of two routes fixed at construction from the device
  (`resizes_on_device`):
  - CPU (model on the CPU, and SAM's native input anywhere): `prepare(pixels)` resizes them
    in the threads to uint8 (3, H, W) planes (torch's uint8 antialiased bilinear kernel,
    within 1 of PIL's values and about 2.5 times as fast) and `embed_prepared` applies the
    affine map, on the CPU per image into one reused float32 batch buffer, on a GPU (SAM)
    as one tensor operation on the device after a pinned uint8 transfer.
  - device (model on a GPU): `prepare` returns the decoded uint8 (H, W, 3) pixels as they
    are, so the threads only read and decode; `embed_prepared` uploads the images (uint8,
    pinned memory, non-blocking; those of one size together), resizes them there in float32
    (`resize_on_device`: PIL's two bilinear passes and their rounding as tensor operations),
    stacks the batch and applies the affine map. Its pixels are within 1 of the CPU
    route's but not bit-identical, so the cache key says which route made the features
    (`prep=fast-device`).
  The affine map is read off the checkpoint's processor itself (its output for constant
  black, white and grey images) and checked to be affine; a processor that is not falls
  back to `exact`. On both routes pixel values are within 1/255 of the exact path's and
  features' cosine >= 0.9999 (tests/test_extractors.py; the device route tested on CPU
  tensors).
- `exact`: `prepare(image)` returns the checkpoint processor's float32 (3, H, W) output
  (its resize and crop turned off as above), the reference the tests compare against.

`prepare` is thread-safe and needs no model, so worker.embeddings runs it in parallel threads
(decoding and torch's resize release the GIL) while the model works; `embed(images)` does
both.

Loading goes through `from_pretrained` only, `trust_remote_code` is never passed, and a
Hugging Face id's revision is resolved once to a commit hash that config, processor and
weights are all loaded from. Offline use: set HF_HUB_OFFLINE=1 with a filled HF cache, or
point `model.checkpoint` at a local folder written by `save_pretrained`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from worker.devices import resolve_device
from worker.errors import JobError
from worker.images import DECODE_VERSION, resize_square
from worker.job import EXTRACTOR_NAMES, ModelConfig

LOGGER = logging.getLogger("worker")

# Bump when the way a feature is computed changes: old cache entries then stop matching.
FEATURE_VERSION = 2  # 2: the model sees image_size (the processor no longer resizes)
DEFAULT_IMAGE_SIZE = 448  # the paper resizes every image to 448 x 448 first
DEFAULT_PROMPT = "line structures"  # the paper's CLIPSeg prompt (crack / line segmentation)
AUTO_CPU_BATCH = 32  # model.batch_size auto on the CPU
AUTO_MAX_BATCH = 512  # model.batch_size auto on a GPU: at most this many images per batch
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # config.model_type a checkpoint must have
    checkpoint: str  # the paper's checkpoint
    model_class: str  # transformers class name
    poolings: tuple[str, ...]
    feature: str  # what "flatten" returns, for report.json


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "sam",
            "sam",
            "facebook/sam-vit-base",
            "SamModel",
            ("flatten", "mean"),
            "image embeddings (get_image_embeddings)",
        ),
        Family(
            "clipseg",
            "clipseg",
            "CIDAS/clipseg-rd64-refined",
            "CLIPSegForImageSegmentation",
            ("flatten", "mean", "cls"),
            "decoder hidden states with the prompt, concatenated",
        ),
        Family(
            "efficientnet",
            "efficientnet",
            "google/efficientnet-b3",
            "EfficientNetModel",
            ("flatten",),
            "pooler_output",
        ),
        Family(
            "clip",
            "clip",
            "openai/clip-vit-base-patch32",
            "CLIPModel",
            ("flatten",),
            "projected image embedding (get_image_features)",
        ),
        Family(
            "dinov2",
            "dinov2",
            "facebook/dinov2-base",
            "Dinov2Model",
            ("flatten", "mean", "cls"),
            "last_hidden_state",
        ),
        Family(
            "convnextv2",
            "convnextv2",
            "facebook/convnextv2-tiny-1k-224",
            "ConvNextV2Model",
            ("flatten", "mean"),
            "last_hidden_state",
        ),
        Family(
            "swinv2",
            "swinv2",
            "microsoft/swinv2-tiny-patch4-window8-256",
            "Swinv2Model",
            ("flatten", "mean"),
            "last_hidden_state",
        ),
    )
}

# job.EXTRACTOR_NAMES is the one list of extractor names; the families here must match it.
_HF_NAMES = {n for n in EXTRACTOR_NAMES if n not in ("hog", "precomputed", "trained")}
if set(FAMILIES) != _HF_NAMES:  # pragma: no cover - a programming error caught at import
    raise RuntimeError(f"extractor families {sorted(FAMILIES)} != job names {sorted(_HF_NAMES)}")

_POOLING_HELP = {
    "efficientnet": "its feature (pooler_output) is already one vector per image",
    "clip": "its feature (the projected image embedding) is already one vector per image",
    "sam": "SAM image embeddings are a spatial grid without a CLS token",
    "convnextv2": "ConvNeXtV2 features are a spatial grid without a CLS token",
    "swinv2": "SwinV2 tokens have no CLS token",
}


# ----------------------------------------------------------------------------- device, dtype


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto -> bfloat16 on a GPU that supports it, float32 otherwise."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


# ----------------------------------------------------------------------------- loading


def _is_local(checkpoint: str) -> bool:
    return os.path.isdir(checkpoint) or checkpoint.startswith(("/", "./", "../", "~", "."))


def _offline_hint(checkpoint: str) -> str:
    return (
        "If this machine has no internet, download the model once elsewhere "
        f"(hf download {checkpoint}) and run with HF_HUB_OFFLINE=1 and the same HF_HOME, "
        "or save it with save_pretrained and set model.checkpoint to that local folder"
    )


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the names and contents of a checkpoint folder's top-level files.

    Local checkpoints have no commit hash; this makes the cache key change when the weights,
    config or processor in the folder change (and not when the folder moves).
    """
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):  # noqa: B023
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _resolve_commit(checkpoint: str, revision: str | None) -> tuple[str | None, str | None]:
    """(revision to load with, commit hash or None) for a Hugging Face id (best effort)."""
    try:
        from transformers.utils.hub import resolve_revision

        resolved = resolve_revision(checkpoint, revision)
    except Exception:  # noqa: BLE001 - best effort; the load reports real problems
        return revision, (revision if revision and _COMMIT_RE.match(revision) else None)
    commit = getattr(resolved, "resolved", None)
    if commit is None and resolved and _COMMIT_RE.match(str(resolved)):
        commit = str(resolved)
    return resolved, commit


def _load_error(checkpoint: str, what: str, err: Exception) -> JobError:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
    return JobError(
        f"model.checkpoint {checkpoint!r}: cannot load the {what} ({err.__class__.__name__}: "
        f"{detail[:300]}). {_offline_hint(checkpoint)}"
    )


# ----------------------------------------------------------------------------- extractor


class HFExtractor:
    """One loaded transformers model, its processor and the feature it returns."""

    def __init__(self, cfg: ModelConfig) -> None:
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoProcessor

        if cfg.name not in FAMILIES:
            raise JobError(
                f"model.name: {cfg.name!r} is not a transformers family; "
                f"use one of {', '.join(FAMILIES)}"
            )
        fam = FAMILIES[cfg.name]
        self.family = fam
        self.pooling = cfg.pooling or "flatten"
        if self.pooling not in fam.poolings:
            why = _POOLING_HELP.get(fam.name, "")
            raise JobError(
                f"model.pooling: {self.pooling!r} does not apply to {fam.name}"
                f"{f' ({why})' if why else ''}; use {' or '.join(fam.poolings)}"
            )
        if cfg.prompt is not None and fam.name != "clipseg":
            raise JobError(
                f"model.prompt: only clipseg takes a text prompt, not {fam.name}; remove 'prompt'"
            )
        self.prompt = (cfg.prompt or DEFAULT_PROMPT) if fam.name == "clipseg" else None
        self.image_size = cfg.image_size or DEFAULT_IMAGE_SIZE
        self.num_workers = cfg.num_workers
        self.device = resolve_device(cfg.device, "model.device")
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        checkpoint = cfg.checkpoint or fam.checkpoint

        # Where the weights come from, and what identifies them in the cache key.
        if _is_local(checkpoint):
            folder = Path(checkpoint).expanduser()
            if not folder.is_dir():
                raise JobError(
                    f"model.checkpoint: local folder {checkpoint!r} not found; give a folder "
                    "written by save_pretrained (config.json, weights, preprocessor_config.json) "
                    "or a Hugging Face id"
                )
            source = str(folder.resolve())
            load_revision, commit = None, None
            try:
                model_id = "local:" + folder_fingerprint(folder)
            except OSError as err:
                raise JobError(
                    f"model.checkpoint {checkpoint!r}: cannot read the folder: {err}"
                ) from None
        else:
            source = checkpoint
            load_revision, commit = _resolve_commit(checkpoint, cfg.revision)
            model_id = f"hf:{checkpoint}@{commit or cfg.revision or 'main'}"
        kw = {"revision": load_revision} if load_revision is not None else {}

        try:
            config = AutoConfig.from_pretrained(source, **kw)
        except Exception as err:  # noqa: BLE001 - hub, OS, JSON and remote-code errors alike
            raise _load_error(checkpoint, "model config", err) from None
        model_type = getattr(config, "model_type", None)
        if model_type != fam.model_type:
            raise JobError(
                f"model.checkpoint {checkpoint!r} is a {model_type!r} model, but model.name is "
                f"{fam.name!r} (needs a {fam.model_type!r} checkpoint); fix name or checkpoint"
            )
        try:
            if fam.name == "clipseg":
                processor = AutoProcessor.from_pretrained(source, backend="pil", **kw)
                self.image_processor = processor.image_processor
                tokens = processor.tokenizer([self.prompt], return_tensors="pt")
            else:
                self.image_processor = AutoImageProcessor.from_pretrained(
                    source, backend="pil", **kw
                )
        except Exception as err:  # noqa: BLE001
            raise _load_error(
                checkpoint, "image processor (preprocessor_config.json)", err
            ) from None
        try:
            model_cls = getattr(transformers, fam.model_class)
            model = model_cls.from_pretrained(source, config=config, dtype=self.dtype, **kw)
        except Exception as err:  # noqa: BLE001
            raise _load_error(checkpoint, "model weights", err) from None
        self.model = model.to(self.device).eval()

        # What the model sees: image_size, or SAM's native input (fixed position embeddings).
        native = config.vision_config.image_size if fam.name == "sam" else None
        self.input_size = int(native or self.image_size)
        self.preprocess = cfg.preprocess
        self._affine = None
        if self.preprocess == "fast":
            self._affine = processor_affine(self.image_processor)
            if self._affine is None:
                LOGGER.warning(
                    "model.preprocess: the %s processor is not a per-channel affine map; "
                    "using the exact (processor) path",
                    fam.name,
                )
                self.preprocess = "exact"
        self._scale, self._shift = (
            (torch.from_numpy(a).to(self.device).view(1, 3, 1, 1) for a in self._affine)
            if self._affine is not None
            else (None, None)
        )
        # where the fast path resizes: in the loader threads (CPU) or on the GPU
        self._device_resize = resizes_on_device(
            self.device, self.preprocess, self.input_size, self.image_size
        )
        # decode JPEGs at a DCT scale that keeps image_size (worker.images.decode_image)
        self.decode_size = self.image_size if self.preprocess == "fast" else None
        # SAM's second resize (image_size square -> native input) uses its processor's filter
        self._native_resample = getattr(self.image_processor, "resample", None)
        if self._native_resample is None:
            self._native_resample = Image.Resampling.BILINEAR

        self._cond = None
        if fam.name == "clipseg":
            # The prompt is the same for every image: embed it once, reuse it per batch.
            with torch.inference_mode():
                tokens = {k: v.to(self.device) for k, v in tokens.items()}
                self._cond = self.model.get_conditional_embeddings(
                    batch_size=1,
                    input_ids=tokens["input_ids"],
                    attention_mask=tokens.get("attention_mask"),
                )

        self.revision = commit or cfg.revision
        self._model_id = model_id
        self.info = {
            "name": fam.name,
            "checkpoint": checkpoint,
            "revision": self.revision,
            "feature_dim": None,  # known after the first forward pass (see feature_dim)
            "pooling": self.pooling,
            "image_size": self.image_size,
            "input_size": self.input_size,
            "preprocess": self.preprocess,
            "resize_on": resize_route(self.preprocess, self._device_resize),
            "decode_size": self.decode_size,
            # the fast path's prepare takes decode_pixels' arrays (no PIL image in between)
            "decode_pixels": self.preprocess == "fast",
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "feature": fam.feature,
        }
        if self.prompt is not None:
            self.info["prompt"] = self.prompt
        if model_id.startswith("local:"):
            self.info["checkpoint_sha256"] = model_id.removeprefix("local:")
        self._lock = threading.Lock()
        self._buffer: np.ndarray | None = None  # the fast path's CPU input (_cpu_input)
        self.batch_size = cfg.batch_size if cfg.batch_size != "auto" else self._auto_batch_size()

    @property
    def cache_key(self) -> str:
        """What the features depend on: model, pooling, sizes, preparation (and its resize
        route: the device route's features are not bit-identical to the CPU route's), prompt,
        dtype, decoding."""
        prep = "fast-device" if self._device_resize else self.preprocess
        return "|".join(
            [
                f"hf-v{FEATURE_VERSION}",
                self.family.name,
                self._model_id,
                f"pool={self.pooling}",
                f"size={self.image_size}",
                f"input={self.input_size}",
                f"prep={prep}",
                f"prompt={self.prompt}" if self.prompt is not None else "prompt=",
                f"dtype={str(self.dtype).removeprefix('torch.')}",
                f"decode={DECODE_VERSION}",
            ]
        )

    # -- preparation (runs in worker threads) ------------------------------------------

    def prepare(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """One RGB image (PIL, or uint8 (H, W, 3) pixels from worker.images.decode_pixels)
        -> the model's input: on the fast path uint8 (3, H, W) pixels resized here, or on
        the device route the uint8 (H, W, 3) pixels as they are (resized on the device),
        normalised per batch in embed_prepared; float32 (3, H, W) on the exact path."""
        if self._device_resize:
            if isinstance(image, np.ndarray):
                return image
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if self.preprocess == "fast" and self.input_size == self.image_size:
                return resize_uint8(image, self.image_size)
            image = Image.fromarray(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.preprocess == "exact":
            return self.exact_input(resize_square(image, self.image_size))
        if self.input_size != self.image_size:  # SAM: its native input, two PIL resizes
            resized = resize_square(image, self.image_size)
            resized = resized.resize((self.input_size, self.input_size), self._native_resample)
            return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))
        return resize_uint8(np.asarray(image, dtype=np.uint8), self.image_size)

    def exact_input(self, resized: Image.Image) -> np.ndarray:
        """The checkpoint processor's output for an image already resized to image_size:
        its resize and crop turned off (SAM: its native resize and padding kept)."""
        if self.family.name == "sam":
            out = self.image_processor(images=[resized], return_tensors="np")
        else:
            out = self.image_processor(
                images=[resized],
                do_resize=False,
                do_center_crop=False,
                do_pad=False,
                return_tensors="np",
            )
        return np.ascontiguousarray(out["pixel_values"][0], dtype=np.float32)

    def _auto_batch_size(self) -> int:
        """model.batch_size auto: 32 on the CPU; on CUDA the largest power of two whose
        activations (measured on a probe batch of 2) fill at most half the free memory."""
        if self.device.type != "cuda":
            return AUTO_CPU_BATCH
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        probe = np.zeros((2, 3, self.input_size, self.input_size), dtype=np.uint8)
        self._forward(torch.from_numpy(probe).to(self.device))
        per_image = max((torch.cuda.max_memory_allocated(self.device) - before) / 2, 1)
        free, _ = torch.cuda.mem_get_info(self.device)
        fit = int(0.5 * free / per_image)
        return int(min(AUTO_MAX_BATCH, 2 ** max(0, fit.bit_length() - 1)))

    # -- forward (main thread) ----------------------------------------------------------

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) model input -> (B, d) feature, per family and pooling."""
        fam, pool, model = self.family.name, self.pooling, self.model
        if fam == "sam":
            emb = model.get_image_embeddings(pixel_values)  # (B, C, h, w)
            return emb.flatten(1) if pool == "flatten" else emb.mean(dim=(2, 3))
        if fam == "clipseg":
            cond = self._cond.expand(pixel_values.shape[0], -1)
            out = model(
                pixel_values=pixel_values,
                conditional_embeddings=cond,
                output_hidden_states=True,
                interpolate_pos_encoding=True,
            )
            states = out.decoder_output.hidden_states  # each (B, 1 + tokens, reduce_dim)
            if pool == "flatten":
                parts = [h.flatten(1) for h in states]
            elif pool == "mean":
                parts = [h[:, 1:].mean(dim=1) for h in states]
            else:
                parts = [h[:, 0] for h in states]
            return torch.cat(parts, dim=1)
        if fam == "efficientnet":
            return model(pixel_values=pixel_values).pooler_output.flatten(1)
        if fam == "clip":
            feats = model.get_image_features(
                pixel_values=pixel_values, interpolate_pos_encoding=True
            )
            if not isinstance(feats, torch.Tensor):  # transformers 5 returns an output object
                feats = feats.pooler_output
            return feats.flatten(1)
        if fam == "swinv2":
            hidden = model(pixel_values=pixel_values, interpolate_pos_encoding=True)
        else:  # dinov2 interpolates its position embeddings itself; convnextv2 is convolutional
            hidden = model(pixel_values=pixel_values)
        hidden = hidden.last_hidden_state
        if pool == "flatten":
            return hidden.flatten(1)
        if fam == "dinov2":
            return hidden[:, 1:].mean(dim=1) if pool == "mean" else hidden[:, 0]
        if fam == "convnextv2":  # (B, C, h, w)
            return hidden.mean(dim=(2, 3))
        return hidden.mean(dim=1)  # swinv2: (B, tokens, C)

    def _forward_input(self, batch: torch.Tensor) -> torch.Tensor:
        """A stacked batch on the device -> the model's float32 (B, C, H, W) input: uint8
        (B, 3, H, W) pixels get the processor's affine map as one tensor op; the exact
        path's float32 input passes as it is."""
        if batch.dtype != torch.uint8:
            return batch
        return batch.to(torch.float32).mul_(self._scale).add_(self._shift)

    def _cpu_input(self, inputs: list[np.ndarray]) -> torch.Tensor:
        """Fast-path uint8 (3, H, W) inputs -> the model's float32 (B, 3, H, W) input on the
        CPU: the affine map per image and channel plane (cache-sized, contiguous) into one
        reused buffer (no fresh pages per batch; 0.5 ms per 448 x 448 image against 2.1 ms
        for one batched op, benchmarks/RESULTS.md session 8). Call under self._lock."""
        n, shape, buf = len(inputs), inputs[0].shape, self._buffer
        if buf is None or buf.shape[1:] != shape or len(buf) < n:
            buf = self._buffer = np.empty((max(n, self.batch_size), *shape), np.float32)
        out = buf[:n]
        for img, dst in zip(inputs, out, strict=True):
            for c in range(3):
                np.multiply(img[c], self._affine[0][c], out=dst[c], dtype=np.float32)
                dst[c] += self._affine[1][c]
        return torch.from_numpy(out)

    def _list_input(self, inputs: list[np.ndarray]) -> torch.Tensor:
        """Fast-path inputs as `prepare` gives them -> the model's float32 (B, 3, H, W)
        input on the device: the device route's (H, W, 3) pixels resized there, then the
        affine map; the CPU route's planes by _cpu_input. Call under self._lock."""
        if self._device_resize:
            x = resize_on_device(inputs, self.image_size, self.device)
            return x.mul_(self._scale).add_(self._shift)
        return self._cpu_input(inputs)

    def _forward(self, batch: torch.Tensor | list[np.ndarray]) -> torch.Tensor:
        """A stacked batch on the device, or fast-path inputs (a list, _list_input) ->
        (B, d) float32 features on the CPU."""
        with self._lock, torch.inference_mode():
            x = self._list_input(batch) if isinstance(batch, list) else self._forward_input(batch)
            feats = self._features(x.to(dtype=self.dtype))
        return feats.float().cpu()

    def embed_prepared(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Prepared inputs (from `prepare`) -> (B, d) float32 features, in batches."""
        if not len(inputs):
            return np.zeros((0, self.info["feature_dim"] or 0), dtype=np.float32)
        chunks = []
        for start in range(0, len(inputs), self.batch_size):
            part = inputs[start : start + self.batch_size]
            on_list = self._device_resize or self.device.type == "cpu"
            if on_list and part[0].dtype == np.uint8:
                chunks.append(self._forward(list(part)).numpy())
                continue
            batch = torch.from_numpy(np.stack(part))
            if self.device.type == "cuda":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            chunks.append(self._forward(batch).numpy())
        out = np.concatenate(chunks, axis=0)
        self.info["feature_dim"] = int(out.shape[1])
        return out

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """RGB PIL images -> (B, d) float32 features."""
        return self.embed_prepared([self.prepare(im) for im in images])

    @property
    def feature_dim(self) -> int:
        """The feature width; runs one forward pass on a black image if none has run yet."""
        if self.info["feature_dim"] is None:
            self.embed([Image.new("RGB", (self.image_size, self.image_size))])
        return int(self.info["feature_dim"])


def resize_uint8(pixels: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, size, size) uint8, bilinear with PIL's antialiasing, by torch's
    uint8 kernel (about 2.5 times PIL's speed, releases the GIL; within 1 of PIL's values,
    tests/test_extractors.py). The kernel reads channels-last and writes channel planes, the
    layout the model's input takes: no transpose on either side."""
    if pixels.shape[:2] == (size, size):
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))
    if not pixels.flags.writeable:  # torch.from_numpy warns on read-only arrays (PIL's)
        pixels = pixels.copy()
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]  # channels-last memory
    with torch.inference_mode():
        out = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return np.ascontiguousarray(out[0].numpy())


def resizes_on_device(
    device: torch.device, preprocess: str, input_size: int, image_size: int
) -> bool:
    """Whether the fast path resizes on the model's device (resize_on_device) rather than
    in the loader threads (resize_uint8): on a GPU, unless the model's input is not the
    image_size square (SAM's native input keeps its two PIL resizes)."""
    return device.type == "cuda" and preprocess == "fast" and input_size == image_size


def resize_route(preprocess: str, on_device: bool) -> str | None:
    """report.json's model.resize_on: where the fast path resizes, "device" (the model's GPU)
    or "cpu" (the loader threads); None for the exact path (the processor's own)."""
    if preprocess != "fast":
        return None
    return "device" if on_device else "cpu"


#: resize_on_device turns at most this many pixels into float32 at once (200 MB with the
#: first pass's output), however many images of one size a batch has
DEVICE_RESIZE_PIXELS = 1 << 24


def resize_on_device(pixels: list[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) images of any sizes -> float32 (B, 3, size, size) on `device` in the
    input order, integer values in [0, 255]. Images of one size go together (at most
    DEVICE_RESIZE_PIXELS pixels at a time): copied into one (pinned, on CUDA) uint8 buffer,
    uploaded non-blocking, resized there and written into their rows of the batch.

    The resize is PIL's bilinear as PIL computes it, in float32 tensor operations: torch's
    antialiased bilinear filter (PIL's weights) across the width, rounded half up to whole
    values, then across the height, rounded again (PIL's two passes and their 8-bit rounding).
    One unrounded 2-D pass is within 1 of PIL too, but its sub-unit offsets on every pixel
    moved tiny models' features to cosine 0.9993; this stays within 1 of PIL, as
    resize_uint8 does, and at cosine >= 0.9999 (tests/test_extractors.py)."""
    out = torch.empty((len(pixels), 3, size, size), dtype=torch.float32, device=device)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for row, img in enumerate(pixels):
        by_shape.setdefault(img.shape, []).append(row)
    for (height, width, _), rows in by_shape.items():
        step = max(1, DEVICE_RESIZE_PIXELS // (height * width))
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            host = torch.empty(
                (len(chunk), height, width, 3),
                dtype=torch.uint8,
                pin_memory=device.type == "cuda",
            )
            staged = host.numpy()
            for j, row in enumerate(chunk):
                staged[j] = pixels[row]
            x = host.to(device, non_blocking=True).permute(0, 3, 1, 2)
            x = x.to(torch.float32, memory_format=torch.contiguous_format)  # NCHW planes
            for shape, changes in (((height, size), width != size), ((size, size), height != size)):
                if changes:
                    x = torch.nn.functional.interpolate(
                        x, size=shape, mode="bilinear", antialias=True, align_corners=False
                    )
                    x = x.add_(0.5).floor_()
            for j, row in enumerate(chunk):
                out[row].copy_(x[j])
    return out


def processor_affine(processor) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift), float32 (3,) each, with processor(x) == scale * x + shift per channel
    for uint8 pixels x (rescale, normalise, offsets), read off the processor's own output for
    black, white and grey images with its resize, crop and padding off; None when the
    processor is not such a map (the grey image does not fit within 1e-5)."""
    probes = [Image.new("RGB", (4, 4), (v, v, v)) for v in (0, 255, 97)]
    try:
        out = processor(
            images=probes, do_resize=False, do_center_crop=False, do_pad=False, return_tensors="np"
        )["pixel_values"]
    except Exception:  # noqa: BLE001 - a processor that refuses these options
        return None
    out = np.asarray(out, dtype=np.float64)
    if out.shape != (3, 3, 4, 4) or not np.isfinite(out).all():
        return None
    black, white, grey = out[:, :, 0, 0]
    scale = (white - black) / 255.0
    if not np.allclose(out, out[:, :, :1, :1], atol=1e-6):  # not per-pixel
        return None
    if not np.allclose(black + 97.0 * scale, grey, atol=1e-5):
        return None
    return scale.astype(np.float32), black.astype(np.float32)


def build(cfg: ModelConfig) -> HFExtractor:
    """The extractor a job's `model:` names (sam, clipseg, efficientnet, clip, dinov2, ...)."""
    return HFExtractor(cfg)
