"""The YAML job, as pydantic models. `load_job(path)` reads, validates and resolves paths.

Unknown keys are errors everywhere (`extra="forbid"`), so a typo never silently does nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from worker.adapt.names import model_names
from worker.errors import JobError
from worker.gate_metrics import (
    ADAPTATION_METRICS,
    GATE_METRICS,
    GROUP_METRICS,
    METRIC_SWITCHES,
    PRIMARY_TOO,
)
from worker.job_base import (
    DEFAULT_MIN_IMAGE_SIZE,
    EXTRACTOR_NAMES,
    MIN_IMAGE_SIZE,
    Strict,
    check_counts,
    check_device,
    check_location,
    check_text,
)
from worker.job_datasets import (
    CropConfig,
    DatasetConfig,
    DatasetsConfig,
    FramesConfig,
    ModelConfig,
    OutputConfig,
    PcaConfig,
    ReduceConfig,
)
from worker.job_sections import (
    RANKING_METRICS,
    SEGMENTER_NAMES,
    SUMMARY_ABOVE,
    AdaptationConfig,
    ArchitectureConfig,
    CacheConfig,
    ComputeConfig,
    ExportFormat,
    GateConfig,
    HistoryConfig,
    MetricsConfig,
    NegativesConfig,
    RankingConfig,
    ReportConfig,
    S3Config,
    SelectionConfig,
    SelectionStrategy,
    StorageConfig,
)

__all__ = [
    "AdaptationConfig",
    "ArchitectureConfig",
    "CacheConfig",
    "ComputeConfig",
    "CropConfig",
    "DEFAULT_MIN_IMAGE_SIZE",
    "DatasetConfig",
    "DatasetsConfig",
    "EXTRACTOR_NAMES",
    "ExportFormat",
    "FramesConfig",
    "GATE_METRICS",
    "GateConfig",
    "HistoryConfig",
    "Job",
    "MIN_IMAGE_SIZE",
    "MetricsConfig",
    "ModelConfig",
    "NegativesConfig",
    "OutputConfig",
    "PcaConfig",
    "RANKING_METRICS",
    "RankingConfig",
    "ReduceConfig",
    "ReportConfig",
    "S3Config",
    "SEGMENTER_NAMES",
    "SUMMARY_ABOVE",
    "SelectionConfig",
    "SelectionStrategy",
    "StorageConfig",
    "Strict",
    "check_counts",
    "check_device",
    "check_gate",
    "check_location",
    "check_text",
    "format_validation_error",
    "load_job",
    "parse_job",
]


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
