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

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from worker.adapt.block import Adaptation
from worker.base import Model

SCHEMA_VERSION = "1.3.0"


def _is_none(value: Any) -> bool:
    return value is None


def optional_block(description: str) -> Any:
    """A field left out of report.json when None (a block the job did not ask for)."""
    return Field(default=None, exclude_if=_is_none, description=description)


class Result(Model):
    """Base of every report block: unknown keys and non-finite floats are refused."""


Count = Annotated[int, Field(ge=0)]
ByName = dict[str, float | None]


# --------------------------------------------------------------------------- small blocks


class Histogram(Result):
    """Counts of values in equal-width bins."""

    edges: list[float] = Field(description="Bin edges, ascending (len(counts) + 1 values).")
    counts: list[Count] = Field(description="Number of values in each bin (>= 0).")


class Spread(Result):
    """Diversity (method.md §2.1): each sample's distance to its nearest other sample."""

    mean: float | None = Field(description="Mean nearest-other distance (distance units, >= 0).")
    min: float | None = Field(description="Smallest nearest-other distance (>= 0).")
    max: float | None = Field(description="Largest nearest-other distance (>= 0).")
    histogram: Histogram | None = Field(
        default=None, description="Histogram of the nearest-other distances."
    )


class Cover(Result):
    """Coverage (method.md §2.2): each input sample's distance to its nearest output sample."""

    mean: float | None = Field(description="Mean distance to the nearest output (>= 0).")
    max: float | None = Field(
        description="Largest distance to the nearest output: the k-center covering radius (>= 0)."
    )
    histogram: Histogram | None = optional_block(
        "Histogram of the distances to the nearest output (selections only)."
    )


class Summary(Result):
    """Summary statistics of a sample (std with ddof = 0; percentiles numpy 'linear')."""

    mean: float | None = Field(description="Mean.")
    std: float | None = Field(description="Population standard deviation (ddof = 0, >= 0).")
    min: float | None = Field(description="Minimum.")
    max: float | None = Field(description="Maximum.")
    p50: float | None = Field(description="Median (50th percentile, linear interpolation).")
    p90: float | None = Field(description="90th percentile (linear interpolation).")


class Split(Result):
    """One part of S sorted by I_dist (method.md §1.8, paper table 3)."""

    mean: float | None = Field(description="Mean I_dist of the part (null when empty).")
    std: float | None = Field(description="Population std of I_dist in the part (ddof = 0).")
    count: Count = Field(description="Number of images in the part.")


class Splits(Result):
    """S sorted by I_dist (ascending) and cut into equal parts with numpy.array_split."""

    halves: list[Split] = Field(description="Two parts: closest half first.")
    thirds: list[Split] = Field(description="Three parts: closest third first.")


class ImageSource(Result):
    """Where a sample's pixels come from: a video frame or an object crop (docs/samples.md)."""

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, serialize_by_alias=True, validate_by_name=True
    )

    file: str = Field(description="The source file: its path relative to the dataset folder.")
    time_s: float | None = optional_block("Frame: seconds from the video's first frame (>= 0).")
    frame: int | None = optional_block(
        "Frame: index of the frame in presentation order (0 = first frame; >= 0)."
    )
    box: list[int] | None = optional_block(
        "Crop: [x0, y0, x1, y1] in pixels of the upright image, padded and clipped; x1 and "
        "y1 exclusive (the crop is image[y0:y1, x0:x1])."
    )
    class_: str | None = Field(
        default=None,
        alias="class",
        exclude_if=_is_none,
        description="Crop: the box's class name (the category id as text when unnamed).",
    )


class ClassDistance(Result):
    """The crops of one class in a secondary: count and their O_dist (mean I_dist)."""

    name: str = Field(description="Class name.")
    count: Count = Field(description="Crops of this class used.")
    o_dist: float | None = Field(description="Mean I_dist over the class's crops (>= 0).")
    o_dist_mean: float | None = Field(description="o_dist / |P|: size-free (>= 0).")


class CropClasses(Result):
    """Per-class counts and distances of a secondary made of object crops."""

    classes: list[ClassDistance] = Field(description="One entry per class, by name.")


class ImageResult(Result):
    """One image (sample) of a secondary."""

    id: str = Field(description="Image id: its path relative to the dataset folder.")
    i_dist: float | None = Field(
        description="I_dist: sum of distances to every P sample (method.md §1.4; >= 0)."
    )
    i_dist_scaled: float | None = Field(
        description="I_dist min-max scaled within this secondary (method.md §1.7; in [0, 1])."
    )
    i_dist_mean: float | None = Field(
        description="I_dist / |P|: mean distance to a P sample (>= 0)."
    )
    sha256: str | None = Field(
        default=None,
        description="SHA-256 of the image file (hex); for a frame or crop, of its source "
        "file's hash, position and sampling settings; null for precomputed embeddings.",
    )
    new: bool | None = optional_block(
        "True when the image was not in the previous run's dataset of this name (history)."
    )
    source: ImageSource | None = optional_block(
        "For a video frame or an object crop: its source file and position."
    )
    nn_distance: float | None = optional_block(
        "Distance to the k-th nearest P image (novelty.k; method.md §12.3; >= 0)."
    )
    novelty: float | None = optional_block(
        "Share of P's leave-one-out k-NN distances below nn_distance (in [0, 1]; higher = "
        "more novel; method.md §12.3)."
    )
    novelty_p_value: float | None = optional_block(
        "Conformal p-value (1 + #{P leave-one-out >= nn_distance}) / (|P| + 1), in (0, 1]."
    )
    novel: bool | None = optional_block(
        "True when nn_distance exceeds P's novelty threshold (its q-quantile; method.md §12.3)."
    )


class PairPca(Result):
    """The joint PCA of one (P, S) pair (method.md §1.1-1.2)."""

    route: str | None = Field(description="Solver route: exact, gram, covariance, randomized.")
    dims: int | None = Field(ge=1, description="Components kept (null: raw centred features).")
    requested_dims: int | None = Field(ge=1, description="pca.dims as asked in the job.")
    explained_variance_ratio: list[float] = Field(
        description="Share of the pair's variance per kept component (each in [0, 1])."
    )
    warnings: list[str] = Field(default_factory=list, description="What the fit had to adjust.")


class RandomComparison(Result):
    """One aim of a selection against B seeded random subsets of the same size drawn from the
    same candidates (method.md §3.5)."""

    aim: Literal["novelty", "coverage", "novel_coverage"] = Field(
        description="novelty: mean per-image novelty of the chosen images (higher is better); "
        "coverage: covering radius of S by the pool (P, earlier selections, labelled images) "
        "plus the chosen images (lower is better); novel_coverage: the same for the novel "
        "images of S."
    )
    decides: bool = Field(description="True when this aim is the strategy's own (its verdict).")
    higher_is_better: bool = Field(description="True for novelty, false for the radii.")
    value: float | None = Field(description="The selection's value on this aim.")
    random: Summary = Field(description="The random subsets' values on this aim.")
    subsets: Count = Field(description="Random subsets drawn (selection.random_subsets).")
    percentile: float | None = Field(
        description="Share of random subsets the selection does better than, ties counted "
        "half, in percent ([0, 100]); null when not judged."
    )
    p_value: float | None = Field(
        description="(1 + random subsets at least as good) / (subsets + 1), in (0, 1]."
    )
    beats_random: bool | None = Field(
        description="p_value <= 0.05; null when not judged (no image, or every candidate)."
    )


class SelectionResult(Result):
    """The images one strategy picks from S for labelling (method.md §3)."""

    strategy: str = Field(description="novel, band, farthest or kcenter.")
    count: Count = Field(description="Number of images chosen.")
    ids: list[str] = Field(description="Chosen image ids, in the order chosen.")
    diversity: Spread | None = Field(description="Diversity of the chosen images.")
    coverage: Cover | None = Field(description="Coverage of all of S by the chosen images.")
    random_diversity: Spread | None = Field(
        description="Diversity of a seeded random subset of S of the same size."
    )
    pool_diversity: Spread | None = Field(
        default=None, description="Diversity of P plus the chosen images."
    )
    random_coverage: Cover | None = optional_block(
        "Coverage of all of S by the same seeded random subset as random_diversity."
    )
    aim: str | None = optional_block(
        "What the strategy aims at: novelty (band, farthest), coverage (kcenter), novelty and "
        "coverage of the novel images (novel)."
    )
    against_random: list[RandomComparison] | None = optional_block(
        "The selection against random subsets of its size, one entry per aim (method.md §3.5)."
    )
    beats_random: bool | None = Field(
        default=None,
        description="True when the selection beats random on every aim of its strategy, false "
        "when it fails one, null when it was not judged.",
    )
    verdict: str | None = optional_block("The comparison with random in plain words.")


class SelectionInfo(Result):
    """How this run chose what to label (method.md §3): strategies, judging, memory, exports."""

    strategies: list[str] = Field(description="selection.strategy, in job order.")
    paper_strategy: str = Field(
        description="The strategy the paper used (section 4.3): band, random within the band "
        "of scaled I_dist."
    )
    random_subsets: Count = Field(description="B: random subsets each selection is judged on.")
    alpha: float = Field(description="A selection beats random when its p_value <= alpha.")
    exclude_previous: bool = Field(
        description="True when images selected in earlier runs of the store are not proposed."
    )
    earlier_runs: Count = Field(description="Earlier runs of the store whose selections count.")
    labelled: list[str] = Field(description="selection.labelled: images already labelled.")
    exports: list[str] = Field(
        description="Files written into the run folder for labelling tools (selection.export)."
    )


class SelectionPool(Result):
    """What a secondary's selections could not propose (method.md §3.6)."""

    candidates: Count = Field(description="Images that could be proposed.")
    earlier_selected: Count = Field(
        description="Images selected in an earlier run of the store (by content hash), not "
        "proposed again (selection.exclude_previous)."
    )
    labelled: Count = Field(description="Images named by selection.labelled, never proposed.")
    novel: Count = Field(description="Novel images (beyond P's calibrated quantile).")
    held_out: Count = Field(
        default=0,
        description="Images of the adaptation's held-out split: never selected, scored by "
        "every model (adaptation.held_out).",
    )


class MmdResult(Result):
    """Two-sample test: unbiased Gaussian-kernel MMD² and its permutation p-value (§4.2)."""

    statistic: float | None = Field(description="Unbiased MMD² (unit-free; may be < 0).")
    p_value: float | None = Field(description="(1 + #{perm >= obs}) / (1 + permutations); (0, 1].")
    sigma: float | None = Field(description="Kernel bandwidth (distance units, > 0).")
    permutations: Count = Field(description="Number of label permutations.")
    n_x: Count = Field(description="P samples used (after subsampling).")
    n_y: Count = Field(description="S samples used (after subsampling).")
    p_value_adjusted: float | None = optional_block(
        "p_value adjusted over the secondaries (metrics.p_adjustment; method.md §12.4)."
    )


class KidResult(Result):
    """Kernel Inception Distance over random subsets (cubic polynomial kernel, §4.3)."""

    mean: float | None = Field(description="Mean unbiased MMD² over the subsets.")
    std: float | None = Field(description="Population std over the subsets (>= 0).")
    subset_size: Count | None = Field(
        default=None, description="Samples drawn from each set per subset (seeded)."
    )
    subsets: Count | None = Field(default=None, description="Number of subsets averaged.")


class NullSubsample(Result):
    """The seeded subsample of P that each null repeat splits (bounded cost, method.md §4.1)."""

    size: Count = Field(description="Rows of P drawn per repeat (all of P when it is small).")
    of: Count = Field(description="Rows of P in all.")
    repeats: Count = Field(description="Random half-splits averaged.")


class Statistics(Result):
    """Yardsticks of one secondary in its pair's PCA space (method.md §4)."""

    o_dist_null_mean: float | None = Field(
        description="Mean o_dist_mean of P's random halves against each other (>= 0)."
    )
    o_dist_ratio: float | None = Field(description="o_dist_mean / null mean (1 = like P itself).")
    o_dist_percentile: float | None = Field(
        description="Percentage of null values below o_dist_mean (0-100)."
    )
    null_subsample: NullSubsample | None = Field(
        default=None, description="The subsample of P the null calibration used."
    )
    mmd: MmdResult = Field(description="MMD two-sample test of P against S.")
    fid: float | None = Field(description="Fréchet distance of Gaussian fits (squared units).")
    kid: KidResult = Field(description="Kernel Inception Distance.")


class DuplicatePair(Result):
    """Two images of one secondary that are the same or nearly so."""

    id_a: str = Field(description="First image id (earlier in S).")
    id_b: str = Field(description="Second image id.")
    distance: float = Field(description="Their distance (>= 0).")
    exact: bool = Field(description="True when their file contents are identical (SHA-256).")


class PrimaryDuplicate(Result):
    """An image of S that duplicates an image of P (possible train/test leakage)."""

    id: str = Field(description="Image id in S.")
    primary_id: str = Field(description="Image id in P.")
    distance: float = Field(description="Their distance (>= 0).")
    exact: bool = Field(description="True when their file contents are identical (SHA-256).")


class Duplicates(Result):
    """Exact and near duplicates (method.md §4.4)."""

    threshold: float = Field(
        description="Near-duplicate distance: a tenth of P's median nearest-neighbour distance."
    )
    within: list[DuplicatePair] = Field(description="Duplicate pairs within S, in S order.")
    with_primary: list[PrimaryDuplicate] = Field(
        description="S images with a duplicate in P (at most one entry each), in S order."
    )


class EnergyResult(Result):
    """Energy distance of S from P in the pair's PCA space, its terms, its permutation test and
    its decomposition in words (method.md §12.1-12.2)."""

    distance: float = Field(
        description="2 cross - within_secondary - within_primary (V-statistic; >= 0, 0 for "
        "identical sets; distance units)."
    )
    cross: float = Field(description="E|s - p|: mean S-P distance (= o_dist_mean; >= 0).")
    within_secondary: float = Field(description="E|s - s'|: mean distance within S (>= 0).")
    within_primary: float = Field(description="E|p - p'|: mean distance within P (>= 0).")
    coefficient: float = Field(
        description="distance / (2 cross), in [0, 1]: unit-free (0 = same distribution)."
    )
    p_value: float | None = Field(
        description="Permutation p-value (1 + #{perm >= obs}) / (1 + permutations), in (0, 1]; "
        "null without permutations."
    )
    p_value_adjusted: float | None = Field(
        description="p_value adjusted over the secondaries (metrics.p_adjustment; §12.4)."
    )
    min_p_value: float | None = Field(
        description="Smallest attainable p_value: 1 / (1 + permutations)."
    )
    permutations: Count = Field(description="Label permutations (metrics.energy_permutations).")
    n_x: Count = Field(description="P samples the test used (after subsampling).")
    n_y: Count = Field(description="S samples the test used (after subsampling).")
    explanation: str = Field(
        description="Why S is far or near, in words: shifted, less or more varied than P."
    )


class NoveltySummary(Result):
    """Per-image novelty against P, summarised for S (method.md §12.3)."""

    k: int = Field(ge=1, description="The k of the k-th nearest P image (novelty.k).")
    quantile: float = Field(description="q (novelty.quantile): novel beyond P's q-quantile.")
    threshold: float = Field(
        description="q-quantile of P's leave-one-out k-NN distances (distance units)."
    )
    novel_count: Count = Field(description="Images of S beyond the threshold.")
    novel_fraction: float | None = Field(description="novel_count / |S|, in [0, 1].")
    base_rate: float = Field(
        description="1 - q: the novel fraction expected of a set drawn like P (e.g. 0.05)."
    )
    p_value: float | None = Field(
        description="One-sided binomial P(X >= novel_count), X ~ Binomial(|S|, base_rate)."
    )
    p_value_adjusted: float | None = Field(
        description="p_value adjusted over the secondaries (metrics.p_adjustment; §12.4)."
    )


class Verdict(Result):
    """A verdict page 1 prints as it is (method.md §12.5)."""

    label: Literal["same", "shifted", "far"] = Field(
        description="same: no detectable difference; shifted: a significant difference; far: "
        "most of S lies beyond P's envelope."
    )
    reason: str = Field(description="The numbers behind the label, in words.")


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


# --------------------------------------------------------------------------- across models


class RankCorrelation(Result):
    """Rank agreement of two paired sequences (scipy; null when undefined)."""

    spearman: float | None = Field(description="Spearman's rho (in [-1, 1]).")
    kendall_tau: float | None = Field(description="Kendall's tau-b (in [-1, 1]).")


class ModelPair(Result):
    """Agreement of two extractors."""

    model_a: str = Field(description="Label of the first extractor.")
    model_b: str = Field(description="Label of the second extractor.")
    o_dist: RankCorrelation = Field(description="Agreement of O_dist across secondaries.")
    i_dist: dict[str, RankCorrelation] = Field(
        description="Secondary -> agreement of its per-image I_dist."
    )


class ModelAgreement(Result):
    """Do the extractors rank the data alike? (several models only)."""

    pairs: list[ModelPair] = Field(description="One entry per pair of extractors.")
    rank_differs: list[str] = Field(
        description="Secondaries whose O_dist rank is not the same under every extractor."
    )


class Perturbation(Result):
    """Ranking stability under one image perturbation (paper appendix D)."""

    kendall_tau: float | None = Field(
        description="Kendall tau of the secondaries' O_dist, clean vs perturbed (in [-1, 1])."
    )
    o_dist_scaled: ByName = Field(description="Secondary -> scaled O_dist when perturbed.")
    image_kendall_tau: ByName = Field(
        description="Secondary -> Kendall tau of its per-image I_dist, clean vs perturbed."
    )


# --------------------------------------------------------------------------- many datasets


RankingMetric = Literal["energy_distance", "o_dist_mean", "mmd", "fid", "kid"]


class RankDisagreement(Result):
    """A secondary whose rank by the ranking metric differs from its rank by the paper's
    o_dist_mean, and why (method.md §12.2)."""

    name: str = Field(description="Secondary name.")
    rank: int = Field(ge=1, description="Its rank by ranking.metric (1 = closest).")
    o_dist_mean_rank: int = Field(ge=1, description="Its rank by o_dist_mean (1 = closest).")
    explanation: str = Field(description="Why, in words (the energy decomposition).")


class Ranking(Result):
    """Secondaries ranked by ranking.metric (default the energy distance, method.md §12),
    closest first."""

    by: RankingMetric = Field(description="The ranking key (same as metric).")
    metric: RankingMetric = Field(
        default="energy_distance",
        description="ranking.metric: energy_distance, o_dist_mean, mmd (MMD²), fid or kid "
        "(KID mean); every ranking is closest first.",
    )
    values: ByName = Field(
        default_factory=dict, description="Secondary -> its value of the ranking metric."
    )
    disagreements: list[RankDisagreement] = Field(
        default_factory=list,
        description="Secondaries ranked differently by o_dist_mean (the paper's distance), "
        "with the reason.",
    )
    top_k: Count = Field(description="report.top_k: how many names each end lists.")
    order: list[str] = Field(
        description="Every secondary, closest first (ties: job order; no value: last)."
    )
    closest: list[str] = Field(description="The top_k closest secondaries, closest first.")
    farthest: list[str] = Field(description="The top_k farthest secondaries, farthest first.")
    detail: Literal["full", "summary"] = Field(
        description="report.detail as applied: full (a PDF section per secondary) or summary."
    )
    sections: list[str] = Field(
        description="Secondaries with a full PDF section, in rank order (summary: both ends)."
    )

    @property
    def highlighted(self) -> list[str]:
        """Both ends, in rank order: the top_k closest and the top_k farthest secondaries, each
        once (every secondary when there are at most 2 top_k). The one owner of the rule the
        summary sections, the figures and report.html follow."""
        if len(self.order) <= 2 * self.top_k:
            return list(self.order)
        return list(self.order[: self.top_k]) + list(self.order[-self.top_k :])


class GroupSummary(Result):
    """One group of secondaries (`group:` in the job)."""

    name: str = Field(description="Group label from the job.")
    members: list[str] = Field(description="Secondaries of the group, in job order.")
    o_dist_mean: Summary = Field(description="Summary of the members' o_dist_mean (std ddof 0).")
    values: Summary | None = optional_block(
        "Summary of the members' values of the ranking metric (groups.metric; std ddof 0)."
    )


class GroupPair(Result):
    """Separation of two groups: AUC = share of pairs (a in A, b in B) with
    o_dist_mean(a) < o_dist_mean(b), ties 1/2 (paper appendix E)."""

    group_a: str = Field(description="Group A (earlier in the job).")
    group_b: str = Field(description="Group B.")
    auc: float | None = Field(description="In [0, 1]: 1 = every A set closer than every B set.")
    p_value: float | None = Field(
        description="Permutation p-value over the group labels, two-sided on |AUC - 1/2| "
        "((1 + hits) / (1 + permutations), in (0, 1]); null without permutations."
    )
    permutations: Count = Field(description="Label permutations (metrics.group_permutations).")
    separation: float | None = optional_block(
        "In [0, 1], the same whichever group is listed first: from the matrix, the AUC of "
        "within-group entries below between-group ones; else max(auc, 1 - auc) (§12.6)."
    )
    p_value_adjusted: float | None = optional_block(
        "p_value adjusted over the pairs of groups (metrics.p_adjustment)."
    )


class Groups(Result):
    """Groups of secondaries (or of every dataset of the matrix) and how well the ranking
    metric separates them."""

    groups: list[GroupSummary] = Field(description="Every group, in order of first appearance.")
    pairs: list[GroupPair] = Field(description="One entry per pair of groups.")
    metric: RankingMetric | None = optional_block(
        "The ranking metric the values, auc and separation use (ranking.metric)."
    )
    basis: Literal["matrix", "primary"] | None = optional_block(
        "matrix: separation from the energy (or o_dist_mean) matrix over every dataset; "
        "primary: from each secondary's value against the primary."
    )


class DatasetMatrix(Result):
    """Every dataset as the primary in turn (datasets.matrix; method.md §11)."""

    names: list[str] = Field(description="Datasets, in job order (primary first).")
    o_dist_mean: list[list[float | None]] = Field(
        description="[i][j] = o_dist_mean of dataset i against dataset j (symmetric; diagonal: "
        "a set against itself, self-pairs included)."
    )
    pca: Literal["pair", "shared"] = Field(
        description="pair: one joint PCA per pair of datasets; shared: one PCA over all."
    )
    dims: int | None = Field(description="pca.dims (null: raw centred features).")
    order: list[str] = Field(
        description="Names in the leaf order of an average-linkage clustering (scipy)."
    )
    nearest: dict[str, str | None] = Field(
        description="Dataset -> the other dataset with the smallest entry of the matrix that "
        "orders (ordered_by)."
    )
    energy: list[list[float]] | None = optional_block(
        "[i][j] = energy distance of datasets i and j in their pair's space (method.md "
        "§12.1; symmetric, zero diagonal)."
    )
    ordered_by: Literal["energy", "o_dist_mean"] | None = optional_block(
        "The matrix behind order and nearest: o_dist_mean when ranking.metric is o_dist_mean, "
        "else energy."
    )
    linkage: list[list[float]] | None = optional_block(
        "The clustering behind order (scipy linkage rows [i, j, height, size]: i, j index names, "
        "or K + r for the cluster made by row r; average linkage of the ordered_by matrix); "
        "null below 3 datasets."
    )


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


# --------------------------------------------------------------------------- estimate


class LabelledPoint(Result):
    """One labelled image: its distance and its F-score."""

    dataset: str = Field(description="labelled secondary the image belongs to")
    id: str = Field(description="image id (path relative to the dataset root)")
    i_dist_scaled: float = Field(description="min-max scaled I_dist within its dataset, 0..1")
    i_dist_mean: float = Field(description="size-free distance I_dist / n, feature-space units")
    f: float = Field(description="F-score of the image at its dataset's ODS threshold, 0..1")


class LabelledSet(Result):
    """One labelled secondary: the evidence the estimate rests on."""

    dataset: str = Field(description="labelled secondary name")
    count: int = Field(description="images with both a distance and an F, >= 0")
    o_dist_mean: float = Field(description="size-free dataset distance, feature-space units")
    ods_f: float = Field(description="ODS F-score of the dataset, 0..1")
    ods_threshold: float | None = Field(description="ODS threshold, 0..0.99; null if unknown")
    mean_f: float = Field(description="mean per-image F at the ODS threshold, 0..1")
    loo_estimate: float | None = Field(
        description="estimate of this set's ODS by the whole procedure (predictor choice "
        "included) run on the other labelled sets, 0..1"
    )
    loo_error: float | None = Field(description="|loo_estimate - ods_f|, F units, 0..1")
    loo_predictor: str | None = Field(
        default=None,
        description="the predictor that procedure chose without this set (nested "
        "leave-one-out); null when no estimate is made",
    )


class Curve(Result):
    """A fitted curve of F against distance, with its bootstrap band."""

    x: list[float] = Field(description="distance grid (ascending), feature-space units or 0..1")
    f: list[float] = Field(description="fitted F at each x, 0..1, non-increasing")
    low: list[float] = Field(description="5th bootstrap percentile of the fit at each x, 0..1")
    high: list[float] = Field(description="95th bootstrap percentile of the fit at each x, 0..1")


class CandidateScore(Result):
    """One candidate predictor of a set's ODS, scored by leave-one-labelled-set-out error."""

    name: str = Field(
        description="'no_skill' (mean labelled ODS), 'i_dist_mean' (size-free I_dist), "
        "'novelty' (calibrated per-image novelty) or 'energy' (set-level energy distance)"
    )
    description: str = Field(description="the predictor and its fit, in words")
    level: Literal["image", "set"] = Field(
        description="'image': a per-image fit of F, averaged over the set and calibrated to "
        "ODS; 'set': a fit of ODS on one value per set"
    )
    available: bool = Field(description="every labelled and unlabelled set has its values")
    reason: str | None = Field(description="why it is not available; null when it is")
    loo_mae: float | None = Field(
        description="mean over labelled sets of |estimate without the set - its ODS|, F units"
    )
    loo_estimates: list[float | None] = Field(
        description="its estimate of each labelled set's ODS from the others, in `labelled` "
        "order, 0..1"
    )
    set_values: list[float | None] = Field(
        description="the predictor's value of each labelled set, in `labelled` order (mean "
        "over its images for image-level predictors); higher = farther"
    )
    chosen: bool = Field(description="the predictor chosen on all labelled sets")
    skill: bool = Field(
        default=False,
        description="not no_skill, and its loo_mae beats no_skill's by more than "
        "sampling_error; extrapolation is judged on the predictors with skill",
    )


class EstimateRange(Result):
    """Where one secondary lies against the labelled sets on one predictor."""

    predictor: str = Field(description="candidate predictor name")
    value: float = Field(description="the secondary's value of the predictor (higher = farther)")
    low: float = Field(description="smallest labelled set value")
    high: float = Field(description="largest labelled set value")
    side: Literal["inside", "below", "above"] = Field(
        description="'above': farther than every labelled set; 'below': closer than every one"
    )


class ImageEstimate(Result):
    """Expected F-score of one unlabelled image."""

    id: str = Field(description="image id")
    i_dist_mean: float = Field(description="size-free distance I_dist / n")
    expected_f: float = Field(description="fitted per-image F at this distance, 0..1")
    low: float = Field(description="5th bootstrap percentile of the fitted F, 0..1")
    high: float = Field(description="95th bootstrap percentile of the fitted F, 0..1")
    extrapolated: bool = Field(description="distance outside the labelled images' range")


class DatasetEstimate(Result):
    """Estimated ODS F-score of one secondary without labels (method-estimate.md)."""

    dataset: str = Field(description="secondary name")
    count: int = Field(description="images with a distance, >= 0")
    o_dist_mean: float | None = Field(description="size-free dataset distance")
    estimated_f: float | None = Field(
        description="estimated ODS F-score, 0..1; null when no estimate (see reason)"
    )
    low: float | None = Field(
        description="lower end of the 90% interval from the leave-one-set-out errors (between-"
        "set error included), 0..1; 0 when farther than every labelled set; with no skill, "
        "that of the no-skill baseline (the labelled sets' spread)"
    )
    high: float | None = Field(
        description="upper end of the 90% interval, 0..1; 1 when closer than every labelled set"
    )
    loo_mae: float | None = Field(
        description="leave-one-labelled-dataset-out MAE of the whole procedure (nested), F"
    )
    extrapolation: bool = Field(
        description="true when the set lies outside the labelled sets' range on some "
        "predictor (see ranges), or more than EXTRAPOLATION_SHARE of its images lie outside "
        "the labelled images' i_dist_mean range; no point estimate then"
    )
    share_outside: float | None = Field(
        description="share of images outside the labelled i_dist_mean range, 0..1"
    )
    o_dist_mean_outside: bool = Field(
        description="o_dist_mean outside the labelled datasets' o_dist_mean range"
    )
    dataset_fit_f: float | None = Field(
        description="second opinion: isotonic fit of ODS on o_dist_mean at this set, 0..1"
    )
    dataset_fit_low: float | None = Field(description="its 5th bootstrap percentile, 0..1")
    dataset_fit_high: float | None = Field(description="its 95th bootstrap percentile, 0..1")
    images: list[ImageEstimate] = Field(
        default_factory=list,
        description="per-image expected F, input order (may be left out of the top-level "
        "copy: dump with exclude={'secondaries': {'__all__': {'images'}}})",
    )
    reason: str | None = Field(description="why there is no estimate; null when there is one")
    predictor: str | None = Field(
        default=None, description="the chosen predictor the estimate comes from; null if none"
    )
    predictor_value: float | None = Field(
        default=None, description="this secondary's value of the chosen predictor"
    )
    interval_method: str | None = Field(
        default=None,
        description="how low/high were made: 'jackknife+' or 'student-t' (method-estimate.md)",
    )
    ranges: list[EstimateRange] = Field(
        default_factory=list,
        description="this secondary against the labelled sets' range on every available "
        "predictor (no_skill left out)",
    )
    extrapolation_side: Literal["above", "below"] | None = Field(
        default=None,
        description="'above': farther than every labelled set on some predictor (F bounded "
        "above only: low is 0); 'below': closer (high is 1); null when inside",
    )
    novel_count: int | None = Field(
        default=None, description="images flagged novel (calibrated novelty), >= 0"
    )
    novel_fraction: float | None = Field(
        default=None, description="novel_count / count, 0..1; beside it the base rate"
    )
    novelty_base_rate: float | None = Field(
        default=None, description="share of novel images expected of an unshifted set (1 - q)"
    )

    def gate_value(self, minimum: float | None, maximum: float | None) -> float | None:
        """The `estimated_f` gate's value: the interval's lower end against a `min`, its upper
        end against a `max` (the failing end when both are given); None, so the gate fails
        with `reason`, when no estimate was made (no skill, extrapolation, too little
        evidence)."""
        if self.estimated_f is None or self.low is None or self.high is None:
            return None
        if minimum is not None and (maximum is None or self.low < minimum):
            return self.low
        if maximum is not None and self.high > maximum:
            return self.high
        return self.low if minimum is not None else self.high


class Estimate(Result):
    """Performance estimated without labels from distance (paper abstract; method-estimate.md)."""

    source: str = Field(description="'adaptation:<model>' or 'predictions' (the user's model)")
    method: str = Field(description="the estimator in words")
    made: bool = Field(description="whether estimates were made")
    reason: str | None = Field(description="why not, when made is false")
    seed: int = Field(description="seed of the curves' bootstrap bands")
    n_bootstrap: int = Field(
        description="bootstrap replicates of the curves' bands (descriptive; the estimate's "
        "interval comes from the leave-one-set-out errors), >= 0"
    )
    interval: float = Field(description="central interval coverage, 0..1")
    min_labelled_datasets: int = Field(description="labelled datasets needed for an estimate")
    min_labelled_images: int = Field(description="labelled images needed for an estimate")
    extrapolation_share: float = Field(
        description="share of a secondary's images outside the labelled range above which it "
        "is flagged as extrapolation, 0..1"
    )
    offset: float | None = Field(
        description="i_dist_mean predictor: mean labelled ODS minus mean fitted per-image F, "
        "F units, -1..1"
    )
    loo_mae: float | None = Field(
        description="leave-one-labelled-dataset-out MAE of the whole procedure, the choice of "
        "predictor included (nested), F units"
    )
    dataset_fit_loo_mae: float | None = Field(
        description="leave-one-out MAE of the dataset-level fit (ODS on o_dist_mean), F units"
    )
    labelled_range: list[float] | None = Field(
        description="[min, max] i_dist_mean over labelled images"
    )
    labelled: list[LabelledSet] = Field(description="the labelled evidence per dataset")
    points: list[LabelledPoint] = Field(description="the labelled evidence per image")
    curve: Curve | None = Field(description="fit of per-image F on i_dist_mean with its band")
    curve_scaled: Curve | None = Field(
        description="second view: fit of per-image F on min-max scaled I_dist (0..1)"
    )
    dataset_curve: Curve | None = Field(description="fit of ODS on o_dist_mean with its band")
    secondaries: list[DatasetEstimate] = Field(description="one estimate per unlabelled set")
    candidates: list[CandidateScore] = Field(
        default_factory=list,
        description="every candidate predictor with its leave-one-out error; the one with "
        "the smallest error is chosen (no_skill on ties)",
    )
    chosen: str | None = Field(
        default=None, description="the predictor chosen on all labelled sets; null if none"
    )
    no_skill_loo_mae: float | None = Field(
        default=None, description="leave-one-out MAE of the no-skill baseline (mean ODS), F"
    )
    sampling_error: float | None = Field(
        default=None,
        description="mean over labelled sets of std(per-image F) / sqrt(images): the noise "
        "a predictor's LOO error must beat the no-skill error by, F units",
    )
    skill: bool | None = Field(
        default=None,
        description="the chosen predictor's LOO MAE beats no_skill_loo_mae by more than "
        "sampling_error; no estimate without it (reason 'no skill')",
    )
    interval_method: str | None = Field(
        default=None,
        description="'jackknife+' (distribution-free, needs >= 9 labelled sets at 90%) or "
        "'student-t' (normal between-set errors, fewer sets)",
    )

    def for_dataset(self, name: str) -> DatasetEstimate | None:
        """The estimate block of secondary `name`, or None."""
        return next((s for s in self.secondaries if s.dataset == name), None)


class RealisedEstimate(Result):
    """A secondary estimated in one run and labelled in a later one: estimate against truth."""

    dataset: str = Field(description="secondary name")
    run_id: str | None = Field(description="the run that made the estimate")
    finished: str | None = Field(description="run.finished of that run, ISO 8601 UTC")
    estimated_f: float | None = Field(
        description="its estimated ODS, 0..1 (null: no point estimate; see reason)"
    )
    low: float | None = Field(description="its 90% interval's lower end, 0..1")
    high: float | None = Field(description="its 90% interval's upper end, 0..1")
    predictor: str | None = Field(description="the predictor the estimate came from")
    reason: str | None = Field(description="why that run made no point estimate, if it did not")
    realised_run_id: str | None = Field(
        description="the first later run with masks (or predictions) for the secondary"
    )
    realised_f: float = Field(description="its realised ODS in that run, 0..1")
    error: float | None = Field(description="estimated_f - realised_f, F units")
    covered: bool | None = Field(description="low <= realised_f <= high; null without interval")
    running_mae: float | None = Field(
        description="mean |error| of every pair up to this one (oldest first), F units"
    )


class EstimateTrack(Result):
    """Estimated against realised performance over the runs of a store (NannyML style)."""

    source: str | None = Field(
        description="the model whose F is compared ('predictions' or 'adaptation:<model>')"
    )
    points: list[RealisedEstimate] = Field(
        description="one per (estimating run, secondary) later labelled, oldest first"
    )
    mae: float | None = Field(description="mean |error| over the points with an estimate, F")
    coverage: float | None = Field(
        description="share of the points with an interval whose interval held the realised F"
    )


# --------------------------------------------------------------------------- history (runs)


class ValueSummary(Result):
    """Summary statistics of a set of I_dist values (metrics.summary_stats; std ddof=0)."""

    count: int = Field(description="number of values, >= 0")
    mean: float | None = Field(description="mean I_dist (sum of distances to P); null if empty")
    std: float | None = Field(description="population std (ddof=0) of I_dist; null if empty")
    min: float | None = Field(description="smallest I_dist; null if empty")
    max: float | None = Field(description="largest I_dist; null if empty")
    p50: float | None = Field(description="median I_dist (numpy linear); null if empty")
    p90: float | None = Field(description="90th percentile of I_dist (numpy linear); null if empty")


class HistoryPoint(Result):
    """One secondary in one run (a point of its trend line)."""

    run_id: str | None = Field(description="run id YYYYMMDDTHHMMSSZ-xxxxxx; null if unknown")
    finished: str | None = Field(description="run.finished of that run, ISO 8601 UTC")
    count: int | None = Field(description="images in the secondary in that run, >= 0")
    o_dist: float | None = Field(description="O_dist = mean I_dist (grows with |P|), >= 0")
    o_dist_mean: float | None = Field(description="size-free O_dist / |P|, >= 0")
    i_dist_p90: float | None = Field(description="90th percentile of I_dist, >= 0")
    i_dist_scaled_p90: float | None = Field(description="90th percentile of scaled I_dist, [0, 1]")
    mmd_p_value: float | None = Field(description="MMD permutation p-value vs P, (0, 1]")
    o_dist_ratio: float | None = Field(description="o_dist_mean / null o_dist_mean of P, >= 0")
    estimated_f: float | None = Field(
        default=None, description="estimated ODS F-score without labels that night, [0, 1]"
    )


class Change(Result):
    """Change of one secondary from a reference run to the current run.

    abs = current - reference; rel = (current - reference) / |reference| (null when the
    reference is 0 or either value is missing)."""

    reference: str = Field(description="the reference run: its run id, or the report path")
    o_dist_mean_abs: float | None = Field(description="change of o_dist_mean (distance units)")
    o_dist_mean_rel: float | None = Field(
        description="relative change of o_dist_mean, e.g. 0.1 = +10%"
    )
    count_abs: int | None = Field(description="change of the image count (images)")
    count_rel: float | None = Field(description="relative change of the image count")
    i_dist_p90_abs: float | None = Field(description="change of the I_dist 90th percentile")
    i_dist_p90_rel: float | None = Field(description="relative change of the I_dist p90")
    mmd_p_value_abs: float | None = Field(description="change of the MMD p-value, in [-1, 1]")


class FarImage(Result):
    """A new image whose scaled I_dist lies in the selection band."""

    id: str = Field(description="image id (path relative to the dataset root)")
    i_dist: float | None = Field(description="I_dist: sum of distances to every P image")
    i_dist_scaled: float = Field(description="min-max scaled I_dist within the secondary, [0, 1]")


class NewImages(Result):
    """Images new since the previous run, against the images seen before (method.md §6)."""

    previous_run: str | None = Field(description="run id of the previous run compared with")
    by: str = Field(description="'sha256' (content hash) or 'id' (no hashes on one side)")
    count: int = Field(description="images in this run not in the previous run's dataset, >= 0")
    removed: int = Field(description="images of the previous run's dataset gone now, >= 0")
    seen: int = Field(description="images of this run also in the previous run, >= 0")
    i_dist_new: ValueSummary = Field(description="I_dist of the new images (this run's values)")
    i_dist_seen: ValueSummary = Field(description="I_dist of the images seen before (this run)")
    band: tuple[float, float] = Field(description="selection band of scaled I_dist, [lo, hi]")
    far_count: int = Field(description="new images with scaled I_dist in the band, >= 0")
    far_fraction: float = Field(description="far_count / count, [0, 1]; 0 when nothing is new")
    far: list[FarImage] = Field(description="the farthest new images in the band (at most 20)")


class ChangeTest(Result):
    """The images new since the previous run tested against that run's images (method.md
    §12.7): energy two-sample test and novelty against the previous run's own spread."""

    previous_run: str | None = Field(description="Run id of the previous run tested against.")
    previous_images: Count = Field(
        description="Previous-run images whose embedding was found (this run's vectors of the "
        "same content, else the embedding cache by content hash)."
    )
    previous_missing: Count = Field(
        description="Previous-run images whose embedding was not found (left out)."
    )
    new_images: Count = Field(description="Images new since the previous run.")
    energy_distance: float | None = Field(
        description="Energy distance of the new images from the previous run's (§12.1), in "
        "their joint PCA; null when either side has fewer than 2 images."
    )
    p_value: float | None = Field(
        description="Energy permutation p-value (metrics.energy_permutations), in (0, 1]."
    )
    p_value_adjusted: float | None = Field(
        description="p_value adjusted over the secondaries (metrics.p_adjustment)."
    )
    min_p_value: float | None = Field(description="Smallest attainable p: 1 / (1 + permutations).")
    novel_fraction: float | None = Field(
        description="Share of the new images beyond the previous run's novelty threshold "
        "(its leave-one-out k-NN q-quantile), in [0, 1]."
    )
    base_rate: float = Field(description="1 - q: novel_fraction expected with no change.")
    novelty_p_value: float | None = Field(
        description="One-sided binomial p of novel_fraction against base_rate."
    )
    reason: str | None = Field(description="Why a value is null; null when all were computed.")


class SecondaryHistory(Result):
    """One secondary of this run against the earlier runs."""

    name: str = Field(description="secondary dataset name")
    status: str = Field(description="'kept' (in the previous run too), 'added', or 'first run'")
    series: list[HistoryPoint] = Field(description="one point per run with it, oldest first")
    vs_previous: Change | None = Field(description="change since the previous run; null if absent")
    vs_baseline: Change | None = Field(description="change since the baseline; null if none")
    new_images: NewImages | None = Field(description="new images; null on the first run")
    o_dist_mean_change: float | None = Field(
        description="gate value: o_dist_mean_rel vs the baseline if given, else the previous run"
    )
    change: ChangeTest | None = optional_block(
        "The new images tested against the previous run's images (method.md §12.7)."
    )


class History(Result):
    """The `history` block of report.json: this run against the earlier runs of the store."""

    run_id: str | None = Field(description="this run's id; null when not run from a store")
    runs: list[str | None] = Field(description="run ids of the series, oldest first, this run last")
    previous_run: str | None = Field(description="run id of the previous run; null on the first")
    baseline: str | None = Field(description="baseline run id or report path; null if none")
    band: tuple[float, float] = Field(description="selection band of scaled I_dist, [lo, hi]")
    secondaries: list[SecondaryHistory] = Field(description="per secondary of this run")
    removed_secondaries: list[str] = Field(description="secondaries of the previous run gone now")
    new_ids: dict[str, list[str]] = Field(
        description="secondary -> ids of its images flagged new: true (all others false)"
    )
    warnings: list[str] = Field(description="why some runs may not be comparable, or were skipped")
    skipped_runs: list[str] | None = optional_block(
        "Earlier runs of the store skipped because their report.json could not be read (empty, "
        "truncated, a field of the wrong type), each with why; the runs above exclude them."
    )
    not_comparable: str | None = optional_block(
        "Why the reference run of o_dist_mean_change (the baseline if set, else the previous "
        "run) measured something else (another extractor, image size, primary or PCA dims): "
        "o_dist_mean_change is then null and a gate on it fails with this reason."
    )
    estimates: EstimateTrack | None = optional_block(
        "Secondaries estimated in an earlier run and labelled later: estimate against "
        "realised ODS, with the estimator's running error (method-estimate.md)."
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
