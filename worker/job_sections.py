"""Job sections for metrics, ranking, report, selection, gates, history, storage, compute and
adaptation (worker/job.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from worker.gate_metrics import GATE_METRICS
from worker.job_base import Strict, check_counts, check_device, check_location, check_text


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
