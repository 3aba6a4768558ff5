"""Binary segmentation models for the adaptation runs (docs/method.md §5.1).

Four kinds, behind one wrapper (`Segmenter`):

- `unet`: a small plain-torch UNet (no download); `width` channels at full resolution, doubled
  at each of `depth` poolings, GroupNorm + ReLU, bilinear upsampling in the decoder.
- `unetplusplus`: UNet++ (Zhou et al. 2018, nested dense skip pathways) on an EfficientNet
  encoder: transformers' `EfficientNetModel` with `output_hidden_states=True`, the last hidden
  state at each stride 2, 4, 8, 16, 32 as the five encoder scales X^{i,0}; decoder nodes
  X^{i,j} = conv([X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1})]); the 1-logit head reads X^{0,4}
  (stride 2) and is upsampled bilinearly to the input size. Encoder weights from a local
  EfficientNet folder (`encoder`), or a whole trained model (`.pt` of save_segmenter).
- `segformer`: transformers' `SegformerForSemanticSegmentation` loaded with `from_pretrained`
  (e.g. nvidia/mit-b0, or a local folder). A checkpoint with 1 label gives the crack logit
  directly; with 2 labels the logit is l1 - l0 (so sigmoid equals softmax's class-1 probability);
  any other label count (an ImageNet encoder such as mit-b0) gets a fresh 1-label decode head.
- `upernet`: transformers' `UperNetForSemanticSegmentation` (PSP + FPN decoder) on a ConvNeXt
  backbone: a whole checkpoint (label rule as for SegFormer), or ConvNeXt encoder weights from
  a local folder (`encoder`, a `ConvNextModel` / `ConvNextBackbone` folder) under a fresh
  1-label UperNet head; no auxiliary head.

`Segmenter.forward` takes RGB in [0, 1] (B, 3, H, W), normalises with the ImageNet mean/std
inside, and returns one logit map (B, 1, H, W) at the input size (lower-resolution logits are
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
from worker.images import DECODE_VERSION, resize_square

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINDS = ("unet", "unetplusplus", "segformer", "upernet")
UPP_DECODER = (16, 24, 32, 48, 64)  # UNet++ decoder channels per level (stride 2 .. 32)


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


def stride_indices(shapes: list[tuple[int, int]], size: int, levels: int = 5) -> list[int]:
    """Indices of the hidden states that are the stage outputs at strides 2, 4, ..., 2**levels:
    for each stride, the last hidden state whose height is ceil(size / stride)."""
    out = []
    for level in range(1, levels + 1):
        want = -(-size // 2**level)
        hits = [k for k, (h, _) in enumerate(shapes) if h == want]
        if not hits:
            raise ValueError(
                f"the encoder has no feature map at stride {2**level} for {size}x{size} inputs "
                f"(heights {[h for h, _ in shapes]})"
            )
        out.append(hits[-1])
    return out


class UNetPlusPlus(nn.Module):
    """UNet++ on a transformers EfficientNetModel: five encoder scales X^{i,0} (strides 2..32),
    nested decoder nodes X^{i,j} (i + j <= 4), one logit from X^{0,4} at stride 2."""

    def __init__(self, encoder: nn.Module, decoder: tuple[int, ...] = UPP_DECODER) -> None:
        super().__init__()
        self.encoder = encoder
        self.levels = len(decoder)
        enc = self._encoder_channels()
        self.encoder_channels = enc
        self.decoder_channels = tuple(int(c) for c in decoder)
        self.nodes = nn.ModuleDict()
        for j in range(1, self.levels):
            for i in range(self.levels - j):
                below = enc[i + 1] if j == 1 else self.decoder_channels[i + 1]
                cin = enc[i] + (j - 1) * self.decoder_channels[i] + below
                self.nodes[f"{i}_{j}"] = _DoubleConv(cin, self.decoder_channels[i])
        self.head = nn.Conv2d(self.decoder_channels[0], 1, 1)

    @torch.no_grad()
    def _probe(self, size: int = 64) -> list[torch.Tensor]:
        was = self.encoder.training
        self.encoder.eval()
        out = self.encoder(torch.zeros(1, 3, size, size), output_hidden_states=True)
        self.encoder.train(was)
        return list(out.hidden_states)

    def _encoder_channels(self) -> list[int]:
        hidden = self._probe()
        idx = stride_indices([tuple(h.shape[-2:]) for h in hidden], 64, self.levels)
        return [int(hidden[k].shape[1]) for k in idx]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five encoder scales, finest (stride 2) first."""
        hidden = self.encoder(x, output_hidden_states=True).hidden_states
        idx = stride_indices([tuple(h.shape[-2:]) for h in hidden], x.shape[-2], self.levels)
        return [hidden[k] for k in idx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid: dict[tuple[int, int], torch.Tensor] = {}
        for i, f in enumerate(self.encode(x)):
            grid[(i, 0)] = f
        for j in range(1, self.levels):
            for i in range(self.levels - j):
                same = [grid[(i, k)] for k in range(j)]
                up = F.interpolate(
                    grid[(i + 1, j - 1)],
                    size=same[0].shape[-2:],
                    mode="bilinear",
                    align_corners=False,
                )
                grid[(i, j)] = self.nodes[f"{i}_{j}"](torch.cat([*same, up], dim=1))
        logits = self.head(grid[(0, self.levels - 1)])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


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
        if self.kind in ("unet", "unetplusplus"):
            return self.net(z)
        logits = self.net(pixel_values=z).logits
        if logits.shape[1] == 2:
            logits = logits[:, 1:2] - logits[:, 0:1]
        elif logits.shape[1] != 1:
            raise ValueError(f"{self.kind} head has {logits.shape[1]} labels; expected 1 or 2")
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def encoder_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps, one per scale, finest first."""
        z = self._normalise(x)
        if self.kind in ("unet", "unetplusplus"):
            return self.net.encode(z)
        if self.kind == "upernet":
            return list(self.net.backbone(z).feature_maps)
        out = self.net.segformer(pixel_values=z, output_hidden_states=True)
        return [h for h in out.hidden_states if h.dim() == 4]

    @property
    def feature_dim(self) -> int:
        if self.kind == "unet":
            return int(sum(self.net.channels))
        if self.kind == "unetplusplus":
            return int(sum(self.net.encoder_channels))
        if self.kind == "upernet":
            return int(sum(self.net.backbone.channels))
        return int(sum(self.net.config.hidden_sizes))

    @property
    def parameters_count(self) -> int:
        return int(sum(p.numel() for p in self.parameters()))


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


def _load_error(field: str, what: str, where: str, err: Exception, hint: str) -> JobError:
    first = str(err).splitlines()[0] if str(err) else ""
    return JobError(
        f"{field}: cannot load {what} {where!r} ({err.__class__.__name__}: {first}); {hint}"
    )


def _label_kwargs(num_labels: int) -> dict:
    """A head with 1 or 2 labels is kept; any other count gets a fresh 1-label head."""
    if num_labels in (1, 2):
        return {}
    return {"num_labels": 1, "ignore_mismatched_sizes": True}


def build_segformer(
    checkpoint: str,
    seed: int = 0,
    revision: str | None = None,
    *,
    encoder_only: bool = False,
    field: str = "adaptation.checkpoint",
) -> Segmenter:
    """SegFormer from a hub name or local folder; the decode head gets 1 label unless the
    checkpoint already has 1 or 2 (`encoder_only`: always a fresh 1-label head). Raises JobError
    naming `field` on failure."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    try:
        config = SegformerConfig.from_pretrained(checkpoint, revision=revision)
        kwargs = _label_kwargs(0 if encoder_only else config.num_labels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a fresh decode head is initialised from the seed
            model = SegformerForSemanticSegmentation.from_pretrained(
                checkpoint, revision=revision, **kwargs
            )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _load_error(
            field,
            "SegFormer",
            checkpoint,
            err,
            "give a transformers SegFormer checkpoint name or a local folder",
        ) from None
    return Segmenter("segformer", model, {"config": model.config.to_json_string()})


def _upp_spec(encoder_config, decoder: tuple[int, ...]) -> dict:
    return {"encoder_config": encoder_config.to_json_string(), "decoder": list(decoder)}


def build_unetplusplus(
    encoder: str,
    seed: int = 0,
    *,
    decoder: tuple[int, ...] = UPP_DECODER,
    field: str = "adaptation.models[].encoder",
) -> Segmenter:
    """UNet++ on the EfficientNet encoder in a local folder (or hub name); the decoder is
    initialised from `seed`. Raises JobError naming `field` when the encoder cannot load."""
    from transformers import EfficientNetModel

    try:
        enc = EfficientNetModel.from_pretrained(encoder)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _load_error(
            field,
            "EfficientNet encoder",
            encoder,
            err,
            "give a folder saved by transformers' EfficientNetModel (e.g. google/efficientnet-b3)",
        ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = UNetPlusPlus(enc, decoder)
    return Segmenter("unetplusplus", net, _upp_spec(enc.config, decoder))


def _upernet_hidden(backbone_config) -> int:
    """UperNet's decoder width from the backbone: 4 x its first stage width, within 32..512."""
    first = int(getattr(backbone_config, "hidden_sizes", [128])[0])
    return int(min(512, max(32, 4 * first)))


def build_upernet(
    checkpoint: str | None = None,
    encoder: str | None = None,
    seed: int = 0,
    *,
    field: str = "adaptation.models[]",
) -> Segmenter:
    """UperNet: a whole `UperNetForSemanticSegmentation` checkpoint (folder or hub name), or a
    backbone folder (`encoder`: ConvNeXt, or any transformers backbone) under a fresh 1-label
    UperNet head (no auxiliary head), initialised from `seed`."""
    from transformers import (
        MODEL_FOR_BACKBONE_MAPPING,
        AutoConfig,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    if checkpoint is not None:
        try:
            config = UperNetConfig.from_pretrained(checkpoint)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = UperNetForSemanticSegmentation.from_pretrained(
                    checkpoint, **_label_kwargs(config.num_labels)
                )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise _load_error(
                f"{field}.checkpoint",
                "UperNet",
                checkpoint,
                err,
                "give a transformers UperNetForSemanticSegmentation folder "
                "(e.g. openmmlab/upernet-convnext-tiny)",
            ) from None
        return Segmenter("upernet", model, {"config": model.config.to_json_string()})
    try:
        bcfg = AutoConfig.from_pretrained(encoder)
        stages = list(getattr(bcfg, "stage_names", []))[1:]
        if not stages:
            raise ValueError("the encoder config names no stages (not a backbone)")
        if type(bcfg) not in MODEL_FOR_BACKBONE_MAPPING:
            raise ValueError(f"no transformers backbone for model type {bcfg.model_type!r}")
        # the backbone class itself: AutoBackbone asks the hub whether the name exists
        backbone_cls = MODEL_FOR_BACKBONE_MAPPING[type(bcfg)]
        backbone = backbone_cls.from_pretrained(encoder, out_features=stages)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _load_error(
            f"{field}.encoder",
            "UperNet backbone",
            str(encoder),
            err,
            "give a local ConvNeXt folder (transformers ConvNextModel or ConvNextBackbone)",
        ) from None
    bcfg = backbone.config
    config = UperNetConfig(
        backbone_config=bcfg.to_dict(),
        hidden_size=_upernet_hidden(bcfg),
        num_labels=1,
        use_auxiliary_head=False,
    )
    config.backbone_config = type(bcfg).from_dict(bcfg.to_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UperNetForSemanticSegmentation(config)
    model.backbone.load_state_dict(backbone.state_dict())
    return Segmenter("upernet", model, {"config": model.config.to_json_string()})


def build_segmenter(
    kind: str,
    checkpoint: str | None = None,
    *,
    encoder: str | None = None,
    width: int = 16,
    depth: int = 3,
    seed: int = 0,
    field: str = "adaptation",
) -> Segmenter:
    """One architecture of the job (`adaptation.model` / `models[]`) as a fresh (seeded)
    Segmenter. A `checkpoint` ending in .pt is a whole model written by output.save_checkpoints
    (any kind); `encoder` loads encoder weights only. `field` names the job entry in errors."""
    if checkpoint is not None and checkpoint.endswith(".pt"):
        try:
            model = load_segmenter(checkpoint)
        except (OSError, RuntimeError, KeyError, ValueError) as err:
            raise _load_error(
                f"{field}.checkpoint",
                "segmenter",
                checkpoint,
                err,
                "give a .pt file written by output.save_checkpoints",
            ) from None
        if model.kind != kind:
            raise JobError(
                f"{field}.checkpoint: {checkpoint} holds a {model.kind!r} model, not {kind!r}; "
                "fix the name or the checkpoint"
            )
        return model
    if kind == "unet":
        if checkpoint is not None:
            raise JobError(
                f"{field}.checkpoint: model 'unet' takes a .pt written by output.save_checkpoints"
            )
        return build_unet(width=width, depth=depth, seed=seed)
    if kind == "unetplusplus":
        source = encoder or checkpoint
        if not source:
            raise JobError(
                f"{field}.encoder: model 'unetplusplus' needs EfficientNet encoder weights "
                "(a local transformers EfficientNetModel folder, e.g. google/efficientnet-b3) "
                "or a .pt checkpoint"
            )
        key = "encoder" if encoder else "checkpoint"
        return build_unetplusplus(source, seed=seed, field=f"{field}.{key}")
    if kind == "segformer":
        if not (checkpoint or encoder):
            raise JobError(
                f"{field}.checkpoint: model 'segformer' needs a checkpoint "
                "(e.g. nvidia/mit-b0 or a local folder)"
            )
        key = "checkpoint" if checkpoint else "encoder"
        return build_segformer(
            checkpoint or encoder,
            seed=seed,
            encoder_only=encoder is not None,
            field=f"{field}.{key}",
        )
    if kind == "upernet":
        if not (checkpoint or encoder):
            raise JobError(
                f"{field}.checkpoint: model 'upernet' needs a checkpoint (a transformers UperNet "
                "folder) or encoder weights (a local ConvNeXt folder)"
            )
        return build_upernet(checkpoint, encoder, seed=seed, field=field)
    raise JobError(f"{field}.model: unknown model {kind!r}; use one of {', '.join(KINDS)}")


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
    if kind == "unetplusplus":
        from transformers import EfficientNetConfig, EfficientNetModel

        config = EfficientNetConfig.from_dict(json.loads(spec["encoder_config"]))
        with torch.random.fork_rng(devices=[]):
            net = UNetPlusPlus(EfficientNetModel(config), tuple(spec["decoder"]))
        return Segmenter("unetplusplus", net, spec)
    if kind == "upernet":
        from transformers import UperNetConfig, UperNetForSemanticSegmentation

        config = UperNetConfig.from_dict(json.loads(spec["config"]))
        with torch.random.fork_rng(devices=[]):
            net = UperNetForSemanticSegmentation(config)
        return Segmenter("upernet", net, spec)
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
        self.cache_key = (
            f"trained-v1|{model.kind}|{label}|size={self.image_size}|w={digest}"
            f"|decode={DECODE_VERSION}"
        )
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
