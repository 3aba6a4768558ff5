"""report.json's `adaptation` block as pydantic v2 models (docs/method.md §5), and the gate
reader `adaptation_metric`. The judgements that fill it live in `worker.adapt.verdicts` (per
result) and `worker.adapt.summary` (across architectures).

Layout: `Adaptation` keeps the single-architecture fields (`model`, `models`, `results`,
`splits`: the baseline architecture, the first of adaptation.models, so the f_slope / ods_f
gates keep their meaning) and adds `architectures[]` (one complete block per architecture,
the baseline included), `datasets[]` (which secondaries gave training images, which are blind)
and `summary`.

Numbers are plain floats, null where undefined (never NaN).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from worker.base import Model

TENDENCY_TOL = 0.05  # precision - recall beyond which a model leans one way


class AdaptBlock(Model):
    """Base of the adaptation block's models: unknown keys and NaN/infinity refused."""


class PerImageF(AdaptBlock):
    id: str = Field(description="image id (path relative to the dataset root)")
    f: float | None = Field(
        description="F-score of the image at the set's ODS threshold, 0..1; null on a set "
        "whose masks have no positive pixel (see f_null_reason)"
    )
    fp_rate: float | None = Field(
        default=None,
        description="false-positive pixel rate of the image at fp_threshold, 0..1 "
        "(FP / negative pixels); only on sets whose masks have no positive pixel",
    )


class FSplitPart(AdaptBlock):
    mean: float | None = Field(description="mean per-image F of the part, 0..1")
    std: float | None = Field(description="population std of per-image F of the part, 0..1")
    i_dist_mean: float | None = Field(description="mean I_dist of the part (feature units)")
    i_dist_std: float | None = Field(description="std of I_dist of the part (feature units)")
    count: int = Field(description="images in the part")


class FSplitTable(AdaptBlock):
    halves: list[FSplitPart] = Field(description="images sorted by I_dist, 2 equal parts")
    thirds: list[FSplitPart] = Field(description="images sorted by I_dist, 3 equal parts")


class AdaptationScore(AdaptBlock):
    """One trained model scored on one secondary."""

    model: str = Field(description="M, M{q} or M_B{q}")
    dataset: str = Field(description="secondary dataset name")
    architecture: str = Field(description="architecture label (adaptation.models[].label)")
    blind: bool = Field(description="true for a select: false set (never trains a model)")
    count: int = Field(
        description="images scored (training images and images without I_dist "
        "excluded; the same images for every model)"
    )
    mask_pixels: int = Field(description="positive mask pixels over the scored images")
    ods_f: float | None = Field(description="ODS F-score, 0..1; null when no positive pixel")
    ods_threshold: float | None = Field(
        description="ODS threshold, 0.00..0.99; null when no positive pixel"
    )
    ois_f: float | None = Field(description="OIS F-score, 0..1; null when no positive pixel")
    precision: float | None = Field(description="pixel precision at the ODS threshold, 0..1")
    recall: float | None = Field(description="pixel recall at the ODS threshold, 0..1")
    f_slope: float | None = Field(
        description="least-squares slope of per-image F against min-max scaled I_dist "
        "(F change from nearest to farthest image, -1..1)"
    )
    f_spearman: float | None = Field(description="Spearman rho of per-image F vs I_dist, -1..1")
    f_spearman_p: float | None = Field(description="two-sided p-value of f_spearman, 0..1")
    gain_over_baseline: float | None = Field(
        default=None, description="ods_f minus M's ods_f on the same images, -1..1 (null for M)"
    )
    verdict: str = Field(description="plain-language judgement (rule in verdict_rule)")
    f_null_reason: str | None = Field(
        default=None, description="why the F-scores are null (a set without positive pixels)"
    )
    fp_rate: float | None = Field(
        default=None,
        description="false-positive pixel rate over the set at fp_threshold, 0..1 "
        "(appendix C: noise); only on sets whose masks have no positive pixel",
    )
    fp_threshold: float | None = Field(
        default=None,
        description="threshold of fp_rate: the model's ODS threshold over every scored set "
        "with positive pixels pooled (0.5 when there is none), 0.00..0.99",
    )
    training_seconds: float = Field(description="wall time to train this model, seconds")
    per_image: list[PerImageF] = Field(description="per-image scores, in scoring order")


class TrainedModel(AdaptBlock):
    name: str = Field(description="M, M{q} or M_B{q}")
    q: int = Field(description="selected images of every selectable secondary added, >= 0")
    negatives: int = Field(description="images with empty masks added, >= 0")
    train_ids: list[str] = Field(description="training images: P ids, others 'dataset/id'")
    training_seconds: float | None = Field(default=None, description="training wall time, s")
    final_loss: float | None = Field(default=None, description="last epoch's BCE + Dice loss")


class SelectionIds(AdaptBlock):
    q: int = Field(description="images selected per secondary, >= 1")
    ids: list[str] = Field(description="ids chosen from this secondary for M{q}")


class DatasetRole(AdaptBlock):
    name: str = Field(description="secondary dataset name")
    role: Literal["selected", "blind"] = Field(
        description="selected: gives q images to M{q}; blind (select: false): scored only"
    )
    scored: bool = Field(description="whether the set has masks and was scored")
    selections: list[SelectionIds] | None = Field(
        description="the images that trained M{q}; null for a blind set"
    )


class SeedScore(AdaptBlock):
    """One model of one architecture and seed scored on one secondary (the numbers of
    AdaptationScore without the per-image lists)."""

    seed: int = Field(description="training seed of this run")
    model: str = Field(description="M, M{q} or M_B{q}")
    dataset: str = Field(description="secondary dataset name")
    ods_f: float | None = Field(description="ODS F-score, 0..1; null when no positive pixel")
    ois_f: float | None = Field(description="OIS F-score, 0..1; null when no positive pixel")
    precision: float | None = Field(description="pixel precision at the ODS threshold, 0..1")
    recall: float | None = Field(description="pixel recall at the ODS threshold, 0..1")
    f_slope: float | None = Field(
        description="least-squares slope of per-image F against min-max scaled I_dist, -1..1"
    )
    gain_over_baseline: float | None = Field(
        description="ods_f minus the same seed's M ods_f, -1..1 (null for M)"
    )
    fp_rate: float | None = Field(
        description="false-positive pixel rate at fp_threshold, 0..1 (sets without positives)"
    )
    training_seconds: float = Field(description="wall time to train this model, seconds")


class MeanStd(AdaptBlock):
    mean: float | None = Field(description="mean over seeds; null when a seed has no value")
    std: float | None = Field(
        description="sample standard deviation over seeds (ddof = 1); null with one seed"
    )


class SeedSpread(AdaptBlock):
    """Mean and standard deviation over the seeds of one model on one secondary."""

    model: str = Field(description="M, M{q} or M_B{q}")
    dataset: str = Field(description="secondary dataset name")
    seeds: int = Field(description="number of seeds, >= 1")
    ods_f: MeanStd = Field(description="ODS F-score over seeds, 0..1")
    ois_f: MeanStd = Field(description="OIS F-score over seeds, 0..1")
    precision: MeanStd = Field(description="precision at ODS over seeds, 0..1")
    recall: MeanStd = Field(description="recall at ODS over seeds, 0..1")
    f_slope: MeanStd = Field(description="slope of per-image F against scaled I_dist, -1..1")
    gain_over_baseline: MeanStd = Field(description="ods_f minus M's ods_f (paired by seed)")
    fp_rate: MeanStd = Field(description="false-positive pixel rate (sets without positives)")
    training_seconds: MeanStd = Field(description="training wall time, seconds")


class TrivialBaseline(AdaptBlock):
    """What a map that marks every pixel, or none, scores on one evaluated set (ODS
    conventions, method.md §5.8): the floor a model must clear to be learning anything."""

    dataset: str = Field(description="secondary dataset name")
    count: int = Field(description="images evaluated (the images every model is scored on)")
    pixels: int = Field(description="pixels of their masks, count")
    positive_pixels: int = Field(description="positive mask pixels, count")
    prevalence: float | None = Field(description="positive_pixels / pixels, 0..1")
    f_all_positive: float | None = Field(
        description="F of the all-positive map: 2 prevalence / (1 + prevalence), 0..1; null "
        "without positive pixels"
    )
    f_all_negative: float | None = Field(
        description="F of the all-negative map (R = 0, so 0 with positive pixels), 0..1; null "
        "without positive pixels"
    )
    f_trivial: float | None = Field(
        description="the larger of f_all_positive and f_all_negative, 0..1"
    )


class ArchitectureBlock(AdaptBlock):
    """Everything one architecture produced: its trained models and their scores."""

    label: str = Field(description="unique name in this report")
    name: Literal["unet", "unetplusplus", "segformer", "upernet"] = Field(
        description="architecture kind"
    )
    checkpoint: str | None = Field(description="whole-model checkpoint, if any")
    encoder: str | None = Field(description="encoder weights folder, if any")
    parameters: int = Field(description="trainable and frozen parameters of one model, count")
    models: list[TrainedModel] = Field(description="M, M{q}, M_B{q} in training order")
    results: list[AdaptationScore] = Field(description="every model on every scored secondary")
    splits: dict[str, dict[str, FSplitTable]] = Field(
        description="dataset -> model -> F by I_dist halves and thirds (sets with positives)"
    )
    per_seed: list[SeedScore] = Field(
        default_factory=list,
        description="every model on every scored secondary for every seed (results[] and "
        "splits hold the first seed, adaptation.seeds[0], with the per-image scores)",
    )
    over_seeds: list[SeedSpread] = Field(
        default_factory=list, description="mean and standard deviation over seeds of per_seed"
    )
    held_out_results: list[AdaptationScore] = Field(
        default_factory=list,
        description="every model on the held-out split of every scored secondary that has one",
    )


class HeldOutSplit(AdaptBlock):
    """One secondary's held-out split: chosen by I_dist strata before selection, never
    selected nor trained on, scored by every model (method.md §5.7)."""

    dataset: str = Field(description="secondary name")
    ids: list[str] = Field(description="the held-out image ids scored, ascending I_dist")
    far_count: int = Field(
        description="held-out images whose scaled I_dist lies in selection.band (far images)"
    )
    i_dist_scaled_max: float | None = Field(
        description="largest scaled I_dist in the split, 0..1 (1: the farthest image of S)"
    )


class HeldOut(AdaptBlock):
    """The fixed held-out evaluation (adaptation.held_out): the same images for M, M{q},
    M_B{q}, so the farthest images are scored even when the selections take far ones."""

    fraction: float = Field(description="adaptation.held_out: share of each selectable set")
    splits: list[HeldOutSplit] = Field(description="one per scored secondary with a split")
    results: list[AdaptationScore] = Field(
        description="the baseline architecture's models on each split (as `results`)"
    )


class ArchitectureSummary(AdaptBlock):
    architecture: str = Field(description="architecture label")
    baseline_ods_unseen: float | None = Field(
        description="mean ODS F of M over the scored sets with positive pixels, 0..1"
    )
    generalisation_slope: float | None = Field(
        description="mean F-vs-scaled-I_dist slope of M over those sets (0 = flat), -1..1"
    )
    adapted_model: str | None = Field(description="the M{q} with the largest q (no negatives)")
    adapted_ods: float | None = Field(description="mean ODS F of adapted_model, 0..1")
    gain: float | None = Field(description="adapted_ods - baseline_ods_unseen, -1..1")
    precision: float | None = Field(description="mean precision of M at ODS, 0..1")
    recall: float | None = Field(description="mean recall of M at ODS, 0..1")
    tendency: Literal["precision", "recall", "balanced"] | None = Field(
        description=f"precision / recall when one exceeds the other by >= {TENDENCY_TOL}"
    )
    noise_fp_rate: float | None = Field(
        description="mean false-positive pixel rate of M on sets without positive pixels, 0..1"
    )
    noise_fp_rate_adapted: float | None = Field(
        description="the same for the last trained model (largest M_B{q}, else adapted_model)"
    )
    training_seconds: float = Field(
        description="wall time to train all its models, seconds (mean over seeds)"
    )
    parameters: int = Field(description="parameters of one model, count")
    baseline_ods_unseen_std: float | None = Field(
        default=None, description="std over seeds of baseline_ods_unseen (ddof = 1)"
    )
    trivial_f_unseen: float | None = Field(
        default=None,
        description="mean over the same sets of the trivial baselines' F (f_trivial), 0..1",
    )
    not_learning: bool = Field(
        default=False,
        description="baseline_ods_unseen does not exceed trivial_f_unseen by more than the "
        "margin in summary.rule: the architecture is flagged 'not learning'",
    )
    gain_std: float | None = Field(default=None, description="std over seeds of gain")
    labelled_images: int | None = Field(
        default=None, description="images adapted_model trained on beyond M's, count"
    )
    gain_per_image: float | None = Field(
        default=None, description="gain / labelled_images, ODS F points per labelled image"
    )
    instability: float | None = Field(
        default=None,
        description="stability criterion: mean |f_slope| of M over the sets with positive "
        "pixels and the seeds, F points from the nearest to the farthest image, 0..1; "
        "smaller is flatter",
    )
    instability_std: float | None = Field(default=None, description="std over seeds of instability")
    flat: bool | None = Field(
        default=None, description="instability below the flat threshold of summary.rule"
    )
    training_seconds_std: float | None = Field(
        default=None, description="std over seeds of training_seconds"
    )


class Comparison(AdaptBlock):
    """One criterion, two architectures: is the difference beyond the noise?"""

    criterion: Literal["ods_unseen", "gain", "stability", "cost"] = Field(
        description="ods_unseen, gain, stability (instability) or cost (training_seconds)"
    )
    a: str = Field(description="architecture label")
    b: str = Field(description="architecture label")
    difference: float | None = Field(
        description="a's value minus b's (for stability: instability; cost: seconds)"
    )
    low: float | None = Field(
        description="2.5% quantile of the paired bootstrap difference (null for cost)"
    )
    high: float | None = Field(
        description="97.5% quantile of the paired bootstrap difference (null for cost)"
    )
    distinguishable: bool = Field(
        description="the interval excludes 0 (cost: the slower takes more than 1 + the cost "
        "tolerance times the faster's seconds)"
    )


class Reason(AdaptBlock):
    """One criterion behind the recommendation, in numbers."""

    criterion: Literal["ods_unseen", "gain", "gain_per_image", "stability", "cost"] = Field(
        description="the quantity compared"
    )
    value: float | None = Field(description="the recommended architecture's value")
    runner_up_value: float | None = Field(description="the runner-up's value")
    distinguishable: bool | None = Field(
        description="whether the two differ beyond the noise (null: not tested)"
    )


class Recommendation(AdaptBlock):
    """The one architecture to use, or why none is named."""

    architecture: str | None = Field(
        description="the recommended architecture's label; null when no architecture is "
        "distinguishable from another or none beats the trivial baselines"
    )
    decided_by: str | None = Field(
        description="the criterion of adaptation.choose_by that separated it (or "
        "'only architecture', 'only learning architecture')"
    )
    runner_up: str | None = Field(description="the next best architecture, if any")
    reason: str = Field(description="one plain-words sentence with the numbers it rests on")
    reasons: list[Reason] = Field(description="every criterion: recommended vs runner-up")
    trade_off: str | None = Field(
        description="what the runner-up does better beyond the noise, in words; null without "
        "a runner-up"
    )


class Statement(AdaptBlock):
    criterion: str = Field(description="e.g. 'most stable across unseen data'")
    architectures: list[str] = Field(description="the winner(s); empty when not measurable")
    statement: str = Field(description="one plain sentence with the numbers it rests on")
    values: dict[str, float | None] = Field(description="architecture -> the number compared")


class SelectionSummary(AdaptBlock):
    architectures: list[ArchitectureSummary] = Field(description="one row per architecture")
    statements: list[Statement] = Field(description="one statement per criterion")
    rule: str = Field(description="how each criterion is decided")
    choose_by: list[str] = Field(
        default_factory=list, description="criteria in priority order (adaptation.choose_by)"
    )
    comparisons: list[Comparison] = Field(
        default_factory=list,
        description="every pair of architectures on every criterion, with the noise",
    )
    recommended: Recommendation | None = Field(
        default=None, description="the one architecture recommended, with its reasons"
    )


class Adaptation(AdaptBlock):
    """report.json `adaptation`."""

    model: str = Field(description="baseline architecture kind (the first of models)")
    checkpoint: str | None = Field(description="baseline architecture's checkpoint, if any")
    baseline_architecture: str = Field(description="label of the baseline architecture")
    selection: str = Field(description="selection strategy of the M{q} images")
    epochs: int = Field(description="training epochs of every model")
    image_size: int = Field(description="square training / scoring size, pixels")
    verdict_rule: str = Field(description="how the verdicts are decided")
    datasets: list[DatasetRole] = Field(description="every secondary and its role")
    models: list[TrainedModel] = Field(description="the baseline architecture's models")
    results: list[AdaptationScore] = Field(description="the baseline architecture's results")
    splits: dict[str, dict[str, FSplitTable]] = Field(description="the baseline's splits")
    architectures: list[ArchitectureBlock] = Field(description="every architecture, baseline 1st")
    summary: SelectionSummary = Field(description="model-selection summary across architectures")
    seeds: list[int] = Field(
        default_factory=list,
        description="training seeds of every architecture and model (adaptation.seeds)",
    )
    baselines: list[TrivialBaseline] = Field(
        default_factory=list, description="trivial baselines of every scored secondary"
    )
    held_out: HeldOut | None = Field(
        default=None,
        description="every model scored on a fixed held-out split of each selectable set "
        "(adaptation.held_out > 0); `results` score the images left after selection",
    )


def adaptation_metric(
    adaptation: Adaptation | dict,
    dataset: str,
    metric: str,
    model: str | None = None,
    architecture: str | None = None,
) -> float | None:
    """f_slope / ods_f (or any AdaptationScore number) of one result, for the gates: `model`
    defaults to 'M', `architecture` to the baseline (the top-level results)."""
    ad = adaptation if isinstance(adaptation, dict) else adaptation.model_dump()
    results = ad.get("results", [])
    if architecture is not None:
        block = next((a for a in ad.get("architectures", []) if a["label"] == architecture), None)
        if block is None:
            return None
        results = block["results"]
    wanted = model or "M"
    for r in results:
        if r["dataset"] == dataset and r["model"] == wanted:
            return r.get(metric)
    return None
