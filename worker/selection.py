"""Which S images to label next (docs/method.md §3), and whether a choice beats random (§3.5).

Strategies (each returns indices into S, deterministic for a given seed):
- `novel` (the default): the novel images (beyond P's calibrated quantile, method.md §12.3)
  spread by greedy k-center with P and the pool as centres; its aims are the novelty of what
  it picks and the coverage of the novel images.
- `band` (the paper's, section 4.3) and `farthest`: aim at novelty.
- `kcenter`: greedy k-center over all of S; aims at coverage of S.

The pool: P, the labelled images outside S (selection.labelled; the caller stacks them under
P_L) and every S image that must not be proposed again (selected in an earlier run, or already
labelled: `exclude`, a boolean mask over S); pool images count as already-chosen centres and
are never returned. `hold` (a boolean mask over S: the adaptation's held-out
split) is neither proposed nor a centre. A count above the candidates selects them all; 0
selects none.

Judging (method.md §3.5): a selection is compared on each aim with B seeded random subsets of
the same size drawn from the same candidates; `judge_value` gives its percentile among them,
a Monte Carlo p-value and `beats_random`.

Shapes: S_L (m, z), P_L (n, z) (P, then any labelled images outside S),
i_dist / novelty / exclude / novel (m,).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker import engine
from worker.interrupt import stoppable
from worker.metrics import min_max_scale
from worker.results import Report

STRATEGIES = ("novel", "band", "farthest", "kcenter")
#: greedy strategies, whose picks are nested: the first c picks of a selection of k > c images
#: are the selection of c (each pick depends only on the picks before it)
NESTED = ("novel", "kcenter")
#: the strategy the paper used (section 4.3: random within the band [0.6, 1] of scaled I_dist)
PAPER_STRATEGY = "band"
#: aim -> True when a higher value is better
AIMS = {"novelty": True, "coverage": False, "novel_coverage": False}
#: strategy -> the aims that decide whether it beats random
STRATEGY_AIMS = {
    "novel": ("novelty", "novel_coverage"),
    "band": ("novelty",),
    "farthest": ("novelty",),
    "kcenter": ("coverage",),
}
#: strategy -> its aim in words (report.json `aim`)
AIM_WORDS = {
    "novel": "novelty and coverage of the novel images",
    "band": "novelty",
    "farthest": "novelty",
    "kcenter": "coverage",
}
#: a selection beats random when its Monte Carlo p-value is at most this
ALPHA = 0.05


def _count(count: int, m: int) -> int:
    count = int(count)
    if count < 0:
        raise ValueError(f"selection.counts: a count must be >= 0, got {count}")
    return min(count, m)


def _mask(m: int, mask: np.ndarray | None, name: str) -> np.ndarray:
    """A boolean (m,) mask; None -> all False."""
    if mask is None:
        return np.zeros(m, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (m,):
        raise ValueError(f"{name} has shape {mask.shape}, expected ({m},)")
    return mask


def candidates(
    m: int, exclude: np.ndarray | None = None, hold: np.ndarray | None = None
) -> np.ndarray:
    """Indices of S that may be proposed: neither in the pool (`exclude`) nor held out
    (`hold`), ascending."""
    return np.flatnonzero(~(_mask(m, exclude, "exclude") | _mask(m, hold, "hold")))


def select_band(
    i_dist: np.ndarray,
    count: int,
    band: tuple[float, float] = (0.6, 1.0),
    seed: int = 0,
    exclude: np.ndarray | None = None,
    hold: np.ndarray | None = None,
) -> list[int]:
    """Paper section 4.3: `count` images drawn at random (seeded, without replacement) among
    those whose min-max scaled I_dist x' (method.md §1.7) lies in [lo, hi], both ends inclusive.

    x' is scaled over all of S; only candidates (`candidates`) are drawn. When the band holds
    fewer than `count` candidates, all of them are taken and the rest is filled with the
    candidates outside the band closest to it (smallest gap in x' to [lo, hi]; ties to the
    larger I_dist, then the lower index). For a band that ends at 1, as the paper's [0.6, 1],
    these are the next farthest images below the band.
    Returned ordered by I_dist descending (ties: lower index first).
    """
    i_dist = np.asarray(i_dist, dtype=np.float64)
    lo, hi = (float(b) for b in band)
    if not lo <= hi:
        raise ValueError(f"selection.band: expected [lo, hi] with lo <= hi, got {list(band)}")
    cand = candidates(len(i_dist), exclude, hold)
    count = _count(count, len(cand))
    scaled = min_max_scale(i_dist)
    inside = cand[(scaled[cand] >= lo) & (scaled[cand] <= hi)]
    if len(inside) >= count:
        picked = np.random.default_rng(seed).choice(inside, size=count, replace=False)
    else:
        outside = np.setdiff1d(cand, inside)
        gap = np.maximum(lo - scaled[outside], scaled[outside] - hi)
        # lexsort: last key is primary -> gap, then -i_dist, then index
        order = np.lexsort((outside, -i_dist[outside], gap))
        picked = np.concatenate([inside, outside[order][: count - len(inside)]])
    return [int(j) for j in sorted(picked.tolist(), key=lambda j: (-i_dist[j], j))]


def select_farthest(
    i_dist: np.ndarray,
    count: int,
    exclude: np.ndarray | None = None,
    hold: np.ndarray | None = None,
) -> list[int]:
    """The `count` candidates of largest I_dist, farthest first; ties go to the lower index."""
    i_dist = np.asarray(i_dist, dtype=np.float64)
    cand = candidates(len(i_dist), exclude, hold)
    order = cand[np.argsort(-i_dist[cand], kind="stable")]
    return [int(j) for j in order[: _count(count, len(cand))]]


def _pool(S_L: np.ndarray, P_L: np.ndarray | None, exclude: np.ndarray) -> np.ndarray | None:
    """P's rows and the excluded S rows: the centres already chosen."""
    parts = [] if P_L is None or len(P_L) == 0 else [np.asarray(P_L)]
    if exclude.any():
        parts.append(S_L[exclude])
    return np.vstack(parts) if parts else None


def select_kcenter(
    S_L: np.ndarray,
    P_L: np.ndarray,
    count: int,
    exclude: np.ndarray | None = None,
    hold: np.ndarray | None = None,
    **engine_kw: Any,
) -> list[int]:
    """Greedy k-center (Sener & Savarese 2017) on the candidates of S with every image of the
    pool (P and the `exclude`d S images) counted as an already-chosen centre: each pick is the
    candidate farthest from all centres so far, which greedily minimises the covering radius of
    S u P. `hold`: S images neither proposed nor centres. In pick order
    (engine.kcenter_greedy)."""
    S_L = np.asarray(S_L)
    exclude = _mask(len(S_L), exclude, "exclude")
    cand = candidates(len(S_L), exclude, hold)
    centers = _pool(S_L, P_L, exclude)
    picks = engine.kcenter_greedy(S_L[cand], _count(count, len(cand)), centers, **engine_kw)
    return [int(cand[j]) for j in picks]


def select_novel(
    S_L: np.ndarray,
    P_L: np.ndarray,
    novel: np.ndarray,
    count: int,
    exclude: np.ndarray | None = None,
    hold: np.ndarray | None = None,
    **engine_kw: Any,
) -> list[int]:
    """The labelling default: greedy k-center among the novel candidates (`novel`: beyond P's
    calibrated quantile), with the pool (P and the `exclude`d S images) as chosen centres, so
    the picks are novel and spread over the novel part of S. When fewer novel candidates than
    `count` exist, all of them are taken (in k-center order) and k-center continues over the
    other candidates, with the novel picks as centres too. In pick order."""
    S_L = np.asarray(S_L)
    m = len(S_L)
    novel = _mask(m, novel, "novel")
    exclude, hold = _mask(m, exclude, "exclude"), _mask(m, hold, "hold")
    count = _count(count, len(candidates(m, exclude, hold)))
    first = select_kcenter(S_L, P_L, count, exclude, hold | ~novel, **engine_kw)
    if len(first) >= count:
        return first
    pool = exclude.copy()
    pool[first] = True  # the novel picks are centres for the rest
    return first + select_kcenter(S_L, P_L, count - len(first), pool, hold, **engine_kw)


def select(
    strategy: str,
    *,
    S_L: np.ndarray,
    P_L: np.ndarray,
    i_dist: np.ndarray,
    count: int,
    band: tuple[float, float] = (0.6, 1.0),
    seed: int = 0,
    novel: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    hold: np.ndarray | None = None,
    **engine_kw: Any,
) -> list[int]:
    """Dispatch by strategy name: 'novel', 'band', 'farthest' or 'kcenter' (see above).
    `exclude`: the pool's S images (never proposed, centres); `hold`: S images held out of
    every selection (the adaptation's held-out split; not centres). Returns
    min(count, candidates) indices into S; `novel` is required by 'novel'."""
    if len(i_dist) != len(S_L):
        raise ValueError(f"i_dist has {len(i_dist)} entries but S_L has {len(S_L)} rows")
    if strategy == "novel":
        if novel is None:
            raise ValueError("selection.strategy 'novel' needs the per-image novel flags")
        return select_novel(S_L, P_L, novel, count, exclude, hold, **engine_kw)
    if strategy == "band":
        return select_band(i_dist, count, band, seed, exclude, hold)
    if strategy == "farthest":
        return select_farthest(i_dist, count, exclude, hold)
    if strategy == "kcenter":
        return select_kcenter(S_L, P_L, count, exclude, hold, **engine_kw)
    raise ValueError(
        f"selection.strategy: unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}"
    )


def held_out_split(i_dist: np.ndarray, fraction: float, seed: int) -> list[int]:
    """The adaptation's held-out split (method.md §5.7), chosen before selection: S sorted by
    I_dist (ascending, ties by index) is cut into k = round(fraction * m) equal strata
    (numpy.array_split) and one image is drawn from each (numpy.random.default_rng([seed,
    m])), so the split follows S's I_dist distribution and always holds one of the farthest
    ceil(m / k) images. k is 0 for fraction 0 and at most m - 1 (something is left to select).
    Returned ascending."""
    i_dist = np.asarray(i_dist, dtype=np.float64)
    m = len(i_dist)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"adaptation.held_out: a fraction in [0, 1), got {fraction}")
    k = min(int(round(fraction * m)), max(m - 1, 0))
    if k == 0:
        return []
    order = np.lexsort((np.arange(m), i_dist))
    rng = np.random.default_rng([int(seed), m])
    return sorted(int(rng.choice(stratum)) for stratum in np.array_split(order, k))


def random_subset(m: int, count: int, seed: int) -> list[int]:
    """min(count, m) distinct indices of range(m), drawn uniformly (seeded), sorted ascending.
    The baseline for a selection's diversity (LightlyOne)."""
    m = int(m)
    count = _count(count, m)
    if count == 0:
        return []
    rng = np.random.default_rng(seed)
    return sorted(int(j) for j in rng.choice(m, size=count, replace=False))


# --------------------------------------------------------------------------- against random


def random_subsets(candidates: np.ndarray, count: int, subsets: int, seed: int) -> np.ndarray:
    """(subsets, count) int array: `subsets` independent uniform draws of `count` distinct
    candidates each (numpy.random.default_rng([seed, count]), one `choice` per row)."""
    candidates = np.asarray(candidates, dtype=np.int64)
    count = _count(count, len(candidates))
    rng = np.random.default_rng([int(seed), count])
    out = np.empty((int(subsets), count), dtype=np.int64)
    for b in stoppable(range(int(subsets))):
        out[b] = rng.choice(candidates, size=count, replace=False)
    return out


def mean_novelty(novelty: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """(B,) mean per-image novelty of each row of `subsets` ((B, k) indices into novelty)."""
    novelty = np.asarray(novelty, dtype=np.float64)
    subsets = np.asarray(subsets, dtype=np.int64)
    if subsets.shape[1] == 0:
        return np.full(len(subsets), np.nan)
    return novelty[subsets].mean(axis=1)


def covering_radii(
    S_L: np.ndarray,
    pool_nearest: np.ndarray,
    subsets: np.ndarray,
    rows: np.ndarray | None = None,
    chunk_values: int = 1 << 22,
) -> np.ndarray:
    """(B,) covering radius of the S rows `rows` (default all of S) by the pool plus each row
    of `subsets` ((B, k) indices into S): max over covered rows r of
    min(pool_nearest[r], min_j ||S_L[r] - S_L[subsets[b, j]]||) (Sener & Savarese; method.md
    §2.2). `pool_nearest` (m,): each S image's distance to its nearest pool image (P, earlier
    selections, labelled images; +inf for an empty pool). NaN when `rows` is empty.
    float64 from squared distances of centred rows (sqrt taken at the end), in chunks of rows
    of about `chunk_values` values.

    Rows are visited farthest from the pool first, and the visit stops at the first row whose
    pool distance is no larger than every subset's radius so far: no later row can raise a
    max whose terms it caps at its pool distance (exact; most rows of S lie near the pool)."""
    S_L = np.asarray(S_L, dtype=np.float64)
    pool_nearest = np.asarray(pool_nearest, dtype=np.float64)
    subsets = np.asarray(subsets, dtype=np.int64).reshape(len(subsets), -1)
    rows = np.arange(len(S_L)) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.full(len(subsets), np.nan)
    used, pos = np.unique(subsets, return_inverse=True)
    pos = pos.reshape(subsets.shape)
    centre = S_L[rows].mean(axis=0)  # centred: the expanded squares lose less to rounding
    centres = S_L[used] - centre
    c2 = (centres**2).sum(axis=1)
    pool2 = pool_nearest**2
    rows = rows[np.argsort(-pool2[rows], kind="stable")]  # farthest from the pool first
    step = max(1, chunk_values // max(1, len(used) + len(subsets)))
    radii2 = np.full(len(subsets), -np.inf)
    start = 0
    chunk = max(1, min(step, 256))  # small first chunks: the visit often ends within them
    for _ in stoppable(itertools.count()):
        if start >= len(rows) or pool2[rows[start]] <= radii2.min():
            break
        r = rows[start : start + chunk]
        start, chunk = start + len(r), min(step, 2 * chunk)
        x = S_L[r] - centre
        d2 = np.maximum((x**2).sum(axis=1)[:, None] + c2[None, :] - 2.0 * (x @ centres.T), 0.0)
        nearest2 = np.broadcast_to(pool2[r][:, None], (len(r), len(subsets))).copy()
        for j in range(subsets.shape[1]):  # (chunk, B): min over each subset's j-th member
            np.minimum(nearest2, d2[:, pos[:, j]], out=nearest2)
        np.maximum(radii2, nearest2.max(axis=0), out=radii2)
    return np.sqrt(radii2)


def judge_value(
    value: float | None, random_values: np.ndarray, higher_is_better: bool, alpha: float = ALPHA
) -> dict[str, Any]:
    """A selection's `value` on one aim against the same aim of B random subsets.

    percentile = 100 * (#{random worse than value} + 0.5 * #{random equal}) / B (mid-rank);
    p_value = (1 + #{random at least as good as value}) / (B + 1) (one-sided Monte Carlo
    test, the +1 counts the selection itself); beats_random = p_value <= alpha.
    Every field is None when value is None/NaN or B = 0.
    """
    r = np.asarray(random_values, dtype=np.float64)
    r = r[np.isfinite(r)]
    if value is None or not np.isfinite(value) or r.size == 0:
        return {"percentile": None, "p_value": None, "beats_random": None}
    sign = 1.0 if higher_is_better else -1.0
    worse = int(np.sum(sign * r < sign * value))
    equal = int(np.sum(r == value))
    percentile = 100.0 * (worse + 0.5 * equal) / r.size
    p_value = (1 + r.size - worse) / (r.size + 1)
    return {"percentile": percentile, "p_value": p_value, "beats_random": bool(p_value <= alpha)}


def judge(
    strategy: str,
    chosen: list[int],
    *,
    S_L: np.ndarray,
    novelty: np.ndarray,
    novel: np.ndarray,
    pool_nearest: np.ndarray,
    subsets: np.ndarray,
    baselines: dict[str, np.ndarray] | None = None,
    alpha: float = ALPHA,
) -> list[dict[str, Any]]:
    """One selection (indices into S) against `subsets` ((B, k) random candidate subsets of
    its size, `random_subsets`) on every aim that applies:

    - novelty: mean per-image novelty of the chosen images (higher is better);
    - coverage: covering radius of S by the pool plus the chosen images (lower is better);
    - novel_coverage: the same for the novel images of S only (when S has any).

    Returns one dict per aim: {aim, decides (an aim of `strategy`), higher_is_better, value,
    random (the finite values of the B subsets), percentile, p_value, beats_random}.
    `baselines` (aim -> (B,)) caches the random values across strategies sharing `subsets`.
    A selection of no image or of every candidate (subsets of its size are all alike) is not
    judged (None fields)."""
    novelty = np.asarray(novelty, dtype=np.float64)
    novel = np.asarray(novel, dtype=bool)
    baselines = {} if baselines is None else baselines
    pick = np.asarray(chosen, dtype=np.int64)[None, :]
    comparable = pick.shape[1] > 0 and len({tuple(sorted(r)) for r in subsets.tolist()}) > 1
    aims = {
        "novelty": lambda s: mean_novelty(novelty, s),
        "coverage": lambda s: covering_radii(S_L, pool_nearest, s),
    }
    if novel.any():
        rows = np.flatnonzero(novel)
        aims["novel_coverage"] = lambda s: covering_radii(S_L, pool_nearest, s, rows)
    out = []
    for aim, measure in aims.items():
        value = float(measure(pick)[0]) if pick.shape[1] else None
        if aim not in baselines:
            baselines[aim] = measure(subsets)
        higher = AIMS[aim]
        verdict = (
            judge_value(value, baselines[aim], higher, alpha)
            if comparable
            else judge_value(None, baselines[aim], higher, alpha)
        )
        out.append(
            {
                "aim": aim,
                "decides": aim in STRATEGY_AIMS[strategy],
                "higher_is_better": higher,
                "value": value if value is not None and np.isfinite(value) else None,
                "random": baselines[aim][np.isfinite(baselines[aim])],
                **verdict,
            }
        )
    return out


_AIM_WORDS = {
    "novelty": ("novelty", "mean novelty"),
    "coverage": ("coverage of S", "covering radius"),
    "novel_coverage": ("coverage of the novel images", "covering radius of the novel images"),
}


def beats_random(judged: list[dict[str, Any]]) -> bool | None:
    """True when the selection beats random on every aim that decides for its strategy, False
    when it fails one, None when it could not be judged (no image, every candidate, no novel
    image for an aim)."""
    decisive = [j["beats_random"] for j in judged if j["decides"]]
    if any(b is False for b in decisive):
        return False
    if not decisive or any(b is None for b in decisive):
        return None
    return True


def verdict(strategy: str, count: int, judged: list[dict[str, Any]], subsets: int) -> str:
    """A selection's judgement in plain words, e.g. "kcenter 7: beats random on coverage of S
    (covering radius 1.2, better than 99% of 200 random subsets of 7)"."""
    head = f"{strategy} {count}"
    decisive = [j for j in judged if j["decides"]]
    if count == 0:
        return f"{head}: nothing selected, nothing to judge."
    if all(j["beats_random"] is None for j in decisive):
        return (
            f"{head}: not judged against random (it takes every candidate image, or S has "
            "no novel image)."
        )
    parts = []
    for j in decisive:
        what, metric = _AIM_WORDS[j["aim"]]
        if j["beats_random"] is None:
            parts.append(f"{what} not judged")
            continue
        word = "beats random" if j["beats_random"] else "does not beat random"
        parts.append(
            f"{word} on {what} ({metric} {j['value']:.3g}, better than "
            f"{j['percentile']:.0f}% of {subsets} random subsets of {count}, "
            f"p = {j['p_value']:.2g})"
        )
    return f"{head}: " + "; ".join(parts) + "."


def pool_nearest(
    S_L: np.ndarray,
    nearest_primary: np.ndarray,
    exclude: np.ndarray,
    outside: np.ndarray | None = None,
    **engine_kw: Any,
) -> np.ndarray:
    """(m,) each S image's distance to its nearest pool image: P (`nearest_primary`, (m,)),
    a labelled image outside S (`outside`, (k, z)) or an excluded S image (an excluded image
    is at distance 0 from the pool)."""
    out = np.asarray(nearest_primary, dtype=np.float64).copy()
    exclude = np.asarray(exclude, dtype=bool)
    S_L = np.asarray(S_L)
    for rows in (None if outside is None else np.asarray(outside), S_L[exclude]):
        if rows is not None and len(rows):
            d, _ = engine.nearest_distances(S_L, rows, **engine_kw)
            out = np.minimum(out, d)
    return out


# --------------------------------------------------------------------------- memory, labelled


@dataclass(frozen=True)
class SelectionMemory:
    """What earlier runs of a run store selected (method.md §3.6): content hashes (any
    secondary) and, for images without a hash, (secondary name, id) pairs."""

    hashes: frozenset[str] = frozenset()
    ids: frozenset[tuple[str, str]] = frozenset()
    runs: int = 0


def earlier_selections(reports: Iterable[Report]) -> SelectionMemory:
    """The images any selection of `reports` (earlier runs, typed) chose: by content hash
    (images[].sha256), else by (secondary, id)."""
    hashes: set[str] = set()
    ids: set[tuple[str, str]] = set()
    runs = 0
    for report in reports:
        runs += 1
        for sec in report.secondaries:
            sha = {im.id: im.sha256 for im in sec.images}
            for sel in sec.selections:
                for i in sel.ids:
                    if sha.get(i):
                        hashes.add(sha[i])
                    else:
                        ids.add((sec.name, i))
    return SelectionMemory(frozenset(hashes), frozenset(ids), runs)


def earlier_mask(
    name: str, ids: Sequence[str], hashes: Sequence[str], memory: SelectionMemory | None
) -> np.ndarray:
    """(m,) True for the images of secondary `name` an earlier run selected: its content hash
    was selected (in any secondary), or, without a hash, its id in a secondary of this name."""
    if memory is None:
        return np.zeros(len(ids), dtype=bool)
    hashes = list(hashes) or [None] * len(ids)
    return np.array(
        [
            (h is not None and h in memory.hashes) or (name, i) in memory.ids
            for i, h in zip(ids, hashes, strict=True)
        ],
        dtype=bool,
    ).reshape(len(ids))


def labelled_mask(
    ids: Sequence[str], uris: Sequence[str], labelled: Sequence[str], base_dir: Path | None = None
) -> np.ndarray:
    """(m,) True for the images `labelled` names (selection.labelled): an entry matches an
    image whose id or location (file path or s3:// URI) equals it or lies under it (a folder or
    prefix ending at a '/'). A relative local entry also matches against `base_dir`/entry."""
    entries: set[str] = set()
    for e in labelled:
        e = str(e).rstrip("/")
        entries.add(e)
        if base_dir is not None and "://" not in e and not Path(e).is_absolute():
            entries.add(str(Path(base_dir) / e))
            entries.add(str((Path(base_dir) / e).resolve()))  # as listed through links
    if not entries:
        return np.zeros(len(ids), dtype=bool)
    uris = list(uris) or [None] * len(ids)

    def named(text: str | None) -> bool:
        if not text:
            return False
        parts = text.split("/")
        return any("/".join(parts[:k]) in entries for k in range(1, len(parts) + 1))

    return np.array(
        [named(i) or named(u) for i, u in zip(ids, uris, strict=True)], dtype=bool
    ).reshape(len(ids))


def labelled_outside(
    ids: Sequence[str],
    hashes: Sequence[str],
    labelled_ids: Sequence[str],
    labelled_hashes: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """The labelled images outside the job's datasets (selection.labelled folders, prefixes,
    files) against one secondary's m images: ((m,) True for the S images they are: the same
    content hash, or, for embeddings of precomputed sets, the same id; (k,) True for the
    labelled images that are not an S image, the rows that join the pool beside P)."""
    hashes = list(hashes) or [None] * len(ids)
    labelled_hashes = list(labelled_hashes) or [None] * len(labelled_ids)
    lab_hash = {h for h in labelled_hashes if h}
    lab_id = set(labelled_ids)
    s_hash, s_id = {h for h in hashes if h}, set(ids)
    in_s = np.array(
        [
            (i in lab_id) or (h is not None and h in lab_hash)
            for i, h in zip(ids, hashes, strict=True)
        ],
        dtype=bool,
    ).reshape(len(ids))
    outside = np.array(
        [
            i not in s_id and (h is None or h not in s_hash)
            for i, h in zip(labelled_ids, labelled_hashes, strict=True)
        ],
        dtype=bool,
    ).reshape(len(labelled_ids))
    return in_s, outside
