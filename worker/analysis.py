"""The measure stage for one feature extractor: P and every S -> the report's numbers.

Wires PCA, metrics, selection and statistics together (docs/method.md sections 1-4); every
number itself comes from a pure function in worker.metrics / worker.selection / worker.stats,
and every result is a typed block of worker.results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from worker import comparison, engine, metrics, selection, stats
from worker.embeddings import EmbeddedSet
from worker.job import Job
from worker.pca import joint_pca
from worker.results import (
    ChangeTest,
    ClassDistance,
    Cover,
    CropClasses,
    DatasetMatrix,
    Duplicates,
    EnergyResult,
    GroupPair,
    Groups,
    GroupSummary,
    ImageResult,
    ImageSource,
    NoveltySummary,
    PairPca,
    PcaSummary,
    Perturbation,
    PrimaryResult,
    RandomComparison,
    RankDisagreement,
    Ranking,
    Report,
    SecondaryResult,
    SelectionPool,
    SelectionResult,
    Splits,
    Spread,
    Statistics,
    Summary,
    SweepRow,
    Verdict,
)


@dataclass
class PairSpace:
    """P and S projected by one joint PCA fit (method.md §1.2), plus the sweep's wider fit."""

    primary: np.ndarray  # (n, z)
    secondary: np.ndarray  # (m, z)
    info: PairPca
    sweep_primary: np.ndarray | None = None  # (n, max sweep) for the PCA sweep
    sweep_secondary: np.ndarray | None = None
    nested: bool = False  # primary / secondary are the first columns of the sweep arrays
    sweep_i_dist: dict[int, np.ndarray] | None = None  # I_dist per sweep z (engine.pair_pass)


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


def _engine_kw(job: Job) -> dict:
    from worker.devices import device_name

    device = device_name(job.compute.device, "compute.device")
    budget = job.compute.memory_budget_mb
    return {
        "memory_budget_mb": engine.auto_memory_budget_mb(device) if budget == "auto" else budget,
        "precision": job.compute.precision,
        "device": device,
    }


def project_pair(p: np.ndarray, s: np.ndarray, job: Job) -> PairSpace:
    """Joint PCA of [P; S] to `pca.dims` (method.md §1.1-1.2); one wider fit serves the sweep."""
    dims = job.pca.dims
    sweep_max = max(job.pca.sweep) if job.pca.sweep else None
    seed = job.seed
    if dims is not None and (sweep_max is None or sweep_max <= dims):
        (pl, sl), info = joint_pca([p, s], dims, route=job.pca.route, seed=seed)
        return PairSpace(pl, sl, info, pl, sl, nested=True)
    if dims is None:
        (pl, sl), info = joint_pca([p, s], None, route=job.pca.route, seed=seed)
        wide = None
        if sweep_max is not None:
            wide, _ = joint_pca([p, s], sweep_max, route=job.pca.route, seed=seed)
        return PairSpace(pl, sl, info, *(wide or (None, None)))
    (pw, sw), info = joint_pca([p, s], sweep_max, route=job.pca.route, seed=seed)
    z = min(dims, pw.shape[1])
    info = info.model_copy(
        update={
            "dims": z,
            "requested_dims": dims,
            "explained_variance_ratio": info.explained_variance_ratio[:z],
        }
    )
    return PairSpace(pw[:, :z], sw[:, :z], info, pw, sw, nested=True)


def _spread(d: dict | None, bins: int) -> Spread | None:
    """A diversity result as the report stores it: mean/min/max plus its histogram."""
    if d is None or d.get("mean") is None:
        return None
    return Spread(
        mean=d["mean"], min=d["min"], max=d["max"], histogram=metrics.histogram(d["values"], bins)
    )


def _cover(c: dict | None, bins: int | None = None) -> Cover | None:
    """A coverage result as the report stores it; with `bins`, its histogram too."""
    if c is None:
        return None
    hist = None
    if bins is not None and c.get("mean") is not None:
        hist = metrics.histogram(c["values"], bins)
    return Cover(mean=c["mean"], max=c["max"], histogram=hist)


def _selections(
    sec: EmbeddedSet,
    space: PairSpace,
    i_dist: np.ndarray,
    job: Job,
    p_nearest_other: np.ndarray,
    nearest_primary: np.ndarray,
    novelty: dict | None = None,
    memory: selection.SelectionMemory | None = None,
) -> tuple[
    list[SelectionResult], dict[tuple[str, int], list[int]], SelectionPool | None, list[int]
]:
    """Every (strategy, count) selection with its diversity, coverage and comparison with
    random subsets (method.md §2-3), the secondary's pool, and the adaptation's held-out rows
    (chosen before selection, never selected; adaptation.held_out of a set with masks).

    `nearest_primary` (m,): each S image's nearest-P distance; `p_nearest_other` (n,): P's
    leave-one-out nearest distances; `novelty`: the per-image novelty and novel flags
    (_novelty; None when P is too small: no image is novel); `memory`: the earlier runs'
    selections. Images selected earlier or named by selection.labelled join the pool and are
    never proposed.
    The adaptation stage's (strategy, count) pairs are chosen here too, by the same code.
    A secondary with `select: false` (a blind set) gets none.
    """
    bins = job.metrics.histogram_bins
    kw = _engine_kw(job)
    s_l, p_l = space.secondary, space.primary
    out, chosen = [], {}
    config = next((d for d in job.datasets.secondary if sec.name in d.sample_names()), None)
    if config is not None and not config.select:
        return out, chosen, None, []  # a blind set (select: false): evaluated, never selected
    cfg = job.selection
    earlier = selection.earlier_mask(sec.name, sec.ids, sec.hashes, memory)
    labelled = selection.labelled_mask(sec.ids, sec.uris, cfg.labelled, job.base_dir)
    exclude = earlier | labelled
    hold = np.zeros(len(s_l), dtype=bool)  # the adaptation's held-out split (method.md §5.7)
    if job.adaptation.enabled and config is not None and config.masks is not None:
        hold[selection.held_out_split(i_dist, job.adaptation.held_out, job.seed)] = True
    if novelty is None:
        novelty = {"novelty": np.zeros(len(s_l)), "novel": np.zeros(len(s_l), dtype=bool)}
    novel = np.asarray(novelty["novel"], dtype=bool)
    pool_nearest = selection.pool_nearest(s_l, nearest_primary, exclude, **kw)
    candidates = selection.candidates(len(s_l), exclude, hold)

    def pick(strategy: str, count: int) -> list[int]:
        return selection.select(
            strategy,
            S_L=s_l,
            P_L=p_l,
            i_dist=i_dist,
            count=count,
            band=cfg.band,
            seed=job.seed,
            novel=novel,
            exclude=exclude,
            hold=hold,
            **kw,
        )

    if job.adaptation.enabled:
        for q in job.adaptation.counts:
            chosen[(job.adaptation.selection, q)] = pick(job.adaptation.selection, q)
    for count in cfg.counts:
        subsets = selection.random_subsets(candidates, count, cfg.random_subsets, job.seed)
        baselines: dict[str, np.ndarray] = {}  # one random baseline per count, every strategy
        for strategy in cfg.strategies:
            idx = pick(strategy, count)
            chosen[(strategy, count)] = idx
            judged = selection.judge(
                strategy,
                idx,
                S_L=s_l,
                novelty=novelty["novelty"],
                novel=novel,
                pool_nearest=pool_nearest,
                subsets=subsets,
                baselines=baselines,
            )
            diversity = random_diversity = pool_diversity = coverage = random_coverage = None
            rand = selection.random_subset(len(s_l), len(idx), job.seed)
            if job.metrics.diversity:
                diversity = _spread(metrics.diversity(s_l[idx], **kw), bins)
                random_diversity = _spread(metrics.diversity(s_l[rand], **kw), bins)
                pool = metrics.pool_diversity(p_l, s_l[idx], p_nearest_other, **kw)
                pool_diversity = _spread(pool, bins)
            if job.metrics.coverage:
                coverage = _cover(metrics.coverage(s_l, s_l[idx], **kw), bins)
                random_coverage = _cover(metrics.coverage(s_l, s_l[rand], **kw), bins)
            out.append(
                SelectionResult(
                    strategy=strategy,
                    count=len(idx),
                    ids=[sec.ids[i] for i in idx],
                    diversity=diversity,
                    random_diversity=random_diversity,
                    pool_diversity=pool_diversity,
                    coverage=coverage,
                    random_coverage=random_coverage,
                    aim=selection.AIM_WORDS[strategy],
                    against_random=[
                        RandomComparison(
                            aim=j["aim"],
                            decides=j["decides"],
                            higher_is_better=j["higher_is_better"],
                            value=j["value"],
                            random=Summary(**metrics.summary_stats(j["random"])),
                            subsets=len(subsets),
                            percentile=j["percentile"],
                            p_value=j["p_value"],
                            beats_random=j["beats_random"],
                        )
                        for j in judged
                    ],
                    beats_random=selection.beats_random(judged),
                    verdict=selection.verdict(strategy, len(idx), judged, len(subsets)),
                )
            )
    pool_block = SelectionPool(
        candidates=len(candidates),
        earlier_selected=int(earlier.sum()),
        labelled=int(labelled.sum()),
        novel=int(novel.sum()),
        held_out=int(hold.sum()),
    )
    return out, chosen, pool_block, np.flatnonzero(hold).tolist()


def _statistics(p_l: np.ndarray, s_l: np.ndarray, o_dist_mean: float, job: Job) -> Statistics:
    """Null calibration, MMD, FID and KID in the pair's PCA space (method.md §4)."""
    null = stats.null_calibration(
        p_l, o_dist_mean, repeats=job.metrics.null_repeats, seed=job.seed, **_engine_kw(job)
    )
    mmd = stats.mmd_test(p_l, s_l, permutations=job.metrics.mmd_permutations, seed=job.seed)
    return Statistics(
        o_dist_null_mean=null["null_mean"],
        o_dist_ratio=null["ratio"],
        o_dist_percentile=null["percentile"],
        null_subsample=null["subsample"],
        mmd=mmd,
        fid=stats.fid(p_l, s_l),
        kid=stats.kid(p_l, s_l, seed=job.seed),
    )


def _duplicates(
    primary: EmbeddedSet,
    sec: EmbeddedSet,
    p_l: np.ndarray,
    s_l: np.ndarray,
    kw: dict,
    passes: dict | None = None,
) -> Duplicates:
    """Exact (content hash) and near (calibrated distance) duplicates within S and with P.
    `passes`: the pair's S x P, S x S and P x P passes already made (_pair_passes)."""
    extra = {}
    if passes is not None:
        pair, s_self, p_self = passes["pair"], passes["s_self"], passes["p_self"]
        extra = {
            "threshold": stats.threshold_from_nearest(p_self.distance),
            "within_nearest": (s_self.distance, s_self.index),
            "primary_nearest": (pair.nearest_distance, pair.nearest_index),
        }
    found = stats.find_duplicates(
        s_l,
        p_l,
        ids=sec.ids,
        primary_ids=primary.ids,
        hashes=sec.hashes or None,
        primary_hashes=primary.hashes or None,
        **extra,
        **kw,
    )
    return Duplicates.model_validate(found)


def _pair_passes(space: PairSpace, job: Job, kw: dict) -> dict:
    """Every distance pass of one pair, planned once (method.md §8): one fused S x P pass for
    I_dist, the sweep's I_dist (nested prefixes of the wide fit) and the nearest P of each S
    image; one S x S and one P x P self pass (nearest other row: diversity, duplicates,
    novelty's leave-one-out distances; row sums: the energy distance's within-set terms).
    Returns {pair, i_dist, sweep, s_self, p_self, s_within, p_within}."""
    p_l, s_l = space.primary, space.secondary
    z = p_l.shape[1]
    need_nearest = True  # each S image's nearest P image: novelty (k = 1), coverage, duplicates
    sweep: dict[int, np.ndarray] = {}
    if space.sweep_primary is not None and space.nested:
        width = space.sweep_primary.shape[1]
        dims = sorted({min(d, width) for d in job.pca.sweep} | {z})
        near = z if need_nearest else False
        pair = engine.pair_pass(
            space.sweep_secondary, space.sweep_primary, prefixes=dims, nearest=near, **kw
        )
        sweep = {d: pair.i_dist[min(d, width)] for d in job.pca.sweep}
    else:
        pair = engine.pair_pass(s_l, p_l, nearest=need_nearest, **kw)
        if space.sweep_primary is not None:
            width = space.sweep_primary.shape[1]
            wide = engine.pair_pass(
                space.sweep_secondary,
                space.sweep_primary,
                prefixes=sorted({min(d, width) for d in job.pca.sweep}),
                **kw,
            )
            sweep = {d: wide.i_dist[min(d, width)] for d in job.pca.sweep}
    # nearest other row and summed distance to the other rows, from the same tiles:
    # diversity and duplicates within S, P's leave-one-out distances (novelty), and the
    # energy distance's within-set sums E|s - s'|, E|p - p'|
    s_self = engine.self_pass(s_l, **kw)
    p_self = engine.self_pass(p_l, **kw)
    return {
        "pair": pair,
        "i_dist": pair.i_dist[z],
        "sweep": sweep,
        "s_self": s_self,
        "p_self": p_self,
        "s_within": s_self.row_sums,
        "p_within": p_self.row_sums,
    }


def _energy(space: PairSpace, passes: dict, job: Job) -> EnergyResult:
    """Energy distance of the pair from its S x P, S x S and P x P row sums, its permutation
    test (metrics.energy_permutations) and its explanation (method.md §12.1-12.2). The
    adjusted p-value is filled in by analyse_model, which sees every secondary."""
    p_l, s_l = space.primary, space.secondary
    terms = metrics.energy_from_sums(
        passes["i_dist"].sum(),
        passes["s_within"].sum(),
        passes["p_within"].sum(),
        len(s_l),
        len(p_l),
    )
    perms = job.metrics.energy_permutations
    test = stats.energy_test(p_l, s_l, permutations=perms, seed=job.seed)
    return EnergyResult(
        **terms,
        p_value=test["p_value"],
        p_value_adjusted=None,
        min_p_value=1.0 / (1 + test["permutations"]) if test["p_value"] is not None else None,
        permutations=test["permutations"],
        n_x=test["n_x"],
        n_y=test["n_y"],
        explanation=metrics.energy_explanation(terms),
    )


def _novelty(space: PairSpace, passes: dict, job: Job, kw: dict) -> tuple[dict, dict] | None:
    """Per-image novelty of S against P's leave-one-out k-NN distances (method.md §12.3):
    ({nn_distance, novelty, p_value, novel} per image, the set's summary), or None when P has
    no more than k images. k = 1 reads the pair's passes; k > 1 runs a k-NN."""
    k, q = job.metrics.novelty_k, job.metrics.novelty_quantile
    p_l, s_l = space.primary, space.secondary
    if len(p_l) <= k:
        return None
    if k == 1:
        d, loo = passes["pair"].nearest_distance, passes["p_self"].distance
    else:
        d = metrics.kth_nearest_distances(s_l, p_l, k, **kw)
        loo = metrics.kth_nearest_distances(p_l, p_l, k, exclude_self=True, **kw)
    scores = metrics.novelty_scores(d, loo)
    summary = metrics.novelty_summary(d, loo, q)
    per_image = {"nn_distance": d, **scores, "novel": summary.pop("novel")}
    return per_image, {"k": k, "quantile": q, **summary, "p_value_adjusted": None}


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
) -> SecondaryAnalysis:
    """All per-pair numbers of one secondary (method.md §1-4). o_dist_scaled is left None:
    it needs every secondary (analyse_model fills it). `memory`: earlier runs' selections."""
    kw = _engine_kw(job)
    bins = job.metrics.histogram_bins
    space = project_pair(primary.vectors, sec.vectors, job)
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
) -> ModelAnalysis:
    """Every number of the report for one extractor's features; `memory`: the selections of
    earlier runs of the store, not proposed again (selection.exclude_previous)."""
    done = [analyse_secondary(primary, sec, job, memory) for sec in secondaries]
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


# --------------------------------------------------------------------------- many datasets


def ranking_values(secondaries: list[SecondaryResult], metric: str) -> dict[str, float | None]:
    """Secondary -> its value of ranking.metric (method.md §12): energy_distance, o_dist_mean,
    mmd (MMD²), fid or kid (KID mean); None where it was not computed."""

    def value(s: SecondaryResult) -> float | None:
        st = s.statistics
        if metric == "energy_distance":
            return s.energy.distance if s.energy is not None else None
        if metric == "o_dist_mean":
            return s.o_dist_mean
        if metric == "mmd":
            return st.mmd.statistic if st is not None else None
        if metric == "fid":
            return st.fid if st is not None else None
        return st.kid.mean if st is not None else None

    return {s.name: value(s) for s in secondaries}


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def rank_disagreements(
    secondaries: list[SecondaryResult], order: list[str], metric: str
) -> list[RankDisagreement]:
    """The secondaries whose rank by `metric` (order, closest first) differs from their rank
    by o_dist_mean, each with the energy decomposition in words (method.md §12.2)."""
    if metric == "o_dist_mean":
        return []
    by_name = {s.name: s for s in secondaries}
    paper = comparison.rank_order({s.name: s.o_dist_mean for s in secondaries})
    out = []
    for r, name in enumerate(order, start=1):
        pr = paper.index(name) + 1
        if pr == r:
            continue
        sec = by_name[name]
        why = sec.energy.explanation if sec.energy is not None else ""
        out.append(
            RankDisagreement(
                name=name,
                rank=r,
                o_dist_mean_rank=pr,
                explanation=f"{name} ranks {_ordinal(r)} by {metric} but {_ordinal(pr)} by "
                f"the paper's o_dist_mean. {why}".strip(),
            )
        )
    return out


def rank_secondaries(secondaries: list[SecondaryResult], job: Job) -> Ranking:
    """Secondaries ranked by ranking.metric, closest first (method.md §11-12), where the
    paper's o_dist_mean ranks them differently and why, and the PDF sections report.detail
    keeps: every secondary (full) or the top_k closest and farthest (summary)."""
    top_k = job.report.top_k
    metric = job.ranking.metric
    values = ranking_values(secondaries, metric)
    ranked = comparison.ranking(values, top_k)
    detail = job.report.detail_for(len(secondaries))
    ranking = Ranking(
        by=metric,
        metric=metric,
        values=values,
        disagreements=rank_disagreements(secondaries, ranked["order"], metric),
        top_k=top_k,
        detail=detail,
        sections=[],
        **ranked,
    )
    ranking.sections = ranking.order if detail == "full" else ranking.highlighted
    return ranking


def compare_groups(
    secondaries: list[SecondaryResult], job: Job, matrix: DatasetMatrix | None = None
) -> Groups | None:
    """Per-group summaries and the separation of every pair of groups (method.md §12.6;
    paper appendix E). With the dataset matrix: groups of every dataset with a `group`,
    separated by the matrix that orders it (energy unless ranking.metric is o_dist_mean);
    without: groups of secondaries by their ranking-metric value against P. None when fewer
    than one group is given."""
    metric = job.ranking.metric
    perms = job.metrics.group_permutations
    if matrix is not None:
        labels = {d.name: d.group for d in job.all_datasets if d.group is not None}
    else:
        labels = {d.name: d.group for d in job.datasets.secondary if d.group is not None}
    if not labels:
        return None
    o_mean = {s.name: s.o_dist_mean for s in secondaries}
    values = ranking_values(secondaries, metric)
    if matrix is not None:
        grid = matrix.o_dist_mean if matrix.ordered_by == "o_dist_mean" else matrix.energy
        pairs = comparison.matrix_separations(
            np.array(grid, dtype=np.float64),
            [labels.get(n) for n in matrix.names],
            permutations=perms,
            seed=job.seed,
        )
        order = [n for n in matrix.names if n in labels]
    else:
        order = [s.name for s in secondaries if s.name in labels]
        pairs = comparison.group_separations(
            {n: values[n] for n in order},
            {n: labels[n] for n in order},
            permutations=perms,
            seed=job.seed,
        )
    groups = {n: labels[n] for n in order}
    summaries = comparison.group_summaries({n: o_mean.get(n) for n in order}, groups)
    value_summaries = comparison.group_summaries({n: values.get(n) for n in order}, groups)
    adjusted = stats.adjust_p_values([p["p_value"] for p in pairs], job.metrics.p_adjustment)
    return Groups(
        groups=[
            GroupSummary(
                name=label,
                members=g["members"],
                o_dist_mean=Summary(**g["summary"]),
                values=Summary(**value_summaries[label]["summary"]),
            )
            for label, g in summaries.items()
        ],
        pairs=[
            GroupPair(permutations=perms, p_value_adjusted=a, **p)
            for p, a in zip(pairs, adjusted, strict=True)
        ],
        metric=metric,
        basis="matrix" if matrix is not None else "primary",
    )


def analyse_matrix(sets: list[EmbeddedSet], job: Job) -> DatasetMatrix:
    """o_dist_mean and the energy distance between every two datasets, each pair in its own
    joint PCA (or one shared PCA: pca.shared), from the embeddings already made (method.md
    §11-12). Clustering order and nearest use the energy matrix unless ranking.metric is
    o_dist_mean."""
    names = [s.name for s in sets]
    both = comparison.dataset_matrices(
        [s.vectors for s in sets],
        dims=job.pca.dims,
        shared=job.pca.shared,
        route=job.pca.route,
        seed=job.seed,
        **_engine_kw(job),
    )
    ordered_by = "o_dist_mean" if job.ranking.metric == "o_dist_mean" else "energy"
    grid = both[ordered_by]
    order, tree = comparison.cluster_tree(grid)
    return DatasetMatrix(
        names=names,
        o_dist_mean=both["o_dist_mean"].tolist(),
        energy=both["energy"].tolist(),
        ordered_by=ordered_by,
        pca="shared" if job.pca.shared else "pair",
        dims=job.pca.dims,
        order=[names[i] for i in order],
        linkage=tree,
        nearest=comparison.nearest_other(grid, names),
    )


# --------------------------------------------------------------------------- change since a run


def previous_vectors(
    previous_images: list[tuple[str, str | None]], current: EmbeddedSet, lookup=None
) -> tuple[np.ndarray, int]:
    """Embeddings of a previous run's images of one secondary (method.md §12.7): an image with
    a content hash takes this run's vector of the same content when this run has it, else
    `lookup(hash)` (the embedding cache: vector or None); an image without a hash (precomputed
    embeddings) takes this run's vector of the same id. previous_images: (id, sha256 or None)
    per image. Returns (vectors (k, d), missing)."""
    by_hash = {h: r for r, h in enumerate(current.hashes or []) if h}
    by_id = {i: r for r, i in enumerate(current.ids)}
    rows, missing = [], 0
    for image_id, h in previous_images:
        if h and h in by_hash:
            rows.append(current.vectors[by_hash[h]])
        elif h and lookup is not None and (v := lookup(h)) is not None:
            rows.append(np.asarray(v, dtype=np.float64))
        elif not h and image_id in by_id:
            rows.append(current.vectors[by_id[image_id]])
        else:
            missing += 1
    width = current.vectors.shape[1]
    return (np.vstack(rows) if rows else np.zeros((0, width))), missing


def change_test(
    previous: np.ndarray,
    new: np.ndarray,
    job: Job,
    *,
    previous_run: str | None,
    previous_missing: int = 0,
) -> ChangeTest:
    """The new images (r, d) against the previous run's images (k, d) (method.md §12.7): one
    joint PCA of the two (pca.dims), the energy distance and its permutation test, and the
    novel fraction of the new images against the previous run's leave-one-out k-NN
    distances, with its binomial p-value against 1 - q."""
    q, k = job.metrics.novelty_quantile, job.metrics.novelty_k
    out = {
        "previous_run": previous_run,
        "previous_images": len(previous),
        "previous_missing": previous_missing,
        "new_images": len(new),
        "energy_distance": None,
        "p_value": None,
        "p_value_adjusted": None,
        "min_p_value": None,
        "novel_fraction": None,
        "base_rate": 1.0 - q,
        "novelty_p_value": None,
        "reason": None,
    }
    if len(new) == 0:
        return ChangeTest(**{**out, "reason": "no image is new since the previous run"})
    if len(previous) <= max(1, k):
        return ChangeTest(
            **{
                **out,
                "reason": f"only {len(previous)} embeddings of the previous run's images were "
                "found (this run's images and the embedding cache)",
            }
        )
    (prev_l, new_l), _ = joint_pca(
        [previous, new], job.pca.dims, route=job.pca.route, seed=job.seed
    )
    kw = _engine_kw(job)
    terms = metrics.energy_distance(new_l, prev_l, **kw)
    test = stats.energy_test(
        prev_l, new_l, permutations=job.metrics.energy_permutations, seed=job.seed
    )
    d = metrics.kth_nearest_distances(new_l, prev_l, k, **kw)
    loo = metrics.kth_nearest_distances(prev_l, prev_l, k, exclude_self=True, **kw)
    novelty = metrics.novelty_summary(d, loo, q)
    out.update(
        energy_distance=terms["distance"],
        p_value=test["p_value"],
        min_p_value=1.0 / (1 + test["permutations"]) if test["p_value"] is not None else None,
        novel_fraction=novelty["novel_fraction"],
        novelty_p_value=novelty["p_value"],
        reason=None if test["p_value"] is not None else "metrics.energy_permutations is 0",
    )
    return ChangeTest(**out)


def change_tests(
    history, previous_report: Report, sets: list[EmbeddedSet], job: Job, lookup=None
) -> None:
    """Fill `history.secondaries[].change` for every secondary the previous run also had
    (method.md §12.7), then adjust the change p-values over the secondaries."""
    previous = {s.name: s for s in previous_report.secondaries}
    embedded = {s.name: s for s in sets}
    run_id = history.previous_run
    done = []
    for entry in history.secondaries:
        sec = embedded.get(entry.name)
        if sec is None or entry.name not in previous:
            continue
        images = [(im.id, im.sha256) for im in previous[entry.name].images]
        prev, missing = previous_vectors(images, sec, lookup)
        new_ids = set(history.new_ids.get(entry.name, []))
        rows = [r for r, i in enumerate(sec.ids) if i in new_ids]
        entry.change = change_test(
            prev, sec.vectors[rows], job, previous_run=run_id, previous_missing=missing
        )
        done.append(entry.change)
    adjusted = stats.adjust_p_values([c.p_value for c in done], job.metrics.p_adjustment)
    for c, a in zip(done, adjusted, strict=True):
        c.p_value_adjusted = a
