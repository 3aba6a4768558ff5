"""The YAML job, as pydantic models. `load_job(path)` reads, validates and resolves paths.

Unknown keys are errors everywhere (`extra="forbid"`), so a typo never silently does nothing.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin

from pydantic import Field, ValidationError, field_validator, model_validator

from worker.adapt.names import model_names
from worker.base import Model
from worker.errors import JobError
from worker.gate_metrics import (
    ADAPTATION_METRICS,
    GATE_METRICS,
    GROUP_METRICS,
    METRIC_SWITCHES,
    PRIMARY_TOO,
)

EXTRACTOR_NAMES = (
    "hog",
    "precomputed",
    "sam",
    "clipseg",
    "efficientnet",
    "clip",
    "dinov2",
    "convnextv2",
    "swinv2",
    "trained",
)


def check_device(v: str) -> str:
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ValueError("device must be auto, cpu, cuda or cuda:N")


def check_location(v: str | None) -> str | None:
    """A path or URI given in the job: not empty or blank, no NUL, no line breaks."""
    if v is None:
        return v
    if not v.strip():
        raise ValueError("must not be empty; give a path (relative to the job file) or s3:// URI")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in v):
        raise ValueError("contains a control character or an invalid (surrogate) character")
    return v


def check_text(v: str | None) -> str | None:
    """A free-text value (checkpoint, revision, prompt): not empty, valid UTF-8 text."""
    if v is None:
        return v
    if not v.strip():
        raise ValueError("must not be empty; remove the key to use the default")
    if any(unicodedata.category(c) == "Cs" for c in v):
        raise ValueError("contains an invalid (surrogate) character")
    return v


def check_counts(v: list[int]) -> list[int]:
    """A non-empty list of positive integers, sorted, repeats removed."""
    if not v or any(c < 1 for c in v):
        raise ValueError("counts must be a non-empty list of positive integers")
    return sorted(set(v))


#: the smallest image side each extractor can work on (hog: two 16-pixel cells make a block;
#: the transformer and CNN families need at least a few patches / downsampling steps)
MIN_IMAGE_SIZE = {"hog": 32}
DEFAULT_MIN_IMAGE_SIZE = 32


def _wants_number(annotation: object) -> bool:
    """Whether a field's type takes a number but not a boolean (int, float, in unions)."""
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _wants_number(args[0])
    if args and get_origin(annotation) not in (list, tuple, dict):
        return bool not in args and any(_wants_number(a) for a in args)
    return annotation in (int, float)


def _bool_for_number(annotation: object, value: object) -> bool:
    """True when `value` (or an item of it) is a YAML boolean where a number is expected."""
    if isinstance(value, bool):
        return _wants_number(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _bool_for_number(args[0], value)
    if isinstance(value, list) and origin in (list, tuple) and args:
        return any(_bool_for_number(args[0], v) for v in value)
    if args and origin not in (list, tuple, dict):  # a union: any list member decides
        return any(_bool_for_number(a, value) for a in args if get_origin(a) in (list, tuple))
    return False


class Strict(Model):
    """Base of the job's models: inf and NaN are refused in every float field (no bound, band
    or rate can be infinite), unknown keys too, and yes/no where a number is expected."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, v: object, info) -> object:
        """YAML reads yes/no/on/off/true/false as booleans, and pydantic would take them as
        1 and 0: `keep: yes` became 1 and pruned runs. A number field refuses them."""
        if isinstance(v, (bool, list)) and info.field_name in cls.model_fields:
            if _bool_for_number(cls.model_fields[info.field_name].annotation, v):
                raise ValueError(
                    "expected a number, got a yes/no value (YAML reads yes, no, on, off, true "
                    "and false as booleans); write the number"
                )
        return v


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
    boxes whose clipped width or height is below `min_size` pixels are skipped."""

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


class MetricsConfig(Strict):
    diversity: bool = True
    coverage: bool = True
    histogram_bins: int = Field(default=20, ge=2, le=200)
    statistics: bool = True
    null_repeats: int = Field(default=20, ge=1, le=1000)
    mmd_permutations: int = Field(default=500, ge=0, le=10000)
    duplicates: bool = True
    robustness: bool = False
    #: label permutations for the p-value of the group separation (0: no p-value)
    group_permutations: int = Field(default=1000, ge=0, le=100_000)
    #: label permutations for the energy test's p-value (method.md §12.1; 0: no p-value)
    energy_permutations: int = Field(default=500, ge=0, le=10000)
    #: novelty: distance to the k-th nearest P image (method.md §12.3)
    novelty_k: int = Field(default=1, ge=1, le=100)
    #: novelty: an image is novel beyond this quantile of P's leave-one-out distances
    novelty_quantile: float = Field(default=0.95, gt=0.0, lt=1.0)
    #: multiple-testing adjustment of every p-value over the secondaries (method.md §12.4)
    p_adjustment: Literal["holm", "bh"] = "holm"


#: what `ranking.metric` can rank by (closest first), and the metrics.* switch each needs
RANKING_METRICS: dict[str, str | None] = {
    "energy_distance": None,
    "o_dist_mean": None,
    "mmd": "statistics",
    "fid": "statistics",
    "kid": "statistics",
}


class RankingConfig(Strict):
    """What orders the secondaries, the matrix and the groups (method.md §11, §12)."""

    metric: Literal["energy_distance", "o_dist_mean", "mmd", "fid", "kid"] = "energy_distance"


class ReportConfig(Strict):
    """How much the PDF shows (report.json always holds every number)."""

    #: how many closest and farthest secondaries the ranking and summary pages show
    top_k: int = Field(default=5, ge=1, le=1000)
    #: full: a section per secondary; summary: one row per secondary and sections for the
    #: top_k closest and farthest only; null: summary above SUMMARY_ABOVE secondaries
    detail: Literal["full", "summary"] | None = None

    def detail_for(self, secondaries: int) -> str:
        if self.detail is not None:
            return self.detail
        return "summary" if secondaries > SUMMARY_ABOVE else "full"


SUMMARY_ABOVE = 10


SelectionStrategy = Literal["novel", "band", "farthest", "kcenter"]
ExportFormat = Literal["csv", "label-studio", "fiftyone"]


class SelectionConfig(Strict):
    strategy: SelectionStrategy | list[SelectionStrategy] = "novel"
    counts: list[int] = Field(default_factory=lambda: [1, 3, 7])
    band: tuple[float, float] = (0.6, 1.0)
    #: B: seeded random subsets of each selection's size it is judged against
    random_subsets: int = Field(default=200, ge=1, le=100_000)
    #: images selected in earlier runs of the run store (by content hash) are not proposed
    exclude_previous: bool = True
    #: images already labelled (ids, folders or URI prefixes): in the pool, never proposed
    labelled: list[str] = Field(default_factory=list)
    #: files for labelling tools written into the run folder
    export: list[ExportFormat] = Field(default_factory=list)

    @field_validator("counts")
    @classmethod
    def _counts(cls, v: list[int]) -> list[int]:
        return check_counts(v)

    @field_validator("strategy")
    @classmethod
    def _strategies(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError(
                    "strategy must name at least one of novel, band, farthest, kcenter"
                )
            v = list(dict.fromkeys(v))  # repeats removed, order kept
        return v

    @field_validator("band")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError("band must be [low, high] with 0 <= low <= high <= 1")
        return v

    @field_validator("labelled")
    @classmethod
    def _labelled(cls, v: list[str]) -> list[str]:
        if any(not str(e).strip() for e in v):
            raise ValueError("labelled: every entry must name an id, a folder or a prefix")
        return v

    @field_validator("export")
    @classmethod
    def _export(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @property
    def strategies(self) -> list[str]:
        return [self.strategy] if isinstance(self.strategy, str) else list(self.strategy)


class GateConfig(Strict):
    metric: str
    dataset: str = "*"
    max: float | None = None
    min: float | None = None
    model: str | None = None
    #: f_slope / ods_f only: the adaptation architecture (its label); unset -> the first one
    architecture: str | None = None

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in GATE_METRICS:
            raise ValueError(f"unknown gate metric {v!r}; use one of {', '.join(GATE_METRICS)}")
        return v

    @field_validator("dataset", "model")
    @classmethod
    def _nonempty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _bound(self) -> GateConfig:
        if self.max is None and self.min is None:
            raise ValueError(f"gate on {self.metric!r}: give 'max' or 'min'")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(
                f"gate on {self.metric!r}: min {self.min} is above max {self.max}; "
                "no value can pass"
            )
        return self


class HistoryConfig(Strict):
    """Earlier runs read from the run store at output.dir (worker/history.py)."""

    #: how many earlier complete runs to read (0: none; the series is then this run only)
    max_runs: int = Field(default=30, ge=0, le=10_000)
    #: a run id in the store (YYYYMMDDTHHMMSSZ-xxxxxx) or a report.json path / s3:// URI;
    #: null: changes are measured against the previous run only
    baseline: str | None = None

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("baseline must be a run id or a report.json path, or null")
        return v


class CacheConfig(Strict):
    dir: str | None = ".cache/embeddings"
    enabled: bool = True

    _dir = field_validator("dir")(classmethod(lambda cls, v: check_location(v)))


class S3Config(Strict):
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=20)


class StorageConfig(Strict):
    s3: S3Config = Field(default_factory=S3Config)


class ComputeConfig(Strict):
    """Where the embedding and distance stages run (docs/ray.md for engine: ray)."""

    engine: Literal["local", "ray"] = "local"
    #: ray only: 'auto' (the cluster this process is on), 'ray://host:10001' (Ray Client),
    #: 'host:6379' (a GCS address); unset starts a private Ray on this machine
    address: str | None = None
    num_gpus_per_worker: float = Field(default=0, ge=0, le=64)
    #: ray only: embedding actors; unset -> cluster GPUs / num_gpus_per_worker, or CPUs / 2
    num_workers: int | None = Field(default=None, ge=1, le=10_000)
    #: ray only: images per Ray Data batch; unset -> model.batch_size
    batch_size: int | None = Field(default=None, ge=1, le=65_536)
    #: ray only: rows of S per distance task; calls with fewer rows stay on the driver
    block_rows: int = Field(default=4096, ge=1, le=10_000_000)
    #: tiles of one distance call; auto: 256 on the CPU, 4096 on a GPU (at most a quarter of
    #: its free memory): larger CUDA tiles make the fused pass 2.6x faster (benchmarks/GPU.md)
    memory_budget_mb: Annotated[int, Field(ge=8, le=1_000_000)] | Literal["auto"] = "auto"
    device: str = "auto"
    #: float32 tiles with float64 accumulation: I_dist within 1e-6 relative of float64
    #: (benchmarks/RESULTS.md, issue 18); float64 for bit-level comparisons
    precision: Literal["auto", "float32", "float64"] = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None or v == "auto" or v.startswith("ray://"):
            return v
        host, _, port = v.rpartition(":")
        if host and port.isdigit():
            return v
        raise ValueError("address must be 'auto', 'ray://host:port' or 'host:port'")

    @model_validator(mode="after")
    def _ray_only(self) -> ComputeConfig:
        if self.engine == "local":
            given = [k for k in ("address", "num_workers", "batch_size") if getattr(self, k)]
            given += ["num_gpus_per_worker"] if self.num_gpus_per_worker else []
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to engine: ray; set engine: ray or remove them"
                )
        return self


class NegativesConfig(Strict):
    path: str
    counts: list[int] = Field(default_factory=lambda: [3, 7])

    _path = field_validator("path")(classmethod(lambda cls, v: check_location(v)))
    _counts = field_validator("counts")(classmethod(lambda cls, v: check_counts(v)))


SEGMENTER_NAMES = ("unet", "unetplusplus", "segformer", "upernet")


class ArchitectureConfig(Strict):
    """One segmentation architecture of the adaptation runs (worker/adapt/segmenters.py).

    `checkpoint`: the whole model: a transformers folder or hub name for segformer / upernet,
    a `.pt` written by output.save_checkpoints for any kind. `encoder`: encoder weights only
    (a local transformers folder: EfficientNet for unetplusplus, ConvNeXt for upernet, SegFormer
    / MiT for segformer); the decoder starts from the job's seed. `label`: the name in the
    report (default: the name, with a counter when a name repeats).
    """

    name: Literal["unet", "unetplusplus", "segformer", "upernet"]
    checkpoint: str | None = None
    encoder: str | None = None
    label: str | None = Field(default=None, min_length=1, max_length=60)

    @field_validator("label")
    @classmethod
    def _safe_label(cls, v: str | None) -> str | None:
        """A label names files (checkpoints/<label>.pt): never a path."""
        if v is not None and (any(c in v for c in "/\\\0") or v.strip(".") == "" or v != v.strip()):
            raise ValueError(
                f"label {v!r} may not contain '/', '\\' or NUL, be only dots, or start or "
                "end with white space (it names the checkpoint file); choose a plain name"
            )
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ArchitectureConfig:
        if self.checkpoint is not None and self.encoder is not None:
            raise ValueError(
                f"architecture {self.name!r}: give 'checkpoint' (whole model) or 'encoder' "
                "(encoder weights), not both"
            )
        if self.name == "unet" and self.encoder is not None:
            raise ValueError("architecture 'unet' has no pretrained encoder; remove 'encoder'")
        return self


class AdaptationConfig(Strict):
    """`model` (one name, with `checkpoint`) or `models` (a list of names or
    {name, checkpoint, encoder, label}); the first architecture is the baseline whose results
    fill `adaptation.results` (and the f_slope / ods_f gates without `architecture`)."""

    enabled: bool = False
    model: Literal["unet", "unetplusplus", "segformer", "upernet"] | None = None
    checkpoint: str | None = None
    models: list[ArchitectureConfig] | None = Field(default=None, min_length=1)
    counts: list[int] = Field(default_factory=lambda: [1, 3, 7])
    selection: SelectionStrategy = "band"
    epochs: int = Field(default=50, ge=1, le=10000)
    image_size: int = Field(default=448, ge=16, le=4096)
    batch_size: int = Field(default=8, ge=1, le=1024)
    lr: float = Field(default=6.0e-5, gt=0, le=10)
    features_from_trained: bool = False
    negatives: NegativesConfig | None = None
    #: every architecture trains every model once per seed: job.seed, job.seed + 1, ...
    seeds: int = Field(default=1, ge=1, le=100)
    #: the recommendation's criteria in priority order (worker/adapt/summary.py)
    choose_by: list[Literal["ods_unseen", "gain", "stability", "cost"]] = Field(
        default_factory=lambda: ["ods_unseen", "gain", "stability", "cost"], min_length=1
    )
    #: share of each selectable secondary held out of selection and training, chosen by
    #: I_dist strata before selection; every model is also scored on it (0: none)
    held_out: float = Field(default=0.2, ge=0.0, lt=1.0)

    _counts = field_validator("counts")(classmethod(lambda cls, v: check_counts(v)))
    _checkpoint = field_validator("checkpoint")(classmethod(lambda cls, v: check_text(v)))

    @field_validator("models", mode="before")
    @classmethod
    def _names_as_entries(cls, v: object) -> object:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return [{"name": x} if isinstance(x, str) else x for x in v]
        return v

    @field_validator("choose_by")
    @classmethod
    def _unique_criteria(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each criterion at most once, got {v}")
        return v

    @model_validator(mode="after")
    def _one_form(self) -> AdaptationConfig:
        if self.models is not None and (self.model is not None or self.checkpoint is not None):
            raise ValueError(
                "give either 'model' (with 'checkpoint') or 'models' (a list), not both; "
                "put a checkpoint inside its entry of 'models'"
            )
        labels = [a.label for a in self.architectures]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"models: labels must be unique; repeated: {', '.join(dupes)}")
        return self

    @property
    def architectures(self) -> list[ArchitectureConfig]:
        """Every architecture, labelled (unique), the baseline first."""
        if self.models is None:
            entries = [ArchitectureConfig(name=self.model or "unet", checkpoint=self.checkpoint)]
        else:
            entries = list(self.models)
        seen: dict[str, int] = {}
        out = []
        for a in entries:
            seen[a.name] = seen.get(a.name, 0) + 1
            label = a.label or (a.name if seen[a.name] == 1 else f"{a.name}-{seen[a.name]}")
            out.append(a.model_copy(update={"label": label}))
        return out


class Job(Strict):
    version: Literal[1] = 1
    #: numpy, torch and scikit-learn all take it: 0 <= seed < 2**32
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    output: OutputConfig = Field(default_factory=OutputConfig)
    model: ModelConfig | None = None
    models: list[ModelConfig] | None = Field(default=None, min_length=1)
    pca: PcaConfig = Field(default_factory=PcaConfig)
    datasets: DatasetsConfig
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    gates: list[GateConfig] = Field(default_factory=list)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    adaptation: AdaptationConfig = Field(default_factory=AdaptationConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    max_skipped_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    allow_outside_paths: bool = True

    # Set by load_job: the folder that relative paths are resolved against.
    base_dir: Path = Field(default=Path("."), exclude=True)
    job_file: Path | None = Field(default=None, exclude=True)  # set by load_job

    @model_validator(mode="after")
    def _models(self) -> Job:
        if self.model is not None and self.models is not None:
            raise ValueError("give either 'model' or 'models', not both")
        labels = [m.label for m in self.model_list]
        if len(set(labels)) != len(labels):
            raise ValueError("each entry of 'models' must differ in name or checkpoint")
        if any(m.name == "precomputed" for m in self.model_list):
            for ds in self.all_datasets:
                if ds.path is not None:
                    raise ValueError(
                        f"datasets.{ds.name}: model 'precomputed' needs 'embeddings', but this "
                        "dataset gives 'path' (images); name an extractor in model.name "
                        "(e.g. hog) instead"
                    )
        if self.adaptation.enabled:
            for ds in self.all_datasets:
                if ds.has_samples:
                    key = "boxes" if ds.boxes is not None else "frames"
                    raise ValueError(
                        f"adaptation.enabled: adaptation trains on whole images with masks, "
                        f"but datasets.{ds.name}.{key} makes {ds.name!r} a "
                        f"{'crop' if key == 'boxes' else 'video'} dataset; set "
                        "adaptation.enabled: false or remove the key"
                    )
        labelled = self.adaptation.enabled or any(
            ds.predictions is not None for ds in self.all_datasets
        )
        for i, gate in enumerate(self.gates):
            if gate.metric == "estimated_f" and not labelled:
                raise ValueError(
                    f"gates[{i}]: estimated_f can never be computed in this job: it needs "
                    "labelled evidence (adaptation.enabled, or a secondary with predictions: "
                    "and masks:); add it or remove the gate"
                )
        if self.pca.shared and not self.datasets.matrix:
            raise ValueError(
                "pca.shared: one PCA over every dataset applies to datasets.matrix only; "
                "set datasets.matrix: true or remove pca.shared"
            )
        switch = RANKING_METRICS[self.ranking.metric]
        if switch is not None and not getattr(self.metrics, switch):
            raise ValueError(
                f"ranking.metric: {self.ranking.metric!r} is computed with metrics.{switch}, "
                f"which is false; set metrics.{switch}: true or rank by energy_distance"
            )
        for i, gate in enumerate(self.gates):
            check_gate(self, gate, f"gates[{i}]")
        return self

    @property
    def model_list(self) -> list[ModelConfig]:
        if self.models:
            return list(self.models)
        return [self.model or ModelConfig()]

    @property
    def all_datasets(self) -> list[DatasetConfig]:
        return [self.datasets.primary, *self.datasets.secondary]

    def resolve(self, location: str) -> str:
        """A dataset or output location: s3:// URIs as they are, local paths against base_dir."""
        if location.startswith("s3://"):
            return location
        p = Path(location).expanduser()
        return str(p if p.is_absolute() else (self.base_dir / p))


def check_gate(job: Job, gate: GateConfig, where: str) -> None:
    """A gate must resolve exactly what it names: its dataset, its model, a computed metric.

    Raises ValueError starting with the field path (e.g. "gates[0].model: ...")."""
    names = [n for ds in job.all_datasets for n in ds.sample_names()]
    primary = job.datasets.primary.name
    metric = gate.metric
    if metric in GROUP_METRICS:
        grouped = job.all_datasets if job.datasets.matrix else job.datasets.secondary
        labels = list(dict.fromkeys(s.group for s in grouped if s.group))
        if len(labels) < 2:
            raise ValueError(
                f"{where}.metric: {metric!r} compares groups of secondaries; give at least "
                "two different 'group:' labels on the secondaries "
                f"(found: {', '.join(labels) or 'none'})"
            )
        pairs = [f"{a} vs {b}" for i, a in enumerate(labels) for b in labels[i + 1 :]]
        either = pairs + [f"{b} vs {a}" for i, a in enumerate(labels) for b in labels[i + 1 :]]
        if gate.dataset != "*" and gate.dataset not in either:
            raise ValueError(
                f"{where}.dataset: {metric!r} names a pair of groups as 'A vs B' (A listed "
                f"first in the job) or '*'; use one of {', '.join(pairs)}"
            )
        return
    if gate.dataset != "*" and gate.dataset not in names:
        raise ValueError(
            f"{where}.dataset: gate on {metric!r} names dataset {gate.dataset!r}, "
            f"which is not in datasets ({', '.join(sorted(names))}); use one of them or '*'"
        )
    if gate.dataset == primary and metric not in PRIMARY_TOO:
        raise ValueError(
            f"{where}.dataset: {metric!r} is measured on secondaries, and {primary!r} is the "
            f"primary; name a secondary or '*' (only {', '.join(PRIMARY_TOO)} apply to P)"
        )
    for switch in METRIC_SWITCHES.get(metric, ()):
        if not getattr(job.metrics, switch):
            raise ValueError(
                f"{where}.metric: {metric!r} is not computed with metrics.{switch}: false; "
                f"set metrics.{switch}: true or remove the gate"
            )
    if metric == "energy_p_value" and job.metrics.energy_permutations == 0:
        raise ValueError(
            f"{where}.metric: 'energy_p_value' needs metrics.energy_permutations > 0 (it is 0)"
        )
    if metric == "mmd_p_value" and job.metrics.mmd_permutations == 0:
        raise ValueError(
            f"{where}.metric: 'mmd_p_value' needs metrics.mmd_permutations > 0 (it is 0)"
        )
    if metric in ADAPTATION_METRICS:
        ad = job.adaptation
        if not ad.enabled:
            raise ValueError(
                f"{where}.metric: {metric!r} comes from the adaptation run; set "
                "adaptation.enabled: true or remove the gate"
            )
        masked = [s.name for s in job.datasets.secondary if s.masks]
        secondaries = [s.name for s in job.datasets.secondary]
        targets = secondaries if gate.dataset == "*" else [gate.dataset]
        lacking = [t for t in targets if t not in masked]
        if lacking:
            raise ValueError(
                f"{where}.dataset: {metric!r} needs a secondary with 'masks'; "
                f"{', '.join(lacking) or 'none'} has none (with masks: "
                f"{', '.join(masked) or 'none'})"
            )
        models = model_names(ad.counts, ad.negatives.counts if ad.negatives else None)
        if gate.model is not None and gate.model not in models:
            raise ValueError(
                f"{where}.model: {gate.model!r} is not an adaptation model of this job; "
                f"use one of {', '.join(models)}"
            )
        return
    if gate.model is None:
        return
    entries = [(m.name, m.label) for m in job.model_list]
    if job.adaptation.enabled and job.adaptation.features_from_trained:
        entries.append(("trained", "trained (baseline M encoder)"))
    labels = [label for _, label in entries]
    by_name = [label for name, label in entries if name == gate.model]
    if gate.model in labels:
        return
    if len(by_name) == 1:
        return
    if len(by_name) > 1:
        raise ValueError(
            f"{where}.model: {gate.model!r} names {len(by_name)} models of this job; "
            f"use the label of one: {', '.join(by_name)}"
        )
    raise ValueError(
        f"{where}.model: {gate.model!r} is not a model of this job; use one of "
        f"{', '.join(dict.fromkeys([n for n, _ in entries] + labels))}"
    )


def _field_path(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: the job is not valid:"]
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and "[" in x and "]" in x))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (see config.example.yaml)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        if not loc:  # a check across fields: its message starts with the field path
            lines.append(f"  - {msg}")
            continue
        lines.append(f"  - {_field_path(loc)}: {msg}")
    return "\n".join(lines)


def parse_job(data: object, base_dir: Path, source: str = "job") -> Job:
    if not isinstance(data, dict):
        raise JobError(
            f"{source}: the job must be a YAML mapping (key: value), got {type(data).__name__}"
        )
    try:
        job = Job.model_validate(data)
    except ValidationError as err:
        raise JobError(format_validation_error(err, source)) from None
    job.base_dir = base_dir
    return job


def load_job(path: str | Path) -> Job:
    """Read and validate a YAML job (worker.yamlfile: a bounded regular file, UTF-8, strict
    safe YAML). Raises JobError naming the file or the field."""
    from worker import yamlfile

    path = Path(path)
    data = yamlfile.parse(yamlfile.read_text(path), str(path))
    job = parse_job(data, path.resolve().parent, str(path))
    job.job_file = path.resolve()
    return job
