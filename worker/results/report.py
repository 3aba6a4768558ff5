"""report.json's root model, `Report`."""

from __future__ import annotations

from pydantic import Field

from worker.adapt.block import Adaptation
from worker.results.base import ByName, Result, optional_block
from worker.results.comparison import DatasetMatrix, Groups, ModelAgreement, Perturbation, Ranking
from worker.results.estimate import Estimate
from worker.results.history import History
from worker.results.images import SelectionInfo
from worker.results.run import GateResult, JobInfo, RunInfo, SkippedItem
from worker.results.secondary import (
    ModelInfo,
    ModelResult,
    PcaSummary,
    PrimaryResult,
    SecondaryResult,
    SweepRow,
)

# --------------------------------------------------------------------------- the report


class Report(Result):
    """report.json: how far new image datasets (secondaries) are from a primary dataset.

    Field names are fixed within a major schema_version; minor versions only add fields.
    Numbers are plain JSON numbers; a value that could not be computed is null.
    """

    schema_version: str = Field(
        pattern=r"^1\.\d+\.\d+$", description="Semantic version of this schema (major 1)."
    )
    passed: bool = Field(description="True when every gate passed (exit code 0).")
    run: RunInfo = Field(description="Timing, host and versions: differs between runs.")
    job: JobInfo = Field(description="Seed and job file.")
    model: ModelInfo = Field(description="The (first) feature extractor.")
    primary: PrimaryResult = Field(description="The primary dataset P.")
    pca: PcaSummary = Field(description="The joint PCA used for the main tables.")
    o_dist_scaled: ByName = Field(description="Secondary -> scaled O_dist (paper table 2).")
    secondaries: list[SecondaryResult] = Field(description="Every secondary, in job order.")
    pca_sweep: list[SweepRow] = Field(description="Scaled O_dist per PCA dimension (table 6).")
    pca_sweep_stable: bool = Field(description="True when the sweep's ranking never changes.")
    models: list[ModelResult] = Field(description="Every extractor, the first one first.")
    gates: list[GateResult] = Field(description="Every gate on every dataset it applies to.")
    skipped: list[SkippedItem] = Field(description="Inputs that could not be used.")
    warnings: list[str] = Field(description="What the run had to adjust, sorted.")
    model_agreement: ModelAgreement | None = optional_block(
        "Rank agreement between extractors (several models only)."
    )
    robustness: dict[str, Perturbation] | None = optional_block(
        "Perturbation (brighten, darken, blur) -> ranking stability (metrics.robustness)."
    )
    adaptation: Adaptation | None = optional_block(
        "The adaptation experiment (adaptation.enabled)."
    )
    estimate: Estimate | None = optional_block(
        "Performance estimated from distance for secondaries without masks (labelled evidence "
        "from the adaptation or predictions:); per-image values are under each secondary."
    )
    history: History | None = optional_block(
        "This run against the earlier runs of the same store (a run store with earlier runs)."
    )
    selection: SelectionInfo | None = optional_block(
        "How the selections were chosen, judged, remembered and exported (method.md §3)."
    )
    ranking: Ranking | None = optional_block(
        "Secondaries ranked by o_dist_mean, with the report.top_k closest and farthest."
    )
    groups: Groups | None = optional_block(
        "Groups of secondaries (`group:` in the job) and their separation."
    )
    matrix: DatasetMatrix | None = optional_block(
        "o_dist_mean between every two datasets (datasets.matrix: true)."
    )

    def secondary(self, name: str) -> SecondaryResult | None:
        """The first extractor's result for secondary `name`, or None."""
        return next((s for s in self.secondaries if s.name == name), None)
