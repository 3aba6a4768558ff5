"""Job sections for the output, the model and the datasets (worker/job.py)."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from worker.job_base import (
    DEFAULT_MIN_IMAGE_SIZE,
    EXTRACTOR_NAMES,
    MIN_IMAGE_SIZE,
    Strict,
    check_device,
    check_location,
    check_text,
)


class OutputConfig(Strict):
    """Where runs are published: a run store (worker/store.py) at `dir`, a folder or s3://."""

    dir: str = "out"
    save_checkpoints: bool = False
    # Keep the newest N complete runs in <dir>/runs/; older ones are pruned after a successful
    # publish (never the new run, never the one `latest` names). None keeps every run.
    keep: int | None = Field(default=None, ge=1)

    _dir = field_validator("dir")(classmethod(lambda cls, v: check_location(v)))


class ReduceConfig(Strict):
    """A seeded sparse random projection (Johnson-Lindenstrauss) of the features to `dims`
    values, applied as they are embedded (or loaded, for precomputed) and cached so."""

    method: Literal["random"] = "random"
    dims: int = Field(default=4096, ge=1, le=1_000_000)
    seed: int = Field(default=0, ge=0)


class ModelConfig(Strict):
    """A feature extractor. `name` is a registry name (see EXTRACTOR_NAMES)."""

    name: str = "hog"
    checkpoint: str | None = None
    revision: str | None = None
    pooling: Literal["flatten", "mean", "cls"] | None = None
    prompt: str | None = None
    image_size: int | None = Field(default=None, ge=8, le=4096)
    #: images per forward pass; auto: 32 on the CPU, from the GPU's free memory on CUDA
    batch_size: Annotated[int, Field(ge=1, le=4096)] | Literal["auto"] = 32
    #: fast: resize in threads, the processor's rescale and normalisation as one tensor op
    #: per batch on the device; exact: the checkpoint's own processor per image (reference)
    preprocess: Literal["fast", "exact"] = "fast"
    #: optional seeded sparse random projection of every feature vector (worker/reduce.py)
    reduce: ReduceConfig | None = None
    #: decode threads; auto: one per usable core, at most 8 (embeddings.default_num_workers)
    num_workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = "auto"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @field_validator("name")
    @classmethod
    def _known_name(cls, v: str) -> str:
        if v not in EXTRACTOR_NAMES:
            raise ValueError(f"unknown extractor {v!r}; use one of {', '.join(EXTRACTOR_NAMES)}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("checkpoint", "revision", "prompt")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return check_text(v)

    @model_validator(mode="after")
    def _image_size(self) -> ModelConfig:
        low = MIN_IMAGE_SIZE.get(self.name, DEFAULT_MIN_IMAGE_SIZE)
        if self.image_size is not None and self.name != "precomputed" and self.image_size < low:
            raise ValueError(
                f"image_size {self.image_size} is too small for {self.name!r}: use at least {low}"
            )
        return self

    @property
    def label(self) -> str:
        """A short name for the report: the extractor name, plus the checkpoint if set."""
        return self.name if not self.checkpoint else f"{self.name} ({self.checkpoint})"


class PcaConfig(Strict):
    dims: int | None = Field(default=25, ge=1)
    sweep: list[int] = Field(default_factory=lambda: [5, 10, 15, 20, 25])
    route: Literal["auto", "exact", "gram", "covariance", "randomized"] = "auto"
    #: datasets.matrix only: one PCA over every dataset instead of one per pair (large K)
    shared: bool = False

    @field_validator("sweep")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(d < 1 for d in v):
            raise ValueError("every sweep dimension must be a positive integer")
        return sorted(set(v))


class FramesConfig(Strict):
    """How frames are sampled from the videos of a dataset folder (worker/sources/samples.py):
    `every_s` seconds (the first frame at or after each multiple) or `every_n` frames, then at
    most `max_per_video` of them spread evenly over the video."""

    every_s: float | None = Field(default=None, gt=0, le=86_400)
    every_n: int | None = Field(default=None, ge=1, le=10_000_000)
    max_per_video: int | None = Field(default=None, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _one_rule(self) -> FramesConfig:
        if self.every_s is not None and self.every_n is not None:
            raise ValueError("give one of 'every_s' or 'every_n', not both")
        if self.every_s is None and self.every_n is None:
            self.every_s = 1.0
        return self


class CropConfig(Strict):
    """How boxes become crops: each side grows by `padding` times the box's width / height;
    boxes whose clipped width or height is below `min_size` pixels are left out by this
    setting (a warning; not counted as skipped images)."""

    padding: float = Field(default=0.1, ge=0, le=10)
    min_size: int = Field(default=16, ge=1, le=100_000)


class DatasetConfig(Strict):
    name: str = Field(min_length=1, max_length=100)
    path: str | None = None
    embeddings: str | None = None
    masks: str | None = None
    # folder or s3:// prefix of 8-bit PNG probability maps (one per mask, same stem) from the
    # user's own model; scored against `masks` like `python -m worker evaluate` (worker.estimate)
    predictions: str | None = None
    select: bool = True
    #: video files in `path` are sampled into frames (default every_s: 1.0 when unset)
    frames: FramesConfig | None = None
    #: a COCO .json file or a folder of YOLO .txt files: each box becomes a crop sample
    boxes: str | None = None
    crop: CropConfig | None = None
    #: images (whole images and video frames), crops (one sample per box), or both: two
    #: secondaries, `<name>` and `<name>/crops`; default: crops when `boxes` is given
    samples: Literal["images", "crops", "both"] | None = None
    #: secondaries only: a group label; report.json `groups` compares the groups
    group: str | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if any(c in v for c in "/\\\0") or v in (".", ".."):
            raise ValueError("dataset names may not contain '/', '\\' or NUL")
        if v == "*":
            raise ValueError("'*' is reserved (a gate's 'every dataset'); choose another name")
        if v != v.strip():
            raise ValueError(f"dataset name {v!r} starts or ends with white space; remove it")
        if any(unicodedata.category(c) in ("Cc", "Cs") for c in v):
            raise ValueError(f"dataset name {v!r} contains a control or invalid character")
        return v

    @field_validator("path", "embeddings", "masks", "boxes")
    @classmethod
    def _location(cls, v: str | None) -> str | None:
        return check_location(v)

    @property
    def sample_mode(self) -> str:
        """images, crops or both: what the dataset's samples are."""
        return self.samples or ("crops" if self.boxes else "images")

    @property
    def crop_settings(self) -> CropConfig:
        return self.crop or CropConfig()

    @property
    def frame_settings(self) -> FramesConfig:
        return self.frames or FramesConfig()

    @property
    def has_samples(self) -> bool:
        """Frames or crops were asked for (adaptation and masks need whole images)."""
        return self.frames is not None or self.boxes is not None

    def sample_names(self) -> list[str]:
        """The dataset names this entry gives in the report (`both`: name and name/crops)."""
        return [self.name, self.name + "/crops"] if self.sample_mode == "both" else [self.name]

    @model_validator(mode="after")
    def _samples(self) -> DatasetConfig:
        where = f"datasets.{self.name}"
        for key in ("frames", "boxes", "crop", "samples"):
            if getattr(self, key) is not None and self.path is None:
                raise ValueError(f"{where}.{key}: needs 'path' (a folder of images or videos)")
        if self.samples in ("crops", "both") and self.boxes is None:
            raise ValueError(
                f"{where}.samples: {self.samples!r} needs 'boxes' (a COCO .json file or a "
                "folder of YOLO .txt files)"
            )
        if self.crop is not None and self.boxes is None:
            raise ValueError(f"{where}.crop: needs 'boxes'; add 'boxes' or remove 'crop'")
        for key in ("masks", "predictions"):
            if getattr(self, key) is not None and self.has_samples:
                raise ValueError(
                    f"{where}.{key}: masks belong to whole images, but this dataset samples "
                    "frames or crops ('frames' / 'boxes'); use a separate dataset entry for "
                    "the masked images"
                )
        return self

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.path is None) == (self.embeddings is None):
            raise ValueError(f"dataset {self.name!r}: give exactly one of 'path' or 'embeddings'")
        if self.masks is not None and self.path is None:
            raise ValueError(f"dataset {self.name!r}: 'masks' needs 'path' (images)")
        if self.predictions is not None:
            if not self.predictions.strip():
                raise ValueError(
                    f"dataset {self.name!r}: 'predictions' is empty; give the folder or s3:// "
                    "prefix of the probability maps, or remove the key"
                )
            if self.masks is None:
                raise ValueError(
                    f"dataset {self.name!r}: 'predictions' needs 'masks' (they are scored "
                    "against the masks); add 'masks: <folder>' or remove 'predictions'"
                )
        return self


class DatasetsConfig(Strict):
    primary: DatasetConfig
    secondary: list[DatasetConfig] = Field(min_length=1)
    #: also measure every dataset against every other (each as the primary in turn)
    matrix: bool = False

    @model_validator(mode="before")
    @classmethod
    def _matrix_list(cls, data: object) -> object:
        """`matrix: [dataset, dataset, ...]`: a list with no single primary. The first
        dataset is the reference of the per-secondary sections; the matrix treats all alike."""
        if not isinstance(data, dict) or not isinstance(data.get("matrix"), list):
            return data
        listed = data["matrix"]
        if "primary" in data or "secondary" in data:
            raise ValueError(
                "matrix: give the datasets either as a list under 'matrix' or as "
                "'primary' + 'secondary' (with matrix: true), not both"
            )
        if len(listed) < 2:
            raise ValueError("matrix: list at least two datasets to compare")
        rest = {k: v for k, v in data.items() if k != "matrix"}
        return {**rest, "primary": listed[0], "secondary": listed[1:], "matrix": True}

    @model_validator(mode="after")
    def _unique_names(self) -> DatasetsConfig:
        names = [self.primary.name] + [s.name for s in self.secondary]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dataset names must be unique; repeated: {', '.join(dupes)}")
        if self.primary.sample_mode == "both":
            raise ValueError(
                f"datasets.primary.samples: 'both' gives two datasets, and the primary is one; "
                f"use samples: images or samples: crops for {self.primary.name!r}"
            )
        if self.primary.group is not None and not self.matrix:
            raise ValueError(
                f"primary.group: groups compare secondaries; the primary {self.primary.name!r} "
                "is the reference of every distance, so remove 'group' from it (with "
                "datasets.matrix every dataset may have a group)"
            )
        if self.primary.predictions is not None:
            raise ValueError(
                f"primary.predictions: the primary dataset {self.primary.name!r} has no distance "
                "to itself, so its predictions are not used; move 'predictions' to a secondary"
            )
        return self
