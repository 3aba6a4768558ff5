"""The YAML job, as pydantic models. `load_job(path)` reads, validates and resolves paths.

Unknown keys are errors everywhere (`extra="forbid"`), so a typo never silently does nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from worker.errors import JobError

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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputConfig(Strict):
    dir: str = "out"
    save_checkpoints: bool = False


class ModelConfig(Strict):
    """A feature extractor. `name` is a registry name (see EXTRACTOR_NAMES)."""

    name: str = "hog"
    checkpoint: str | None = None
    revision: str | None = None
    pooling: Literal["flatten", "mean", "cls"] | None = None
    prompt: str | None = None
    image_size: int | None = Field(default=None, ge=8, le=4096)
    batch_size: int = Field(default=32, ge=1, le=4096)
    num_workers: int = Field(default=2, ge=0, le=64)
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

    @property
    def label(self) -> str:
        """A short name for the report: the extractor name, plus the checkpoint if set."""
        return self.name if not self.checkpoint else f"{self.name} ({self.checkpoint})"


class PcaConfig(Strict):
    dims: int | None = Field(default=25, ge=1)
    sweep: list[int] = Field(default_factory=lambda: [5, 10, 15, 20, 25])
    route: Literal["auto", "exact", "gram", "covariance", "randomized"] = "auto"

    @field_validator("sweep")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(d < 1 for d in v):
            raise ValueError("every sweep dimension must be a positive integer")
        return sorted(set(v))


class DatasetConfig(Strict):
    name: str = Field(min_length=1, max_length=100)
    path: str | None = None
    embeddings: str | None = None
    masks: str | None = None
    select: bool = True

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if any(c in v for c in "/\\\0") or v in (".", ".."):
            raise ValueError("dataset names may not contain '/', '\\' or NUL")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.path is None) == (self.embeddings is None):
            raise ValueError(f"dataset {self.name!r}: give exactly one of 'path' or 'embeddings'")
        if self.masks is not None and self.path is None:
            raise ValueError(f"dataset {self.name!r}: 'masks' needs 'path' (images)")
        return self


class DatasetsConfig(Strict):
    primary: DatasetConfig
    secondary: list[DatasetConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> DatasetsConfig:
        names = [self.primary.name] + [s.name for s in self.secondary]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dataset names must be unique; repeated: {', '.join(dupes)}")
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


class SelectionConfig(Strict):
    strategy: (
        Literal["band", "farthest", "kcenter"] | list[Literal["band", "farthest", "kcenter"]]
    ) = "band"
    counts: list[int] = Field(default_factory=lambda: [1, 3, 7])
    band: tuple[float, float] = (0.6, 1.0)

    @field_validator("counts")
    @classmethod
    def _counts(cls, v: list[int]) -> list[int]:
        if not v or any(c < 1 for c in v):
            raise ValueError("counts must be a non-empty list of positive integers")
        return sorted(set(v))

    @field_validator("band")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError("band must be [low, high] with 0 <= low <= high <= 1")
        return v

    @property
    def strategies(self) -> list[str]:
        return [self.strategy] if isinstance(self.strategy, str) else list(self.strategy)


GATE_METRICS = (
    "o_dist",
    "o_dist_scaled",
    "o_dist_mean",
    "o_dist_ratio",
    "o_dist_percentile",
    "i_dist_scaled_p90",
    "i_dist_p90",
    "diversity_mean",
    "coverage_by_primary_mean",
    "coverage_by_primary_max",
    "mmd_p_value",
    "fid",
    "duplicates_with_primary",
    "f_slope",
    "ods_f",
    "skipped_fraction",
)


class GateConfig(Strict):
    metric: str
    dataset: str = "*"
    max: float | None = None
    min: float | None = None
    model: str | None = None

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in GATE_METRICS:
            raise ValueError(f"unknown gate metric {v!r}; use one of {', '.join(GATE_METRICS)}")
        return v

    @model_validator(mode="after")
    def _bound(self) -> GateConfig:
        if self.max is None and self.min is None:
            raise ValueError(f"gate on {self.metric!r}: give 'max' or 'min'")
        return self


class CacheConfig(Strict):
    dir: str | None = ".cache/embeddings"
    enabled: bool = True


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
    memory_budget_mb: int = Field(default=256, ge=8, le=1_000_000)
    device: str = "auto"
    #: float32 tiles with float64 accumulation: I_dist within 1e-6 relative of float64
    #: (benchmarks/RESULTS.md, issue 18); float64 for bit-level comparisons
    precision: Literal["float32", "float64"] = "float32"

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


class AdaptationConfig(Strict):
    enabled: bool = False
    model: Literal["segformer", "unet"] = "unet"
    checkpoint: str | None = None
    counts: list[int] = Field(default_factory=lambda: [1, 3, 7])
    selection: Literal["band", "farthest", "kcenter"] = "band"
    epochs: int = Field(default=50, ge=1, le=10000)
    image_size: int = Field(default=448, ge=16, le=4096)
    batch_size: int = Field(default=8, ge=1, le=1024)
    lr: float = Field(default=6.0e-5, gt=0)
    features_from_trained: bool = False
    negatives: NegativesConfig | None = None


class Job(Strict):
    version: Literal[1] = 1
    seed: int = 0
    output: OutputConfig = Field(default_factory=OutputConfig)
    model: ModelConfig | None = None
    models: list[ModelConfig] | None = None
    pca: PcaConfig = Field(default_factory=PcaConfig)
    datasets: DatasetsConfig
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    gates: list[GateConfig] = Field(default_factory=list)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    adaptation: AdaptationConfig = Field(default_factory=AdaptationConfig)
    max_skipped_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    allow_outside_paths: bool = True

    # Set by load_job: the folder that relative paths are resolved against.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _models(self) -> Job:
        if self.model is not None and self.models is not None:
            raise ValueError("give either 'model' or 'models', not both")
        labels = [m.label for m in self.model_list]
        if len(set(labels)) != len(labels):
            raise ValueError("each entry of 'models' must differ in name or checkpoint")
        names = {self.datasets.primary.name} | {s.name for s in self.datasets.secondary}
        for gate in self.gates:
            if gate.dataset != "*" and gate.dataset not in names:
                raise ValueError(
                    f"gate on {gate.metric!r} names dataset {gate.dataset!r}, "
                    f"which is not in datasets ({', '.join(sorted(names))})"
                )
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
    """Read and validate a YAML job (yaml.safe_load only). Raises JobError naming the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobError(f"{path}: job file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise JobError(f"{path}: cannot read the job file ({err.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise JobError(f"{path}: malformed YAML{where}; fix the syntax and run again") from None
    return parse_job(data, path.resolve().parent, str(path))
