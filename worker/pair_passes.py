"""The per-pair passes of the measure stage (moved out of worker.analysis): P and one S in
one joint PCA, and each block of that pair's numbers (selections, statistics, duplicates,
energy, novelty) from the planned distance passes (docs/method.md sections 1-4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker import engine, metrics, selection, stats
from worker.embeddings import EmbeddedSet
from worker.job import Job
from worker.pca import joint_pca
from worker.results import (
    Cover,
    Duplicates,
    EnergyResult,
    PairPca,
    RandomComparison,
    SelectionPool,
    SelectionResult,
    Spread,
    Statistics,
    Summary,
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
    #: (k, z) the labelled images outside the job's datasets, projected by the fit they do
    #: not enter (selection.labelled); None without any
    labelled: np.ndarray | None = None


def _engine_kw(job: Job) -> dict:
    from worker.devices import device_name

    device = device_name(job.compute.device, "compute.device")
    budget = job.compute.memory_budget_mb
    return {
        "memory_budget_mb": engine.auto_memory_budget_mb(device) if budget == "auto" else budget,
        "precision": job.compute.precision,
        "device": device,
    }


def project_pair(
    p: np.ndarray, s: np.ndarray, job: Job, labelled: np.ndarray | None = None
) -> PairSpace:
    """Joint PCA of [P; S] to `pca.dims` (method.md §1.1-1.2); one wider fit serves the sweep.
    `labelled` (k, q): rows projected by the fit without entering it (selection.labelled),
    so every quantity of the pair is the same with or without them."""
    dims = job.pca.dims
    sweep_max = max(job.pca.sweep) if job.pca.sweep else None
    kw = {"route": job.pca.route, "seed": job.seed}
    also = [] if labelled is None else [labelled]
    if dims is not None and (sweep_max is None or sweep_max <= dims):
        (pl, sl, *ll), info = joint_pca([p, s], dims, also=also, **kw)
        return PairSpace(pl, sl, info, pl, sl, nested=True, labelled=next(iter(ll), None))
    if dims is None:
        (pl, sl, *ll), info = joint_pca([p, s], None, also=also, **kw)
        wide = None
        if sweep_max is not None:
            wide, _ = joint_pca([p, s], sweep_max, **kw)
        space = PairSpace(pl, sl, info, *(wide or (None, None)))
        space.labelled = next(iter(ll), None)
        return space
    (pw, sw, *lw), info = joint_pca([p, s], sweep_max, also=also, **kw)
    z = min(dims, pw.shape[1])
    info = info.model_copy(
        update={
            "dims": z,
            "requested_dims": dims,
            "explained_variance_ratio": info.explained_variance_ratio[:z],
        }
    )
    ll = lw[0][:, :z] if lw else None
    return PairSpace(pw[:, :z], sw[:, :z], info, pw, sw, nested=True, labelled=ll)


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
    labelled_set: EmbeddedSet | None = None,
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
    never proposed; `labelled_set`: the labelled images outside the job's datasets (their
    rows projected into this pair's space: `space.labelled`) join it beside P.
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
    pool_l, outside_l = p_l, None  # labelled images outside S: pool rows beside P (as if in P)
    if labelled_set is not None and space.labelled is not None:
        in_s, outside = selection.labelled_outside(
            sec.ids, sec.hashes, labelled_set.ids, labelled_set.hashes
        )
        labelled |= in_s
        outside_l = space.labelled[outside]
        pool_l = np.vstack([p_l, outside_l])
    exclude = earlier | labelled
    hold = np.zeros(len(s_l), dtype=bool)  # the adaptation's held-out split (method.md §5.7)
    if job.adaptation.enabled and config is not None and config.masks is not None:
        hold[selection.held_out_split(i_dist, job.adaptation.held_out, job.seed)] = True
    if novelty is None:
        novelty = {"novelty": np.zeros(len(s_l)), "novel": np.zeros(len(s_l), dtype=bool)}
    novel = np.asarray(novelty["novel"], dtype=bool)
    pool_nearest = selection.pool_nearest(s_l, nearest_primary, exclude, outside_l, **kw)
    candidates = selection.candidates(len(s_l), exclude, hold)

    adapt_counts = job.adaptation.counts if job.adaptation.enabled else []
    largest = max([*cfg.counts, *adapt_counts], default=0)
    greedy: dict[str, list[int]] = {}  # a nested strategy's picks at the largest count

    def pick(strategy: str, count: int) -> list[int]:
        nested = strategy in selection.NESTED
        if nested and strategy in greedy:
            return greedy[strategy][:count]
        idx = selection.select(
            strategy,
            S_L=s_l,
            P_L=pool_l,
            i_dist=i_dist,
            count=largest if nested else count,
            band=cfg.band,
            seed=job.seed,
            novel=novel,
            exclude=exclude,
            hold=hold,
            **kw,
        )
        if nested:
            greedy[strategy] = idx
        return idx[:count]

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
        labelled_outside=0 if outside_l is None else len(outside_l),
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
    novelty's leave-one-out distances; sums over the later rows: the energy distance's
    within-set terms). Returns {pair, i_dist, sweep, s_self, p_self, s_within, p_within}
    (s_within, p_within: the ordered-pair sums, SelfPassResult.pair_sum)."""
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
        "s_within": s_self.pair_sum,
        "p_within": p_self.pair_sum,
    }


def _energy(space: PairSpace, passes: dict, job: Job) -> EnergyResult:
    """Energy distance of the pair from its S x P, S x S and P x P row sums, its permutation
    test (metrics.energy_permutations) and its explanation (method.md §12.1-12.2). The
    adjusted p-value is filled in by analyse_model, which sees every secondary."""
    p_l, s_l = space.primary, space.secondary
    terms = metrics.energy_from_sums(
        passes["i_dist"].sum(),
        passes["s_within"],
        passes["p_within"],
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
