"""A complete report dict (two secondaries, hostile image ids) and its figure data, for the
report, gate and rendering tests."""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.analysis import ScatterPoints
from worker.report.inputs import FigureData
from worker.report.model import SCHEMA_VERSION
from worker.report.pictures import PictureSets, picture_sets

HOSTILE_ID = "<b>&x.png"


SCRIPT_ID = "<script>alert(1)</script>.png"


LONG_ID = "very/deep/" * 12 + "folder_without_any_spaces_at_all_0001.png"


def _spread(values: np.ndarray, bins: int = 10) -> dict:
    counts, edges = np.histogram(values, bins=bins)
    return {
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def _secondary(
    name: str, ids: list[str], loc: float, n_primary: int, rng, far_ids: tuple[str, ...] = ()
) -> dict:
    i_dist = rng.gamma(4.0, 1.0, size=len(ids)) * 10 * n_primary * loc
    scaled = (i_dist - i_dist.min()) / (i_dist.max() - i_dist.min())
    nn = rng.gamma(2.0, 0.4, size=len(ids))
    order = np.argsort(-i_dist)
    ids = list(ids)
    for k, far in zip(order, far_ids, strict=False):  # the farthest images get these ids
        ids[k] = far
    selections = []
    for strategy in ("band", "farthest"):
        for q in (3, 7):
            chosen = [ids[k] for k in order[:q]]
            selections.append(
                {
                    "strategy": strategy,
                    "count": q,
                    "ids": chosen,
                    "diversity": _spread(nn[:q] * 1.5, 5),
                    "coverage": {"mean": float(nn.mean() * 2), "max": float(nn.max() * 3)},
                    "random_diversity": _spread(nn[-q:], 5),
                    "pool_diversity": _spread(nn * 0.9, 10),
                }
            )
    return {
        "name": name,
        "count": len(ids),
        "o_dist": float(i_dist.mean()),
        "o_dist_scaled": None,
        "o_dist_mean": float(i_dist.mean() / n_primary),
        "i_dist": _summary(i_dist),
        "i_dist_scaled_p90": float(np.percentile(scaled, 90)),
        "images": [
            {
                "id": i,
                "i_dist": float(d),
                "i_dist_scaled": float(s),
                "i_dist_mean": float(d / n_primary),
            }
            for i, d, s in zip(ids, i_dist, scaled, strict=True)
        ],
        "splits": {"halves": _splits(i_dist, 2), "thirds": _splits(i_dist, 3)},
        "pca": {
            "route": "exact",
            "dims": 15,
            "requested_dims": 25,
            "explained_variance_ratio": [0.3, 0.2, 0.1],
            "warnings": [],
        },
        "diversity": _spread(nn),
        "coverage_by_primary": {"mean": float(nn.mean() * 3), "max": float(nn.max() * 4)},
        "selections": selections,
    }


def make_report() -> dict:
    """A realistic report: 3 secondaries (one embeddings-only), sweep, 2 models, failing gates."""
    rng = np.random.default_rng(3)
    n_primary = 40
    s1_ids = [f"s1/img_{k:03d}.png" for k in range(30)]
    s2_ids = [f"far/{k:04d}.jpg" for k in range(90)]
    s3_ids = [str(k) for k in range(25)]
    secs = [
        _secondary("S1 near", s1_ids, 1.0, n_primary, rng, (HOSTILE_ID, LONG_ID)),
        _secondary("S2 far & wide", s2_ids, 2.2, n_primary, rng),
        _secondary("S3-emb", s3_ids, 1.5, n_primary, rng),
    ]
    # One long selection to exercise truncation.
    secs[1]["selections"].append(
        {
            "strategy": "kcenter",
            "count": 60,
            "ids": s2_ids[:60],
            "diversity": None,
            "coverage": None,
            "random_diversity": None,
            "pool_diversity": None,
        }
    )
    o = {s["name"]: s["o_dist"] for s in secs}
    total = sum(o.values())
    scaled = {k: v / total for k, v in o.items()}
    for s in secs:
        s["o_dist_scaled"] = scaled[s["name"]]
    sweep = []
    for z, jitter in ((5, 0.0), (10, 0.01), (15, 0.02)):
        vals = {k: v + jitter * (i - 1) for i, (k, v) in enumerate(scaled.items())}
        sweep.append(
            {"dims": z, "o_dist_scaled": vals, "ranking": sorted(vals, key=lambda n: -vals[n])}
        )
    model = {
        "name": "hog",
        "checkpoint": None,
        "revision": None,
        "feature_dim": 1764,
        "pooling": None,
        "image_size": 64,
    }
    gates = [
        {
            "metric": "o_dist_scaled",
            "dataset": "S1 near",
            "model": None,
            "value": scaled["S1 near"],
            "max": 0.5,
            "passed": True,
        },
        {
            "metric": "o_dist_scaled",
            "dataset": "S2 far & wide",
            "model": None,
            "value": scaled["S2 far & wide"],
            "max": 0.3,
            "passed": False,
        },
        {
            "metric": "i_dist_scaled_p90",
            "dataset": "S3-emb",
            "model": None,
            "value": secs[2]["i_dist_scaled_p90"],
            "max": 0.99,
            "passed": True,
        },
        {
            "metric": "mmd_p_value",
            "dataset": "S1 near",
            "model": "clip",
            "value": None,
            "min": 0.05,
            "passed": False,
            "reason": "mmd_p_value was not computed for S1 near",
        },
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "passed": False,
        "run": {
            "started": "2026-01-01T00:00:00+00:00",
            "finished": "2026-01-01T00:01:00+00:00",
            "duration_s": 60.0,
            "host": "test-host",
            "versions": {"worker": "0.1.0", "python": "3.12"},
        },
        "job": {"seed": 0, "source": "jobs/nightly.yaml"},
        "model": model,
        "primary": {
            "name": "P-train",
            "count": n_primary,
            "diversity": _spread(rng.gamma(2.0, 0.5, size=n_primary)),
        },
        "pca": {
            "dims": 15,
            "requested_dims": 25,
            "route": "exact",
            "explained_variance_ratio": [0.3, 0.2, 0.1],
        },
        "o_dist_scaled": scaled,
        "secondaries": secs,
        "pca_sweep": sweep,
        "pca_sweep_stable": False,
        "models": [
            {"model": model, "label": "hog", "o_dist": o, "o_dist_scaled": scaled},
            {
                "model": {**model, "name": "clip", "feature_dim": 512},
                "label": "clip",
                "o_dist": {k: v * 0.5 for k, v in o.items()},
                "o_dist_scaled": scaled,
            },
        ],
        "gates": gates,
        "skipped": [
            {"dataset": "S1 near", "id": SCRIPT_ID, "reason": "cannot decode image"},
            {"dataset": "P-train", "id": "broken.tif", "reason": "truncated file"},
        ],
        "warnings": ["S3-emb: pca dims 25 > rank 15; clamped to 15"],
    }


def make_extras(report: dict) -> FigureData:
    rng = np.random.default_rng(5)
    names = [report["primary"]["name"]] + [s["name"] for s in report["secondaries"]]
    points = {
        n: rng.normal(size=(k, 2)) + i
        for i, (n, k) in enumerate(
            [(report["primary"]["name"], report["primary"]["count"])]
            + [(s["name"], s["count"]) for s in report["secondaries"]]
        )
    }
    selected = {s["name"]: [0, 1, 2] for s in report["secondaries"]}
    return FigureData(scatter=ScatterPoints(names=names, points=points, selected=selected))


class FakePictures:
    """worker.report.pictures.Pictures for the sample report: pictures in four modes for the
    first two secondaries (S3-emb is embeddings-only)."""

    def __init__(self, report: dict):
        self.names = {s["name"] for s in report["secondaries"][:2]}
        self.rng = np.random.default_rng(5)

    def has_images(self, dataset: str) -> bool:
        return dataset in self.names

    def get(self, dataset: str, image_id: str):
        arr = self.rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
        mode = ["RGB", "L", "RGBA", "I;16"][len(image_id) % 4]
        img = Image.fromarray(arr, "RGB")
        return img.convert(mode) if mode != "I;16" else img.convert("L").convert("I;16")


def make_pictures(report: dict, typed) -> PictureSets:
    """The PDF's pictures of the sample report (its typed form `typed`)."""
    return picture_sets(typed, FakePictures(report))


def _summary(x: np.ndarray) -> dict:
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
        "p50": float(np.percentile(x, 50)),
        "p90": float(np.percentile(x, 90)),
    }


def _splits(x: np.ndarray, parts: int) -> list[dict]:
    return [
        {"mean": float(p.mean()), "std": float(p.std()), "count": len(p)}
        for p in np.array_split(np.sort(x), parts)
    ]
