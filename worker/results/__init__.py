"""The typed report: every block of report.json as a pydantic model (docs/report-json.md).

Each stage returns one of these; `Report` is report.json, dumped by `Report.model_dump_json`,
and its JSON Schema (worker/report/report.schema.json, `python -m worker schema`) is generated
from these classes, so the contract, the code and the documentation cannot drift apart.

Conventions:
- distances are Euclidean, in the units of the pair's PCA space (or of the raw features when
  `pca.dims` is null); "scaled" values are unit-free;
- a number that could not be computed is null; NaN and infinity are refused at construction;
- blocks a job did not ask for (statistics, duplicates, robustness, adaptation, ...) are
  left out of report.json rather than written as null.
"""

from __future__ import annotations

from worker.adapt.block import Adaptation
from worker.results.base import (
    SCHEMA_VERSION,
    ByName,
    Count,
    Cover,
    Histogram,
    Result,
    Split,
    Splits,
    Spread,
    Summary,
    optional_block,
)
from worker.results.comparison import (
    DatasetMatrix,
    GroupPair,
    Groups,
    GroupSummary,
    ModelAgreement,
    ModelPair,
    Perturbation,
    RankCorrelation,
    RankDisagreement,
    Ranking,
    RankingMetric,
)
from worker.results.estimate import (
    CandidateScore,
    Curve,
    DatasetEstimate,
    Estimate,
    EstimateRange,
    EstimateTrack,
    ImageEstimate,
    LabelledPoint,
    LabelledSet,
    RealisedEstimate,
)
from worker.results.history import (
    Change,
    ChangeTest,
    FarImage,
    History,
    HistoryPoint,
    NewImages,
    SecondaryHistory,
    ValueSummary,
)
from worker.results.images import (
    ClassDistance,
    CropClasses,
    ImageResult,
    ImageSource,
    PairPca,
    RandomComparison,
    SelectionInfo,
    SelectionPool,
    SelectionResult,
)
from worker.results.report import Report
from worker.results.run import EngineInfo, GateResult, JobInfo, RunInfo, SkippedItem
from worker.results.secondary import (
    ModelInfo,
    ModelResult,
    PcaSummary,
    PrimaryResult,
    ReduceInfo,
    SecondaryResult,
    SweepRow,
)
from worker.results.statistics import (
    DuplicatePair,
    Duplicates,
    EnergyResult,
    KidResult,
    MmdResult,
    NoveltySummary,
    NullSubsample,
    PrimaryDuplicate,
    Statistics,
    Verdict,
)

__all__ = [
    "Adaptation",
    "ByName",
    "CandidateScore",
    "Change",
    "ChangeTest",
    "ClassDistance",
    "Count",
    "Cover",
    "CropClasses",
    "Curve",
    "DatasetEstimate",
    "DatasetMatrix",
    "DuplicatePair",
    "Duplicates",
    "EnergyResult",
    "EngineInfo",
    "Estimate",
    "EstimateRange",
    "EstimateTrack",
    "FarImage",
    "GateResult",
    "GroupPair",
    "GroupSummary",
    "Groups",
    "Histogram",
    "History",
    "HistoryPoint",
    "ImageEstimate",
    "ImageResult",
    "ImageSource",
    "JobInfo",
    "KidResult",
    "LabelledPoint",
    "LabelledSet",
    "MmdResult",
    "ModelAgreement",
    "ModelInfo",
    "ModelPair",
    "ModelResult",
    "NewImages",
    "NoveltySummary",
    "NullSubsample",
    "PairPca",
    "PcaSummary",
    "Perturbation",
    "PrimaryDuplicate",
    "PrimaryResult",
    "RandomComparison",
    "RankCorrelation",
    "RankDisagreement",
    "Ranking",
    "RankingMetric",
    "RealisedEstimate",
    "ReduceInfo",
    "Report",
    "Result",
    "RunInfo",
    "SCHEMA_VERSION",
    "SecondaryHistory",
    "SecondaryResult",
    "SelectionInfo",
    "SelectionPool",
    "SelectionResult",
    "SkippedItem",
    "Split",
    "Splits",
    "Spread",
    "Statistics",
    "Summary",
    "SweepRow",
    "ValueSummary",
    "Verdict",
    "_is_none",
    "optional_block",
]
