"""Report blocks per dataset and per extractor: secondary and primary results, the PCA summary
and sweep, model info and model results.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from worker.results.base import (
    ByName,
    Count,
    Cover,
    Result,
    Splits,
    Spread,
    Summary,
    optional_block,
)
from worker.results.estimate import DatasetEstimate
from worker.results.images import CropClasses, ImageResult, PairPca, SelectionPool, SelectionResult
from worker.results.statistics import Duplicates, EnergyResult, NoveltySummary, Statistics, Verdict

# --------------------------------------------------------------------------- per dataset


class SecondaryResult(Result):
    """Every number of one secondary S against the primary P, for one extractor."""

    name: str = Field(description="Dataset name from the job.")
    count: Count = Field(description="Images (samples) used.")
    o_dist: float | None = Field(description="O_dist: mean I_dist over S (method.md §1.5; >= 0).")
    o_dist_scaled: float | None = Field(
        description="O_dist / sum of all secondaries' O_dist (paper table 2; in [0, 1])."
    )
    o_dist_mean: float | None = Field(
        description="O_dist / |P|: mean distance of an S sample to a P sample (size-free; >= 0)."
    )
    i_dist: Summary = Field(description="Summary of the per-image I_dist.")
    i_dist_scaled_p90: float | None = Field(
        description="90th percentile of the min-max scaled I_dist (in [0, 1])."
    )
    images: list[ImageResult] = Field(description="Every image, in dataset order.")
    splits: Splits = Field(description="Sorted halves and thirds (paper table 3).")
    pca: PairPca = Field(description="The joint PCA of this pair.")
    diversity: Spread | None = Field(description="Diversity of S (null when not computed).")
    coverage_by_primary: Cover | None = Field(
        description="Coverage of S by P (null when not computed)."
    )
    selections: list[SelectionResult] = Field(
        description="One entry per (strategy, count) of the job's selection."
    )
    selection_pool: SelectionPool | None = optional_block(
        "Candidates and the images left out of every selection of this secondary."
    )
    statistics: Statistics | None = optional_block("Yardsticks (metrics.statistics).")
    duplicates: Duplicates | None = optional_block("Duplicates (metrics.duplicates).")
    estimate: DatasetEstimate | None = optional_block(
        "Estimated ODS F-score of this secondary from its distances (a secondary without masks, "
        "when labelled evidence exists)."
    )
    robustness: dict[str, float | None] | None = optional_block(
        "Perturbation -> Kendall tau of this secondary's per-image I_dist ranking, clean vs "
        "perturbed (in [-1, 1]; metrics.robustness)."
    )
    crops: CropClasses | None = optional_block(
        "Per-class counts and O_dist of a secondary made of object crops (boxes:)."
    )
    energy: EnergyResult | None = optional_block(
        "Energy distance of S from P, its terms, test and explanation (method.md §12.1)."
    )
    novelty: NoveltySummary | None = optional_block(
        "Novel images of S against P's own leave-one-out distances (method.md §12.3)."
    )
    verdict: Verdict | None = optional_block(
        "same / shifted / far, with its reason (method.md §12.5)."
    )


class PrimaryResult(Result):
    """The primary dataset P."""

    name: str = Field(description="Dataset name from the job.")
    count: Count = Field(description="Images (samples) used.")
    diversity: Spread | None = Field(
        default=None, description="Diversity of P in a PCA fitted on P alone."
    )


class PcaSummary(Result):
    """The joint PCA as used for the report's main tables (the first secondary's fit)."""

    dims: int | None = Field(ge=1, description="Components kept (null: raw centred features).")
    requested_dims: int | None = Field(
        default=None, ge=1, description="pca.dims as asked in the job."
    )
    route: str | None = Field(default=None, description="Solver route of the fit.")
    explained_variance_ratio: list[float] = Field(
        default_factory=list, description="Share of variance per kept component (each in [0, 1])."
    )


class SweepRow(Result):
    """Scaled O_dist at one PCA dimension (paper appendix A.1, table 6)."""

    dims: int = Field(ge=1, description="PCA dimensions z as asked in pca.sweep.")
    effective_dims: int | None = Field(
        default=None,
        ge=1,
        description="Dimensions actually used: dims, or less where a pair's rank is smaller.",
    )
    o_dist_scaled: ByName = Field(description="Secondary -> scaled O_dist at z (in [0, 1]).")
    ranking: list[str] = Field(description="Secondaries, farthest first.")


class ReduceInfo(Result):
    """model.reduce: the seeded random projection applied to every feature vector."""

    method: str = Field(description="random: very sparse Johnson-Lindenstrauss projection.")
    dims: int = Field(ge=1, description="Width of the projected features.")
    seed: int = Field(ge=0, description="Seed of the projection matrix.")
    input_dim: int | None = Field(default=None, description="Width before the projection.")


class ModelInfo(Result):
    """The feature extractor."""

    name: str = Field(description="Extractor name (hog, clip, dinov2, ..., precomputed, trained).")
    checkpoint: str | None = Field(description="Hub id or folder of the weights.")
    revision: str | None = Field(description="Hub commit the checkpoint resolved to.")
    feature_dim: int | None = Field(ge=1, description="Width of the feature vectors.")
    pooling: str | None = Field(description="flatten, mean or cls.")
    image_size: int | list[int] | None = Field(description="Input size in pixels.")
    input_size: int | None = Field(
        default=None,
        description=(
            "Side in pixels of the square the model sees: image_size, or the family's native "
            "input where it cannot take image_size (SAM: 1024 for the paper's checkpoint)."
        ),
    )
    preprocess: str | None = Field(
        default=None,
        description="fast (tensor rescale and normalisation) or exact (the processor's own).",
    )
    resize_on: Literal["cpu", "device"] | None = Field(
        default=None,
        description=(
            "Where the fast path resized the images: cpu (in the decode threads) or device "
            "(on the model's GPU). The two routes' features differ slightly (pixels at most 1 "
            "apart) and are cached apart; null for exact, hog and precomputed features."
        ),
    )
    reduce: ReduceInfo | None = optional_block(
        "The random projection of the features (model.reduce); left out when none."
    )


class ModelResult(Result):
    """One extractor's distances (models: [...] runs several)."""

    model: ModelInfo = Field(description="The extractor.")
    label: str = Field(description="Short label used in tables and gates.")
    o_dist: ByName = Field(description="Secondary -> O_dist under this extractor (>= 0).")
    o_dist_scaled: ByName = Field(description="Secondary -> scaled O_dist (in [0, 1]).")
    secondaries: list[SecondaryResult] = Field(
        default_factory=list,
        description="Full per-secondary results (empty for the first model: see secondaries).",
    )
    robustness: dict[str, float | None] | None = optional_block(
        "Perturbation -> Kendall tau of the secondaries' O_dist ranking, clean vs perturbed."
    )
