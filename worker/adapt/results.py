"""report.json's `adaptation` block as pydantic v2 models, and the pure functions that fill
its judgements: the verdicts of each result and the model-selection summary (method.md §5.5).

Layout: `Adaptation` keeps the single-architecture fields (`model`, `models`, `results`,
`splits`: the baseline architecture, the first of adaptation.models, so the f_slope / ods_f
gates keep their meaning) and adds `architectures[]` (one complete block per architecture,
the baseline included), `datasets[]` (which secondaries gave training images, which are blind)
and `summary` (`summarise`).

Verdicts (`baseline_verdict`, `adapted_verdict`), per scored set:
- M answers "does M need fine-tuning": fine-tuning is recommended when some M{q} raised the ODS
  F-score by GAIN_TOL or more over M on the set, or when F falls with I_dist (the slope rule of
  `worker.adapt.run.verdict`); "no fine-tuning needed" only when F is flat (or rising) AND no
  M{q} gained GAIN_TOL.
- M{q} and M_B{q} answer "did adaptation flatten the curve": M's slope on the set against
  theirs. Falling before (slope <= -SLOPE_TOL) and not after: flattened; less steep: reduced;
  else not flattened. Flat before: "already flat".

Numbers are plain floats, null where undefined (never NaN).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SLOPE_TOL = 0.1
MIN_IMAGES = 5
GAIN_TOL = 0.02  # ODS F-score points: a smaller gain from labels is treated as none
TENDENCY_TOL = 0.05  # precision - recall beyond which a model leans one way
STABLE_MIN_SHARE = 0.5  # "most stable" only among architectures with >= half the best ODS


class AdaptBlock(BaseModel):
    """Base of the adaptation block's models: unknown keys and NaN/infinity refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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
    training_seconds: float = Field(description="wall time to train all its models, seconds")
    parameters: int = Field(description="parameters of one model, count")


class Statement(AdaptBlock):
    criterion: str = Field(description="e.g. 'most stable across unseen data'")
    architectures: list[str] = Field(description="the winner(s); empty when not measurable")
    statement: str = Field(description="one plain sentence with the numbers it rests on")
    values: dict[str, float | None] = Field(description="architecture -> the number compared")


class SelectionSummary(AdaptBlock):
    architectures: list[ArchitectureSummary] = Field(description="one row per architecture")
    statements: list[Statement] = Field(description="one statement per criterion")
    rule: str = Field(description="how each criterion is decided")


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


# ----------------------------------------------------------------------------- verdicts


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def baseline_verdict(
    slope_verdict: str,
    slope: float | None,
    ods_m: float | None,
    adapted_ods: dict[str, float | None],
) -> str:
    """M's verdict from its slope verdict (`worker.adapt.run.verdict`) and the ODS of the
    M{q} models on the same images (`adapted_ods`: name -> ODS F)."""
    if slope_verdict.startswith(("not enough", "not applicable")):
        return slope_verdict
    gains = {k: v - ods_m for k, v in adapted_ods.items() if v is not None and ods_m is not None}
    if not gains:
        return slope_verdict
    best = max(gains, key=lambda k: (gains[k], -list(gains).index(k)))
    g = gains[best]
    falls = slope_verdict.startswith("fine-tuning recommended")
    slope_txt = f"slope of F against I_dist {_fmt(slope, '+.3f')}"
    if g >= GAIN_TOL:
        tail = f"; F also falls with distance ({slope_txt})" if falls else f" ({slope_txt})"
        return (
            f"fine-tuning recommended: {best} raised ODS F from {ods_m:.3f} to "
            f"{adapted_ods[best]:.3f} ({g:+.3f}){tail}"
        )
    if falls:
        return (
            f"fine-tuning recommended: F falls with distance ({slope_txt}), but the labels tried "
            f"did not raise ODS F (best {best}: {g:+.3f}); try more labels or another "
            "architecture"
        )
    if slope_verdict.startswith("inconclusive"):
        return (
            f"inconclusive: F tends to fall with distance ({slope_txt}, not significant) and "
            f"the labels tried did not raise ODS F (best {best}: {g:+.3f})"
        )
    return (
        f"no fine-tuning needed: F does not fall with distance ({slope_txt}) and no M{{q}} "
        f"raised ODS F by {GAIN_TOL} or more (best {best}: {g:+.3f})"
    )


def adapted_verdict(
    slope_before: float | None,
    slope_after: float | None,
    ods_before: float | None,
    ods_after: float | None,
    n: int,
) -> str:
    """An adapted model's verdict: did adaptation flatten M's F-vs-I_dist curve?"""
    if n < MIN_IMAGES or slope_before is None or slope_after is None:
        return f"not enough images to judge (fewer than {MIN_IMAGES} with I_dist)"
    change = f"slope {slope_before:+.3f} -> {slope_after:+.3f}"
    if ods_before is not None and ods_after is not None:
        change += f", ODS F {ods_before:.3f} -> {ods_after:.3f}"
    if slope_before <= -SLOPE_TOL:
        if slope_after > -SLOPE_TOL:
            return f"adaptation flattened the curve ({change})"
        if slope_after > slope_before:
            return f"adaptation reduced the fall but did not flatten the curve ({change})"
        return f"adaptation did not flatten the curve ({change})"
    if slope_after <= -SLOPE_TOL:
        return f"the curve was flat before adaptation and now falls with distance ({change})"
    return f"the curve was already flat before adaptation ({change})"


# ----------------------------------------------------------------------------- summary


def _mean(values: list[float | None]) -> float | None:
    v = [float(x) for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _adapted_name(models: list[TrainedModel]) -> str | None:
    plain = [m for m in models if m.q > 0 and m.negatives == 0]
    return max(plain, key=lambda m: m.q).name if plain else None


def summarise_architecture(block: ArchitectureBlock) -> ArchitectureSummary:
    """One row of the summary from one architecture's results (pure)."""
    by = {(r.model, r.dataset): r for r in block.results}
    pos = sorted({r.dataset for r in block.results if r.model == "M" and r.mask_pixels > 0})
    neg = sorted({r.dataset for r in block.results if r.model == "M" and r.mask_pixels == 0})
    base = [by[("M", d)] for d in pos]
    adapted = _adapted_name(block.models)
    last = block.models[-1].name if len(block.models) > 1 else None
    b_ods = _mean([r.ods_f for r in base])
    a_ods = _mean([by[(adapted, d)].ods_f for d in pos if (adapted, d) in by]) if adapted else None
    p, r = _mean([x.precision for x in base]), _mean([x.recall for x in base])
    tendency = None
    if p is not None and r is not None:
        tendency = (
            "precision"
            if p - r >= TENDENCY_TOL
            else "recall"
            if r - p >= TENDENCY_TOL
            else "balanced"
        )
    return ArchitectureSummary(
        architecture=block.label,
        baseline_ods_unseen=b_ods,
        generalisation_slope=_mean([x.f_slope for x in base]),
        adapted_model=adapted,
        adapted_ods=a_ods,
        gain=None if a_ods is None or b_ods is None else a_ods - b_ods,
        precision=p,
        recall=r,
        tendency=tendency,
        noise_fp_rate=_mean([by[("M", d)].fp_rate for d in neg]),
        noise_fp_rate_adapted=(
            _mean([by[(last, d)].fp_rate for d in neg if (last, d) in by]) if last else None
        ),
        training_seconds=float(sum(m.training_seconds or 0.0 for m in block.models)),
        parameters=block.parameters,
    )


def _pick(
    rows: list[ArchitectureSummary],
    criterion: str,
    key: str,
    *,
    higher: bool,
    what: str,
    fmt: str = ".3f",
    eligible: set[str] | None = None,
    missing: str = "not measured",
) -> Statement:
    values = {r.architecture: getattr(r, key) for r in rows}
    pool = {
        a: v for a, v in values.items() if v is not None and (eligible is None or a in eligible)
    }
    if not pool:
        return Statement(
            criterion=criterion,
            architectures=[],
            statement=f"{criterion}: {missing}",
            values=values,
        )
    best = max(pool.values()) if higher else min(pool.values())
    winners = [a for a, v in pool.items() if abs(v - best) <= 1e-9]
    others = [
        f"{a} {format(v, fmt)}" for a, v in values.items() if a not in winners and v is not None
    ]
    who = " and ".join(winners) + (" tie as" if len(winners) > 1 else " is")
    text = f"{who} {criterion}: {what} {format(best, fmt)}"
    if others:
        text += f" (others: {', '.join(others)})"
    excluded = sorted(a for a in values if eligible is not None and a not in eligible)
    if excluded:
        text += (
            f"; {', '.join(excluded)} not considered (baseline ODS below "
            f"{STABLE_MIN_SHARE:.0%} of the best)"
        )
    return Statement(criterion=criterion, architectures=winners, statement=text, values=values)


SUMMARY_RULE = (
    "Per architecture, over the scored secondaries with positive mask pixels (all unseen by "
    "M): baseline ODS = mean ODS F of M; generalisation slope = mean slope of M's per-image F "
    "against scaled I_dist; gain = mean ODS F of the largest M{q} minus baseline ODS; "
    f"precision / recall = means at M's ODS threshold (a tendency when they differ by "
    f">= {TENDENCY_TOL}); noise = mean false-positive pixel rate of M on sets without "
    "positive pixels; cost = training wall time of all its models. 'Most stable across unseen "
    "data' = the least negative generalisation slope among architectures whose baseline ODS "
    f"is at least {STABLE_MIN_SHARE:.0%} of the best (a model that fails everywhere is flat)."
)


def summarise(blocks: list[ArchitectureBlock]) -> SelectionSummary:
    """The model-selection summary: one row per architecture and one statement per criterion
    (pure; rule in SUMMARY_RULE)."""
    rows = [summarise_architecture(b) for b in blocks]
    best_ods = max((r.baseline_ods_unseen or 0.0 for r in rows), default=0.0)
    eligible = {
        r.architecture
        for r in rows
        if r.baseline_ods_unseen is not None
        and r.baseline_ods_unseen >= STABLE_MIN_SHARE * best_ods
    }
    adapted = {r.adapted_model for r in rows if r.adapted_model}
    q_label = adapted.pop() if len(adapted) == 1 else "M{q}"
    labels = q_label[1:] if q_label.startswith("M") and q_label[1:].isdigit() else "the largest q"
    statements = [
        _pick(
            rows,
            "best on unseen data",
            "baseline_ods_unseen",
            higher=True,
            what="ODS F of M on unseen sets",
        ),
        _pick(
            rows,
            "most stable across unseen data",
            "generalisation_slope",
            higher=True,
            what="slope of F against I_dist",
            fmt="+.3f",
            eligible=eligible,
        ),
        _pick(
            rows,
            f"best after {labels} labels",
            "adapted_ods",
            higher=True,
            what=f"ODS F of {q_label}",
            missing="not measured: no M{q} was trained",
        ),
        _pick(
            rows,
            "largest gain from labels",
            "gain",
            higher=True,
            what=f"ODS F gain from M to {q_label}",
            fmt="+.3f",
            missing="not measured: no M{q} was trained",
        ),
        _pick(
            rows,
            "highest precision",
            "precision",
            higher=True,
            what="precision of M at its ODS threshold",
        ),
        _pick(
            rows, "highest recall", "recall", higher=True, what="recall of M at its ODS threshold"
        ),
        _pick(
            rows,
            "least noise",
            "noise_fp_rate",
            higher=False,
            what="false-positive pixel rate of M on sets without positive pixels",
            fmt=".2e",
            missing="not measured: no scored set without positive pixels",
        ),
        _pick(
            rows,
            "cheapest to train",
            "training_seconds",
            higher=False,
            what="seconds to train all its models",
            fmt=".1f",
        ),
    ]
    return SelectionSummary(architectures=rows, statements=statements, rule=SUMMARY_RULE)


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
