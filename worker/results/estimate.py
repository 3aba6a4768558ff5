"""Report blocks of the performance estimate (method-estimate.md): labelled evidence, curves,
candidate estimators, per-dataset and per-image estimates and the estimate track.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from worker.results.base import Result

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
