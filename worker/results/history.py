"""Report blocks comparing this run with earlier runs of the same store (history)."""

from __future__ import annotations

from pydantic import Field

from worker.results.base import Count, Result, optional_block
from worker.results.estimate import EstimateTrack

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
