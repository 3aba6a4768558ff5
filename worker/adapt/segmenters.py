"""Binary segmentation models for the adaptation runs (DESIGN.md section 4).

Two kinds, behind one wrapper (`Segmenter`):

- `unet`: a small plain-torch UNet (no download); `width` channels at full resolution, doubled
  at each of `depth` poolings, GroupNorm + ReLU, bilinear upsampling in the decoder.
- `segformer`: transformers' `SegformerForSemanticSegmentation` loaded with `from_pretrained`
  (e.g. nvidia/mit-b0, or a local folder). A checkpoint with 1 label gives the crack logit
  directly; with 2 labels the logit is l1 - l0 (so sigmoid equals softmax's class-1 probability);
  any other label count (an ImageNet encoder such as mit-b0) gets a fresh 1-label decode head.

`Segmenter.forward` takes RGB in [0, 1] (B, 3, H, W), normalises with the ImageNet mean/std
inside, and returns one logit map (B, 1, H, W) at the input size (SegFormer's H/4 logits are
upsampled bilinearly). `encoder_features` global-average-pools every encoder scale and
concatenates them (the paper's multi-scale features of the task model); `TrainedEncoderExtractor`
wraps that as a feature extractor (`.info`, `.cache_key`, `.embed(list[PIL])`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from worker.errors import JobError
from worker.images import resize_square

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINDS = ("unet", "segformer")


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(cout), cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(cout), cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """A plain UNet: encoder of depth+1 scales, decoder with skip connections, 1 logit out."""

    def __init__(self, width: int = 16, depth: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError("UNet width and depth must be positive")
        chans = [width * 2**i for i in range(depth + 1)]
        self.channels = chans
        self.down = nn.ModuleList(
            [_DoubleConv(in_channels, chans[0])]
            + [_DoubleConv(chans[i - 1], chans[i]) for i in range(1, depth + 1)]
        )
        self.reduce = nn.ModuleList(
            [nn.Conv2d(chans[i], chans[i - 1], 1) for i in range(depth, 0, -1)]
        )
        self.up = nn.ModuleList(
            [_DoubleConv(2 * chans[i - 1], chans[i - 1]) for i in range(depth, 0, -1)]
        )
        self.head = nn.Conv2d(chans[0], 1, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encode(x)
        y = feats[-1]
        for reduce, up, skip in zip(self.reduce, self.up, feats[-2::-1], strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = up(torch.cat([reduce(y), skip], dim=1))
        return self.head(y)


class Segmenter(nn.Module):
    """One binary segmentation model: RGB in [0, 1] -> one logit map at the input size."""

    def __init__(self, kind: str, net: nn.Module, spec: dict) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown segmenter kind {kind!r}; use one of {', '.join(KINDS)}")
        self.kind = kind
        self.net = net
        self.spec = dict(spec)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self._normalise(x)
        if self.kind == "unet":
            return self.net(z)
        logits = self.net(pixel_values=z).logits
        if logits.shape[1] == 2:
            logits = logits[:, 1:2] - logits[:, 0:1]
        elif logits.shape[1] != 1:
            raise ValueError(f"segformer head has {logits.shape[1]} labels; expected 1 or 2")
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def encoder_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps, one per scale, finest first."""
        z = self._normalise(x)
        if self.kind == "unet":
            return self.net.encode(z)
        out = self.net.segformer(pixel_values=z, output_hidden_states=True)
        return [h for h in out.hidden_states if h.dim() == 4]

    @property
    def feature_dim(self) -> int:
        if self.kind == "unet":
            return int(sum(self.net.channels))
        return int(sum(self.net.config.hidden_sizes))


def encoder_features(model: Segmenter, images: torch.Tensor) -> torch.Tensor:
    """(B, d) features: every encoder scale global-average-pooled, concatenated (finest first)."""
    maps = model.encoder_maps(images)
    return torch.cat([m.mean(dim=(-2, -1)) for m in maps], dim=1)


def build_unet(width: int = 16, depth: int = 3, seed: int = 0) -> Segmenter:
    """A fresh UNet, initialised from `seed` (the global torch RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = UNet(width=width, depth=depth)
    return Segmenter("unet", net, {"width": width, "depth": depth})


def build_segformer(checkpoint: str, seed: int = 0, revision: str | None = None) -> Segmenter:
    """SegFormer from a hub name or local folder; the decode head gets 1 label unless the
    checkpoint already has 1 or 2. Raises JobError naming adaptation.checkpoint on failure."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    try:
        config = SegformerConfig.from_pretrained(checkpoint, revision=revision)
        kwargs: dict = {}
        if config.num_labels not in (1, 2):
            kwargs = {"num_labels": 1, "ignore_mismatched_sizes": True}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a fresh decode head is initialised from the seed
            model = SegformerForSemanticSegmentation.from_pretrained(
                checkpoint, revision=revision, **kwargs
            )
    except (OSError, ValueError) as err:
        raise JobError(
            f"adaptation.checkpoint: cannot load SegFormer {checkpoint!r} "
            f"({err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "give a transformers SegFormer checkpoint name or a local folder"
        ) from None
    return Segmenter("segformer", model, {"config": model.config.to_json_string()})


def build_segmenter(
    kind: str, checkpoint: str | None = None, *, width: int = 16, depth: int = 3, seed: int = 0
) -> Segmenter:
    """The job's `adaptation.model` / `adaptation.checkpoint` as a fresh (seeded) Segmenter."""
    if kind == "unet":
        return build_unet(width=width, depth=depth, seed=seed)
    if kind == "segformer":
        if not checkpoint:
            raise JobError(
                "adaptation.checkpoint: model 'segformer' needs a checkpoint "
                "(e.g. nvidia/mit-b0 or a local folder)"
            )
        return build_segformer(checkpoint, seed=seed)
    raise JobError(f"adaptation.model: unknown model {kind!r}; use one of {', '.join(KINDS)}")


def _rebuild(kind: str, spec: dict) -> Segmenter:
    """An untrained Segmenter with the architecture in `spec` (no download)."""
    if kind == "unet":
        return build_unet(width=int(spec["width"]), depth=int(spec["depth"]))
    if kind == "segformer":
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        config = SegformerConfig.from_dict(json.loads(spec["config"]))
        with torch.random.fork_rng(devices=[]):
            net = SegformerForSemanticSegmentation(config)
        return Segmenter("segformer", net, spec)
    raise ValueError(f"unknown segmenter kind {kind!r}")


def segmenter_state(model: Segmenter) -> dict:
    """A torch.save-able dict that `segmenter_from_state` turns back into the same model."""
    return {"kind": model.kind, "spec": dict(model.spec), "state_dict": model.state_dict()}


def segmenter_from_state(state: dict) -> Segmenter:
    model = _rebuild(state["kind"], state["spec"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    return model


def save_segmenter(model: Segmenter, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = segmenter_state(model)
    state["state_dict"] = {k: v.detach().cpu() for k, v in state["state_dict"].items()}
    torch.save(state, tmp)
    tmp.replace(path)


def load_segmenter(path: str | Path) -> Segmenter:
    """A model saved by `save_segmenter`, on the CPU, in eval mode (no download)."""
    return segmenter_from_state(torch.load(path, map_location="cpu", weights_only=True))


def weights_digest(model: nn.Module) -> str:
    """A short content hash of a model's weights (changes whenever the features would)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def images_to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    """RGB PIL images -> (B, 3, size, size) float32 in [0, 1] (bilinear resize)."""
    arrays = [np.asarray(resize_square(im.convert("RGB"), size), dtype=np.float32) for im in images]
    if not arrays:
        return torch.zeros((0, 3, size, size), dtype=torch.float32)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() / 255.0


class TrainedEncoderExtractor:
    """The trained model's encoder as a feature extractor (`features_from_trained`)."""

    def __init__(
        self, model: Segmenter, image_size: int, label: str = "M", batch_size: int = 8
    ) -> None:
        self.model = model.eval()
        self.image_size = int(image_size)
        self.batch_size = max(1, int(batch_size))
        digest = weights_digest(model)
        self.cache_key = f"trained-v1|{model.kind}|{label}|size={self.image_size}|w={digest}"
        self.info = {
            "name": "trained",
            "checkpoint": f"{model.kind}:{label}",
            "revision": digest,
            "feature_dim": model.feature_dim,
            "pooling": "mean",
            "image_size": self.image_size,
        }

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.info["feature_dim"]), dtype=np.float32)
        out = []
        for start in range(0, len(images), self.batch_size):
            x = images_to_tensor(images[start : start + self.batch_size], self.image_size)
            x = x.to(next(self.model.parameters()).device)
            out.append(encoder_features(self.model, x).float().cpu().numpy().astype(np.float32))
        return np.concatenate(out, axis=0)
