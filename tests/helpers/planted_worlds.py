"""Planted worlds for the performance estimate (docs/method-estimate.md, "Measured coverage").

A world: crack-like images rendered with numpy (a random-walk crack on a smooth texture), a
primary set P, labelled secondaries and unlabelled ones (one near the labelled sets, one far),
each made with one shift of a given strength. A fixed "detector" (a dark-line filter on the red
channel) scores every image, so each set has a true ODS. The shifts:

- `noise`: sensor noise on every channel (false positives, HOG sees the texture);
- `blend`: a dark gravel texture blended in (dark blobs the detector takes for cracks);
- `clutter`: dark straight scratches (false positives; HOG sees their edges);
- `dark`: every channel darkens under fixed sensor noise (less contrast, tone histogram moves);
- `tint`: a green tint (the features see it, the detector, reading red, does not): F does not
  depend on the shift, the no-skill world.

Features are the built-in `hog` extractor's; distances, energy distance and calibrated
novelty are computed here with numpy in each pair's joint PCA space, independently of the
worker's own implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from worker import estimate as E
from worker.adapt import ods
from worker.extractors.hog import HogExtractor

SIZE = 64
SHIFTS = ("noise", "blend", "clutter", "dark")
PCA_DIMS = 10
K = 5
QUANTILE = 0.95
_HOG = HogExtractor(image_size=SIZE, pixels_per_cell=16)


def _texture(rng: np.random.Generator, sigma: float) -> np.ndarray:
    t = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (SIZE, SIZE)), sigma)
    return (t - t.mean()) / (t.std() + 1e-9)


def _crack(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    pos, drift = rng.uniform(0.25, 0.75) * SIZE, 0.0
    width = int(rng.integers(1, 4))
    for t in range(SIZE):
        drift = 0.85 * drift + rng.normal(0, 0.5)
        pos = min(max(pos + drift, 3.0), SIZE - 4.0)
        mask[int(pos) - width // 2 : int(pos) + (width + 1) // 2, t] = True
    return mask.T if rng.random() < 0.5 else mask


def render(rng: np.random.Generator, shift: str, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image (SIZE, SIZE, 3), crack mask (SIZE, SIZE) bool)."""
    mask = _crack(rng)
    base = 150.0 + 12.0 * _texture(rng, 2.0)
    depth = rng.uniform(45.0, 75.0)
    grey = base - depth * ndimage.gaussian_filter(mask.astype(float), 0.6) / 0.6
    img = np.stack([grey, grey * 0.97, grey * 0.92], axis=-1)
    s = float(strength)
    if shift == "noise":
        img = img + rng.normal(0.0, 45.0 * s, img.shape)
    elif shift == "blend":
        blobs = np.clip(_texture(rng, 1.2) - 0.6, 0, None) * 70.0
        gravel = np.stack([110.0 - blobs, 105.0 - blobs, 95.0 - blobs], axis=-1)
        img = (1 - 0.75 * s) * img + 0.75 * s * gravel
    elif shift == "clutter":
        # dark straight scratches: the detector takes them for cracks, HOG sees their edges
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        for _ in range(int(rng.poisson(16.0 * s))):
            a, c = rng.uniform(0, np.pi), rng.uniform(0, SIZE, 2)
            d = np.abs((xx - c[0]) * np.sin(a) - (yy - c[1]) * np.cos(a))
            img = img - (55.0 * np.exp(-(d**2) / 0.8))[..., None]
    elif shift == "dark":
        img = img * 0.12**s + 10.0 * s
    elif shift == "tint":
        img[..., 1] = img[..., 1] + 80.0 * s
        img[..., 2] = img[..., 2] - 40.0 * s
    img = img + rng.normal(0.0, 6.0, img.shape)  # the camera's own noise
    return np.clip(img, 0, 255).astype(np.uint8), mask


def detector(img: np.ndarray) -> np.ndarray:
    """The fixed model: a dark-line filter on the red channel, probabilities in [0, 1]."""
    red = img[..., 0].astype(np.float64)
    local = ndimage.uniform_filter(red, 9)
    return np.clip((local - red) / 60.0, 0.0, 1.0)


@dataclass(frozen=True)
class RenderedSet:
    name: str
    features: np.ndarray  # (M, d)
    counts: np.ndarray  # (M, T, 3) detector counts against the masks


def render_set(
    rng: np.random.Generator, name: str, shift: str, strength: float, n: int
) -> RenderedSet:
    feats, counts = [], []
    for _ in range(n):
        img, mask = render(rng, shift, strength)
        feats.append(_HOG.embed_one(Image.fromarray(img)))
        counts.append(ods.threshold_counts(detector(img), mask))
    return RenderedSet(name, np.asarray(feats, dtype=np.float64), np.stack(counts))


def _knn(d: np.ndarray, k: int) -> np.ndarray:
    return np.sort(d, axis=1)[:, k - 1]


def measure(p: RenderedSet, s: RenderedSet) -> E.Target:
    """The set's distances to P in the pair's joint PCA space: i_dist_mean, energy distance
    (2 E|s-p| - E|s-s'| - E|p-p'|), per-image novelty (share of P's leave-one-out k-NN
    distances below the image's k-NN distance to P) and novel (beyond P's q-quantile)."""
    x = np.vstack([p.features, s.features])
    x = x - x.mean(axis=0)
    evals, evecs = np.linalg.eigh(x @ x.T)  # the Gram route: scores = U sqrt(lambda)
    top = np.argsort(evals)[::-1][:PCA_DIMS]
    y = evecs[:, top] * np.sqrt(np.maximum(evals[top], 0.0))
    py, sy = y[: len(p.features)], y[len(p.features) :]

    def dist(a, b):
        return np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0))

    d_sp, d_ss, d_pp = dist(sy, py), dist(sy, sy), dist(py, py)
    energy = 2 * d_sp.mean() - d_ss.mean() - d_pp.mean()
    np.fill_diagonal(d_pp, np.inf)
    p_loo = _knn(d_pp, K)
    nn = _knn(d_sp, K)
    novelty = (p_loo[None, :] < nn[:, None]).mean(axis=1)
    threshold = np.quantile(p_loo, QUANTILE)
    i_dist_mean = d_sp.mean(axis=1)
    rng_scale = np.ptp(i_dist_mean) or 1.0
    return E.Target(
        name=s.name,
        ids=[f"{s.name}/{i}.png" for i in range(len(nn))],
        i_dist_scaled=(i_dist_mean - i_dist_mean.min()) / rng_scale,
        i_dist_mean=i_dist_mean,
        o_dist_mean=float(i_dist_mean.mean()),
        novelty=novelty,
        novel=nn > threshold,
        novelty_base_rate=1 - QUANTILE,
        energy=float(energy),
    )


def score(s: RenderedSet) -> tuple[float, float, np.ndarray]:
    """(ODS, its threshold, per-image F at it) of the detector on a set."""
    r = ods.evaluate_counts(s.counts)
    return r["ods_f"], r["ods_threshold"], np.array([v["f"] for v in r["per_image"]])


@dataclass(frozen=True)
class World:
    shift: str
    evidence: list[E.Evidence]
    targets: list[E.Target]
    truth: dict[str, float]  # true ODS of every unlabelled set
    far: set[str]


def make_world(
    seed: int,
    shift: str,
    *,
    labelled: tuple[float, ...] = (0.1, 0.35, 0.6),
    near: float = 0.45,
    far: float = 1.0,
    n_primary: int = 40,
    n: int = 24,
) -> World:
    """One world: labelled sets at the `labelled` strengths (jittered), an unlabelled set
    `U_near` at about `near` and `U_far` at `far`."""
    rng = np.random.default_rng(seed)
    p = render_set(rng, "P", shift, 0.0, n_primary)
    evidence, targets, truth = [], [], {}
    for i, st in enumerate(labelled):
        s = render_set(rng, f"L{i}", shift, float(np.clip(st + rng.uniform(-0.05, 0.05), 0, 1)), n)
        f_ods, thr, f_img = score(s)
        evidence.append(E.labelled(measure(p, s), f_img, f_ods, thr))
    for name, st in (("U_near", near + rng.uniform(-0.05, 0.05)), ("U_far", far)):
        s = render_set(rng, name, shift, float(st), n)
        targets.append(measure(p, s))
        truth[name] = score(s)[0]
    return World(shift, evidence, targets, truth, {"U_far"})


@dataclass(frozen=True)
class Outcome:
    """One unlabelled set of one world: what the estimate said and the truth."""

    world: int
    shift: str
    dataset: str
    far: bool
    truth: float
    estimated_f: float | None
    low: float | None
    high: float | None
    extrapolation: bool
    skill: bool
    loo_mae: float | None
    reason: str | None

    @property
    def covered(self) -> bool | None:
        if self.low is None or self.high is None:
            return None
        return self.low <= self.truth <= self.high


def outcomes(seed: int, shift: str, **world_kw) -> list[Outcome]:
    """Make world `seed` and estimate its unlabelled sets."""
    w = make_world(seed, shift, **world_kw)
    est = E.estimate_performance(w.evidence, w.targets, seed=seed, n_bootstrap=0)
    return [
        Outcome(
            seed,
            shift,
            s.dataset,
            s.dataset in w.far,
            w.truth[s.dataset],
            s.estimated_f,
            s.low,
            s.high,
            s.extrapolation,
            bool(est.skill),
            est.loo_mae,
            s.reason,
        )  # fmt: skip
        for s in est.secondaries
    ]


def write_world(
    root: Path,
    seed: int,
    shift: str,
    *,
    labelled: tuple[float, ...] = (0.1, 0.35, 0.6),
    unlabelled: dict[str, float] | None = None,
    n_primary: int = 30,
    n: int = 16,
    masks_for: tuple[str, ...] = (),
) -> dict:
    """Write a world as a job's inputs under `root`: images (PNG), and for the labelled sets
    (and those named in `masks_for`) masks and the detector's 8-bit probability maps, so the
    job's `predictions:` make them labelled evidence. Returns the job's `datasets` block."""
    rng = np.random.default_rng(seed)
    unlabelled = {"U_near": 0.45, "U_far": 1.0} if unlabelled is None else unlabelled
    plan = [("P", 0.0, n_primary, False)]
    plan += [(f"L{i}", st, n, True) for i, st in enumerate(labelled)]
    plan += [(name, st, n, name in masks_for) for name, st in unlabelled.items()]
    secondary = []
    for name, strength, count, with_masks in plan:
        for i in range(count):
            img, mask = render(rng, shift, strength)
            for sub, arr in (("images", img), ("masks", mask.astype(np.uint8) * 255),
                             ("pred", np.round(detector(img) * 255).astype(np.uint8))):  # fmt: skip
                path = root / name / sub / f"{i:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
        entry = {"name": name, "path": f"{name}/images"}
        if with_masks:
            entry.update(masks=f"{name}/masks", predictions=f"{name}/pred")
        secondary.append(entry)
    return {"primary": secondary[0], "secondary": secondary[1:]}
