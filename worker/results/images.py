"""Report blocks about images and selections: image sources, per-image results, class crops,
the pair PCA, random comparisons and the selection blocks.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from worker.results.base import Count, Cover, Result, Spread, Summary, _is_none, optional_block


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
    labelled_pool: Count = Field(
        default=0,
        description="Labelled images in no dataset of the job (selection.labelled folders, "
        "prefixes, files), embedded by the first model and added to every selection's pool "
        "as if in P.",
    )
    labelled_unmatched: list[str] = Field(
        default_factory=list,
        description="selection.labelled entries that matched no image (also in warnings).",
    )
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
    labelled_outside: Count = Field(
        default=0,
        description="Labelled images outside this secondary (selection.labelled) in its pool "
        "beside P: centres for kcenter and novel and for the coverage judged against random.",
    )
    novel: Count = Field(description="Novel images (beyond P's calibrated quantile).")
    held_out: Count = Field(
        default=0,
        description="Images of the adaptation's held-out split: never selected, scored by "
        "every model (adaptation.held_out).",
    )
