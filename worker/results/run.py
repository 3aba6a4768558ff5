"""Report blocks about the run itself: engine, run and job info, gates and skipped inputs."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from worker.results.base import Count, Result, optional_block

# --------------------------------------------------------------------------- run, gates


class EngineInfo(Result):
    """Where embedding and distances ran."""

    engine: Literal["local", "ray"] = Field(description="local or ray.")
    nodes: int | None = optional_block("Ray nodes alive.")
    cpus: float | None = optional_block("CPUs in the Ray cluster.")
    gpus: float | None = optional_block("GPUs in the Ray cluster.")
    distance_tasks: Count | None = optional_block("Distance row blocks run as Ray tasks.")


class RunInfo(Result):
    """The only block allowed to differ between two runs of the same job."""

    started: str = Field(description="UTC start time, ISO 8601.")
    finished: str = Field(description="UTC end time, ISO 8601.")
    duration_s: float = Field(ge=0, description="Wall time in seconds.")
    host: str = Field(description="Host name.")
    versions: dict[str, str] = Field(description="Package -> version.")
    engine: EngineInfo | None = optional_block("Where the work ran.")
    run_id: str | None = optional_block(
        "Id of this run in the run store (YYYYMMDDTHHMMSSZ-xxxxxx, sortable by start time)."
    )


class JobInfo(Result):
    """What identifies the job."""

    seed: int = Field(description="The job's seed.")
    source: str | None = Field(description="The job file's name (null when not from a file).")


class GateResult(Result):
    """One gate on one dataset: a bound on a report number (exit code 1 when any fails)."""

    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["max"]}, {"required": ["min"]}]}
    )

    metric: str = Field(description="Gate metric name (README: gate metrics).")
    dataset: str = Field(description="Dataset the value belongs to.")
    model: str | None = Field(default=None, description="Extractor label, when the gate names one.")
    value: float | None = Field(description="The value checked (null: not computed, fails).")
    max: float | None = optional_block("Upper bound (passes when value <= max).")
    min: float | None = optional_block("Lower bound (passes when value >= min).")
    passed: bool = Field(description="True when the value exists and lies within the bounds.")
    reason: str | None = optional_block("Why the gate failed without a value.")

    @model_validator(mode="after")
    def _bounded(self) -> GateResult:
        if self.max is None and self.min is None:
            raise ValueError("a gate result needs max or min")
        return self


class SkippedItem(Result):
    """An input that could not be used."""

    dataset: str = Field(description="Dataset name.")
    id: str = Field(description="Image id (path relative to the dataset folder).")
    reason: str = Field(description="Why it was skipped.")
