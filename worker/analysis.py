"""The measure stage for one feature extractor: P and every S -> the report's numbers.

Wires PCA, metrics, selection and statistics together (docs/method.md sections 1-4); every
number itself comes from a pure function in worker.metrics / worker.selection / worker.stats,
and every result is a typed block of worker.results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from worker import metrics, selection, stats
from worker.change_analysis import change_test, change_tests, previous_vectors  # noqa: F401
from worker.embeddings import EmbeddedSet
from worker.job import Job
from worker.many_analysis import (  # noqa: F401
    analyse_matrix,
    compare_groups,
    rank_disagreements,
    rank_secondaries,
    ranking_values,
)
from worker.pair_passes import (
    PairSpace,
    _cover,
    _duplicates,
    _energy,
    _engine_kw,
    _novelty,
    _pair_passes,
    _selections,
    _spread,
    _statistics,
    project_pair,
)
from worker.pca import joint_pca
from worker.results import (
    ClassDistance,
    CropClasses,
    ImageResult,
    ImageSource,
    NoveltySummary,
    PcaSummary,
    Perturbation,
    PrimaryResult,
    SecondaryResult,
    Splits,
    Spread,
    Summary,
    SweepRow,
    Verdict,
)


@dataclass
class ScatterPoints:
    """2-D coordinates of P and every S from one PCA fitted on all of them (method.md §2.3)."""

    names: list[str]  # primary first
    points: dict[str, np.ndarray]  # name -> (count, 2)
    selected: dict[str, list[int]] = field(default_factory=dict)  # S name -> rows outlined


@dataclass
class ModelAnalysis:
    """The measure stage's result for one extractor: typed report blocks plus the row indices
    and 2-D points that later stages (adaptation, figures) need."""

    primary: PrimaryResult
    pca: PcaSummary
    secondaries: list[SecondaryResult]
    o_dist: dict[str, float]
    o_dist_scaled: dict[str, float]
    pca_sweep: list[SweepRow]
    pca_sweep_stable: bool
    warnings: list[str] = field(default_factory=list)
    #: S name -> (strategy, count) -> chosen row indices into S
    selections: dict[str, dict[tuple[str, int], list[int]]] = field(default_factory=dict)
    #: S name -> rows of the adaptation's held-out split (adaptation.held_out)
    held_out: dict[str, list[int]] = field(default_factory=dict)
    scatter: ScatterPoints | None = None


@dataclass
class SecondaryAnalysis:
    """One secondary's report block, its pair space and its chosen rows."""

    result: SecondaryResult
    space: PairSpace
    chosen: dict[tuple[str, int], list[int]]
    held_out: list[int] = field(default_factory=list)  # rows held out for evaluation


def analyse_secondary(
    primary: EmbeddedSet,
    sec: EmbeddedSet,
    job: Job,
    memory: selection.SelectionMemory | None = None,
    labelled: EmbeddedSet | None = None,
) -> SecondaryAnalysis:
    """All per-pair numbers of one secondary (method.md §1-4). o_dist_scaled is left None:
    it needs every secondary (analyse_model fills it). `memory`: earlier runs' selections;
    `labelled`: the labelled images outside the job's datasets (selection.labelled), projected
    into the pair's PCA without entering it and added to the selections' pool."""
    kw = _engine_kw(job)
    bins = job.metrics.histogram_bins
    extra = labelled.vectors if labelled is not None and labelled.count else None
    space = project_pair(primary.vectors, sec.vectors, job, extra)
    p_l, s_l = space.primary, space.secondary
    passes = _pair_passes(space, job, kw)  # every distance pass of the pair, planned once
    space.sweep_i_dist = passes["sweep"]
    i_dist = passes["i_dist"]
    scaled = metrics.min_max_scale(i_dist)
    per_image_mean = metrics.mean_distance_per_image(i_dist, len(p_l))
    hashes = sec.hashes or [None] * sec.count
    o_dist_mean = metrics.o_dist_mean(i_dist, len(p_l))
    novelty = _novelty(space, passes, job, kw)
    per_image = novelty[0] if novelty is not None else None
    selections, chosen, pool, held_out = _selections(
        sec,
        space,
        i_dist,
        job,
        passes["p_self"].distance,
        passes["pair"].nearest_distance,
        per_image,
        memory,
        labelled,
    )

    def image_novelty(j: int) -> dict:
        if per_image is None:
            return {}
        return {
            "nn_distance": float(per_image["nn_distance"][j]),
            "novelty": float(per_image["novelty"][j]),
            "novelty_p_value": float(per_image["p_value"][j]),
            "novel": bool(per_image["novel"][j]),
        }

    result = SecondaryResult(
        name=sec.name,
        count=sec.count,
        o_dist=metrics.dataset_distance(i_dist),
        o_dist_scaled=None,
        o_dist_mean=o_dist_mean,
        i_dist=Summary(**metrics.summary_stats(i_dist)),
        i_dist_scaled_p90=float(np.percentile(scaled, 90)),
        images=[
            ImageResult(
                id=i,
                i_dist=float(d),
                i_dist_scaled=float(x),
                i_dist_mean=float(a),
                sha256=h,
                source=_source(sec, i),
                **image_novelty(j),
            )
            for j, (i, d, x, a, h) in enumerate(
                zip(sec.ids, i_dist, scaled, per_image_mean, hashes, strict=True)
            )
        ],
        splits=Splits(
            halves=metrics.sorted_splits(i_dist, 2), thirds=metrics.sorted_splits(i_dist, 3)
        ),
        pca=space.info,
        diversity=(
            _spread(metrics.diversity_from_nearest(passes["s_self"].distance), bins)
            if job.metrics.diversity
            else None
        ),
        coverage_by_primary=(
            _cover(metrics.coverage_from_nearest(passes["pair"].nearest_distance, len(p_l)))
            if job.metrics.coverage
            else None
        ),
        selections=selections,
        selection_pool=pool,
        statistics=_statistics(p_l, s_l, o_dist_mean, job) if job.metrics.statistics else None,
        duplicates=(
            _duplicates(primary, sec, p_l, s_l, kw, passes) if job.metrics.duplicates else None
        ),
        crops=_crop_classes(sec, i_dist, len(p_l)),
        energy=_energy(space, passes, job),
        novelty=NoveltySummary(**novelty[1]) if novelty is not None else None,
    )
    return SecondaryAnalysis(result, space, chosen, held_out)


#: verdict thresholds (method.md §12.5): a significance level for the adjusted p-values and
#: the novel fraction above which a set counts as far (most of it beyond P's envelope)
VERDICT_ALPHA = 0.05
VERDICT_FAR_FRACTION = 0.5


def adjust_secondaries(entries: list[SecondaryResult], method: str) -> None:
    """Fill every p_value_adjusted over the secondaries (one family per test: energy,
    novelty, MMD; method.md §12.4) and then each secondary's verdict."""
    energy = [e.energy for e in entries if e.energy is not None]
    for block, adj in zip(
        energy, stats.adjust_p_values([b.p_value for b in energy], method), strict=True
    ):
        block.p_value_adjusted = adj
    novelty = [e.novelty for e in entries if e.novelty is not None]
    for block, adj in zip(
        novelty, stats.adjust_p_values([b.p_value for b in novelty], method), strict=True
    ):
        block.p_value_adjusted = adj
    mmd = [e.statistics.mmd for e in entries if e.statistics is not None]
    for block, adj in zip(
        mmd, stats.adjust_p_values([b.p_value for b in mmd], method), strict=True
    ):
        block.p_value_adjusted = adj
    tested = sum(1 for b in energy if b.p_value is not None)
    for e in entries:
        e.verdict = verdict(e, method, tested)


def verdict(sec: SecondaryResult, method: str = "holm", family: int = 1) -> Verdict | None:
    """same / shifted / far (method.md §12.5): shifted when the adjusted energy or novelty
    p-value is below VERDICT_ALPHA; far when, in addition, at least VERDICT_FAR_FRACTION of
    S is novel; same otherwise. None without an energy or novelty block. `family`: how many
    secondaries the energy p-values were adjusted over; with Holm, a reason says so when
    family / (1 + permutations) keeps the energy test from ever reaching VERDICT_ALPHA."""
    e, nv = sec.energy, sec.novelty
    if e is None and nv is None:
        return None
    name = {"holm": "Holm", "bh": "BH"}[method]
    tests, facts = [], []
    if e is not None and e.p_value_adjusted is not None:
        tests.append(e.p_value_adjusted)
        facts.append(
            f"energy distance {e.distance:.4g} (p = {e.p_value_adjusted:.3g} {name}-adjusted, "
            f"smallest attainable {e.min_p_value:.3g})"
        )
    if nv is not None and nv.p_value_adjusted is not None:
        tests.append(nv.p_value_adjusted)
        facts.append(
            f"{nv.novel_fraction:.0%} of images novel against {nv.base_rate:.0%} expected "
            f"(p = {nv.p_value_adjusted:.3g} {name}-adjusted)"
        )
    if (
        e is not None
        and e.min_p_value is not None
        and method == "holm"
        and family * e.min_p_value >= VERDICT_ALPHA
    ):
        facts.append(
            f"the energy test cannot reach {VERDICT_ALPHA} over {family} secondaries with "
            f"{e.permutations} permutations: raise metrics.energy_permutations to at least "
            f"{int(np.ceil(family / VERDICT_ALPHA))}"
        )
    significant = any(p < VERDICT_ALPHA for p in tests)
    far = nv is not None and (nv.novel_fraction or 0.0) >= VERDICT_FAR_FRACTION
    if significant and far:
        label, why = "far", f"at least {VERDICT_FAR_FRACTION:.0%} of S lies beyond P's envelope"
    elif significant:
        label, why = "shifted", f"a difference significant at {VERDICT_ALPHA}"
    else:
        label, why = "same", f"no difference significant at {VERDICT_ALPHA}"
    return Verdict(label=label, reason=f"{why}: " + "; ".join(facts) if facts else why)


def _source(sec: EmbeddedSet, image_id: str) -> ImageSource | None:
    """report.json's `source` of a frame or crop sample (None for a whole image)."""
    sample = sec.samples.get(image_id)
    return ImageSource.model_validate(sample.source()) if sample is not None else None


def _crop_classes(sec: EmbeddedSet, i_dist: np.ndarray, n_primary: int) -> CropClasses | None:
    """Per-class counts and O_dist of the crops of S (None when S has no crops)."""
    labels = [getattr(sec.samples.get(i), "label", None) for i in sec.ids]
    kinds = {getattr(sec.samples.get(i), "kind", None) for i in sec.ids}
    if "crop" not in kinds:
        return None
    rows = metrics.class_distances(i_dist, labels, n_primary)
    return CropClasses(classes=[ClassDistance(**r) for r in rows])


def pca_sweep(
    spaces: dict[str, PairSpace], sweep: list[int], warnings: list[str] | None = None
) -> tuple[list[SweepRow], bool]:
    """Scaled O_dist for each z of the sweep (paper appendix A.1, table 6) and ranking stability.

    Each z reuses the pair's widest joint fit: the first z principal components of a PCA
    are the z-dimensional PCA, so slicing columns equals refitting. A z beyond a pair's rank
    is computed at the rank: the row records it (`effective_dims`) and `warnings` says so.
    """
    rows = []
    for z in sweep:
        o, used = {}, {}
        for name, space in spaces.items():
            if space.sweep_primary is None:
                continue
            zz = min(z, space.sweep_primary.shape[1])
            used[name] = zz
            if space.sweep_i_dist and z in space.sweep_i_dist:  # from the fused pass
                i_dist = space.sweep_i_dist[z]
            else:
                i_dist = metrics.image_dataset_distances(
                    space.sweep_secondary[:, :zz], space.sweep_primary[:, :zz]
                )
            o[name] = metrics.dataset_distance(i_dist)
        if not o:
            continue
        scaled = metrics.scaled_dataset_distances(o)
        ranking = sorted(scaled, key=lambda n: (-scaled[n], n))
        short = {n: d for n, d in used.items() if d < z}
        if short and warnings is not None:
            where = ", ".join(f"{n} at {d}" for n, d in short.items())
            warnings.append(f"pca.sweep: {z} dimensions exceed the rank of a pair ({where})")
        rows.append(
            SweepRow(
                dims=z, effective_dims=min(used.values()), o_dist_scaled=scaled, ranking=ranking
            )
        )
    stable = len({tuple(r.ranking) for r in rows}) <= 1
    return rows, stable


def primary_diversity(primary: EmbeddedSet, job: Job) -> Spread | None:
    """P's diversity in a PCA fitted on P alone (raw space when dims is null; method.md §2.3)."""
    if not job.metrics.diversity:
        return None
    (p_l,), _ = joint_pca([primary.vectors], job.pca.dims, route=job.pca.route, seed=job.seed)
    return _spread(metrics.diversity(p_l, **_engine_kw(job)), job.metrics.histogram_bins)


def scatter_points(
    primary: EmbeddedSet,
    secondaries: list[EmbeddedSet],
    seed: int,
    space: PairSpace | None = None,
) -> ScatterPoints:
    """2-D coordinates of P and every S from one PCA fitted on all of them (method.md §2.3).

    With one secondary that PCA is the pair's joint fit, so `space` (its PairSpace, from an
    exact, covariance or Gram fit with at least 2 components) gives the first two columns
    without a refit."""
    blocks = [primary.vectors] + [s.vectors for s in secondaries]
    reuse = (
        space is not None
        and len(secondaries) == 1
        and space.info.route in ("exact", "covariance", "gram")  # not randomized
        and space.primary.shape[1] >= 2
    )
    if reuse:
        projected = [space.primary[:, :2], space.secondary[:, :2]]
    else:
        projected, _ = joint_pca(blocks, 2, seed=seed)
    names = [primary.name] + [s.name for s in secondaries]
    points = {}
    for name, pts in zip(names, projected, strict=True):
        pts = np.asarray(pts)
        if pts.shape[1] < 2:
            pts = np.hstack([pts, np.zeros((len(pts), 2 - pts.shape[1]))])
        points[name] = pts
    return ScatterPoints(names=names, points=points)


def analyse_model(
    primary: EmbeddedSet,
    secondaries: list[EmbeddedSet],
    job: Job,
    memory: selection.SelectionMemory | None = None,
    labelled: EmbeddedSet | None = None,
) -> ModelAnalysis:
    """Every number of the report for one extractor's features; `memory`: the selections of
    earlier runs of the store, not proposed again (selection.exclude_previous); `labelled`:
    the labelled images outside the job's datasets, in every pair's pool (selection.labelled)."""
    done = [analyse_secondary(primary, sec, job, memory, labelled) for sec in secondaries]
    entries = [d.result for d in done]
    warnings = [f"{e.name}: {w}" for e in entries for w in e.pca.warnings]
    o_dist = {e.name: e.o_dist for e in entries}
    o_scaled = metrics.scaled_dataset_distances(o_dist)
    for e in entries:
        e.o_dist_scaled = o_scaled[e.name]
    adjust_secondaries(entries, job.metrics.p_adjustment)
    sweep, stable = pca_sweep({d.result.name: d.space for d in done}, job.pca.sweep, warnings)
    first = entries[0].pca
    pca_info = PcaSummary(
        dims=first.dims,
        requested_dims=job.pca.dims,
        route=first.route,
        explained_variance_ratio=first.explained_variance_ratio,
    )
    chosen_all = {d.result.name: d.chosen for d in done}
    only = done[0].space if len(done) == 1 and job.pca.route == "auto" else None
    scatter = scatter_points(primary, secondaries, job.seed, only)
    biggest = (job.selection.strategies[0], max(job.selection.counts))
    scatter.selected = {name: chosen.get(biggest, []) for name, chosen in chosen_all.items()}
    return ModelAnalysis(
        primary=PrimaryResult(
            name=primary.name, count=primary.count, diversity=primary_diversity(primary, job)
        ),
        pca=pca_info,
        secondaries=entries,
        o_dist=o_dist,
        o_dist_scaled=o_scaled,
        pca_sweep=sweep,
        pca_sweep_stable=stable,
        warnings=warnings,
        selections=chosen_all,
        held_out={d.result.name: d.held_out for d in done if d.held_out},
        scatter=scatter,
    )


def robustness_probe(
    primary: EmbeddedSet,
    clean: ModelAnalysis,
    perturbed: dict[str, list[EmbeddedSet]],
    job: Job,
) -> dict[str, Perturbation]:
    """Ranking stability under perturbed S images (paper appendix D; method.md §4.5).

    For each perturbation: O_dist of every perturbed S from the clean P (joint PCA as
    usual), Kendall tau between the clean and perturbed ranking of the secondaries, and per
    secondary the Kendall tau of its per-image I_dist ranking."""
    kw = _engine_kw(job)
    out: dict[str, Perturbation] = {}
    for kind, sets in perturbed.items():
        o_dist, per_image = {}, {}
        for sec, entry in zip(sets, clean.secondaries, strict=True):
            space = project_pair(primary.vectors, sec.vectors, job)
            i_dist = metrics.image_dataset_distances(space.secondary, space.primary, **kw)
            o_dist[sec.name] = metrics.dataset_distance(i_dist)
            clean_by_id = {im.id: im.i_dist for im in entry.images}
            common = [i for i in sec.ids if i in clean_by_id]
            pert_by_id = dict(zip(sec.ids, i_dist, strict=True))
            per_image[sec.name] = stats.kendall_tau(
                [clean_by_id[i] for i in common], [float(pert_by_id[i]) for i in common]
            )
        names = list(o_dist)
        out[kind] = Perturbation(
            kendall_tau=stats.kendall_tau(
                [clean.o_dist[n] for n in names], [o_dist[n] for n in names]
            ),
            o_dist_scaled=metrics.scaled_dataset_distances(o_dist),
            image_kendall_tau=per_image,
        )
    return out
