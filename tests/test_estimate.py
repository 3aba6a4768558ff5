"""Performance estimate without labels (worker.estimate, docs/method.md §7)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel

from worker import estimate as E
from worker.adapt import evaluate_cli
from worker.adapt.predictions import score_all_predictions, score_predictions
from worker.errors import JobError
from worker.job import parse_job


def truth(x: np.ndarray) -> np.ndarray:
    """Known per-image F as a decreasing function of the size-free distance."""
    return 0.9 / (1.0 + np.exp(np.asarray(x, dtype=np.float64) - 5.0))


def _labelled(name, lo, hi, n, rng, gap=0.0, noise=0.05) -> E.Evidence:
    x = rng.uniform(lo, hi, n)
    f = np.clip(truth(x) + rng.normal(0.0, noise, n), 0.0, 1.0)
    s = (x - x.min()) / (x.max() - x.min())
    return E.Evidence(name, [f"{name}/{i}.png" for i in range(n)], s, x, f, float(x.mean()),
                      float(f.mean() + gap))  # fmt: skip


def _target(name, lo, hi, n, rng) -> tuple[E.Target, np.ndarray]:
    x = rng.uniform(lo, hi, n)
    s = (x - x.min()) / (x.max() - x.min())
    return E.Target(name, [f"{name}/{i}.png" for i in range(n)], s, x, float(x.mean())), x


def _evidence(name, x, f, ods) -> E.Evidence:
    x = np.asarray(x, dtype=np.float64)
    return E.Evidence(
        name, [f"{name}{i}" for i in range(len(x))], np.zeros(len(x)), x, np.asarray(f, float),
        float(x.mean()), ods,
    )  # fmt: skip


# ------------------------------------------------------------------------------ the fit


def _pava_non_increasing(y: np.ndarray) -> np.ndarray:
    """Independent pool-adjacent-violators for a non-increasing fit (x already sorted)."""
    blocks = [[float(v), 1] for v in y]
    i = 0
    while i < len(blocks) - 1:
        if blocks[i][0] < blocks[i + 1][0]:  # violation of non-increasing
            v = (blocks[i][0] * blocks[i][1] + blocks[i + 1][0] * blocks[i + 1][1]) / (
                blocks[i][1] + blocks[i + 1][1]
            )
            blocks[i] = [v, blocks[i][1] + blocks[i + 1][1]]
            del blocks[i + 1]
            i = max(i - 1, 0)
        else:
            i += 1
    return np.concatenate([[v] * n for v, n in blocks])


def test_isotonic_hand_vector_and_reference():
    g = E.fit_isotonic([1, 2, 3, 4], [0.5, 0.8, 0.3, 0.4])
    np.testing.assert_allclose(g.predict([1, 2, 3, 4]), [0.65, 0.65, 0.35, 0.35], atol=1e-12)
    # clipped outside the range, linear between fitted points
    np.testing.assert_allclose(g.predict([0, 9, 2.5]), [0.65, 0.35, 0.5], atol=1e-12)
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0, 10, 60))
    y = np.clip(truth(x) + rng.normal(0, 0.1, 60), 0, 1)
    np.testing.assert_allclose(E.fit_isotonic(x, y).predict(x), _pava_non_increasing(y), atol=1e-9)


# ------------------------------------------------------------------------------ leave-one-out


def _three_sets() -> list[E.Evidence]:
    return [
        _evidence("A", [1, 2], [0.9, 0.7], 0.85),
        _evidence("B", [3, 4], [0.5, 0.3], 0.35),
        _evidence("C", [5, 6], [0.2, 0.1], 0.20),
    ]


def test_leave_one_out_against_hand_computation():
    # strictly decreasing points: the isotonic fit interpolates them and clips outside.
    # -A: fit on B,C; offset = mean(0.35-0.40, 0.20-0.15) = 0; g(1) = g(2) = 0.5 -> 0.5
    # -B: fit on A,C; offset = mean(0.85-0.80, 0.20-0.15) = 0.05;
    #     g(3) = 0.7 - 0.5/3, g(4) = 0.7 - 1/3, mean 0.45 -> 0.50
    # -C: fit on A,B; offset = mean(0.05, -0.05) = 0; g(5) = g(6) = 0.3 -> 0.30
    ev = _three_sets()
    np.testing.assert_allclose(E.leave_one_out(ev), [0.5, 0.5, 0.3], atol=1e-12)
    est = E.estimate_performance(ev, [], min_images=1, n_bootstrap=20)
    assert est.made
    np.testing.assert_allclose([s.loo_error for s in est.labelled], [0.35, 0.15, 0.10], atol=1e-12)
    assert est.loo_mae == pytest.approx((0.35 + 0.15 + 0.10) / 3, abs=1e-12)
    # the reported offset: mean over all three sets of ODS - mean fitted F = (0.05 - 0.05 + 0.05)/3
    assert est.offset == pytest.approx(0.05 / 3, abs=1e-12)
    # the dataset-level fit's LOO: ODS on o_dist_mean (1.5, 3.5, 5.5) -> (0.85, 0.35, 0.2)
    # -A: clip -> 0.35 (err 0.5); -B: interp (0.85+0.2)/2 = 0.525 (0.175); -C: 0.35 (0.15)
    assert est.dataset_fit_loo_mae == pytest.approx((0.5 + 0.175 + 0.15) / 3, abs=1e-12)


def test_loo_uses_exactly_the_reported_estimator():
    rng = np.random.default_rng(5)
    ev = [_labelled(n, lo, hi, 80, rng, gap=0.03) for n, lo, hi in
          [("A", 1, 4), ("B", 3, 7), ("C", 5, 9)]]  # fmt: skip
    # a target with the distances of B, estimated from A and C, equals B's LOO estimate
    b = ev[1]
    t = E.Target("B2", b.ids, b.i_dist_scaled, b.i_dist_mean, b.o_dist_mean)
    rest = E.estimate_performance([ev[0], ev[2]], [t], n_bootstrap=10)
    full = E.estimate_performance(ev, [], n_bootstrap=10)
    assert rest.secondaries[0].estimated_f == pytest.approx(
        full.labelled[1].loo_estimate, abs=1e-12
    )


# ------------------------------------------------------------------------------ recovery


@pytest.mark.parametrize(("seed", "gap"), [(0, 0.0), (1, 0.05), (2, -0.04)])
def test_estimate_recovers_known_value_within_interval(seed, gap):
    rng = np.random.default_rng(seed)
    ev = [_labelled(n, lo, hi, 150, rng, gap=gap) for n, lo, hi in
          [("A", 1, 4), ("B", 3, 7), ("C", 5, 9)]]  # fmt: skip
    t, x = _target("U", 2, 8, 200, rng)
    expected = float(truth(x).mean()) + gap
    est = E.estimate_performance(ev, [t], seed=seed)
    u = est.secondaries[0]
    assert u.low <= expected <= u.high, (u.low, expected, u.high)
    assert abs(u.estimated_f - expected) < 0.03
    assert u.high - u.low < 0.15  # informative, not [0, 1]
    assert not u.extrapolation and u.share_outside == 0.0
    # per-image expected F follows the known curve, and the band holds the fit
    f_img = np.array([im.expected_f for im in u.images])
    assert np.mean(np.abs(f_img - truth(x))) < 0.05
    assert all(im.low <= im.expected_f + 1e-12 and im.expected_f <= im.high + 1e-12
               for im in u.images)  # fmt: skip
    assert [im.id for im in u.images] == t.ids
    # the LOO error is small on data that follows one curve, and stated next to the estimate
    assert u.loo_mae == est.loo_mae and est.loo_mae < 0.05
    # the fitted curve is non-increasing and inside its band
    c = est.curve
    assert np.all(np.diff(c.f) <= 1e-12)
    assert np.all(np.array(c.low) <= np.array(c.f) + 1e-9)
    assert np.all(np.array(c.f) <= np.array(c.high) + 1e-9)


def test_interval_is_calibrated_for_the_realised_value():
    """Over 40 independent worlds: the realised mean F of the secondary (fresh noise) falls in
    the 90% interval about 90% of the time, and the interval's width matches the spread of the
    estimation error (a width twice too large, or too small, fails)."""
    errors, widths, inside = [], [], 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        ev = [_labelled(n, lo, hi, 150, rng) for n, lo, hi in
              [("A", 1, 4), ("B", 3, 7), ("C", 5, 9)]]  # fmt: skip
        t, x = _target("U", 2, 8, 200, rng)
        realised = float(np.clip(truth(x) + rng.normal(0, 0.05, len(x)), 0, 1).mean())
        u = E.estimate_performance(ev, [t], seed=seed, n_bootstrap=100).secondaries[0]
        errors.append(u.estimated_f - realised)
        widths.append(u.high - u.low)
        inside += u.low <= realised <= u.high
    # measured: 36/40 inside, ratio 1.04; holding ODS fixed in the bootstrap gives ratio 1.97,
    # leaving out the secondary's own sampling error 0.67
    assert 0.8 <= inside / 40 <= 1.0
    ratio = np.mean(widths) / (2 * 1.6449 * np.std(errors))
    assert 0.75 < ratio < 1.4, ratio


def test_extrapolation_flagged():
    rng = np.random.default_rng(7)
    ev = [_labelled(n, lo, hi, 100, rng) for n, lo, hi in [("A", 1, 4), ("B", 3, 7)]]
    near, _ = _target("near", 2, 6, 50, rng)
    far, x_far = _target("far", 9, 12, 50, rng)
    part = E.Target(
        "part", ["a", "b", "c", "d"], np.zeros(4), np.array([2.0, 3.0, 5.0, 30.0]), 10.0
    )
    est = E.estimate_performance(ev, [near, far, part], n_bootstrap=50)
    by = {s.dataset: s for s in est.secondaries}
    assert not by["near"].extrapolation and by["near"].share_outside == 0.0
    assert not by["near"].o_dist_mean_outside
    assert by["far"].extrapolation and by["far"].share_outside == 1.0
    assert by["far"].o_dist_mean_outside
    assert all(im.extrapolated for im in by["far"].images)
    # beyond the range the fit is clipped at its last value: the estimate is the boundary value
    g, offset = E.fit_estimator(ev)
    hi = max(float(e.i_dist_mean.max()) for e in ev)
    assert by["far"].estimated_f == pytest.approx(
        float(np.clip(g.predict([hi])[0] + offset, 0, 1)), abs=1e-12
    )
    assert by["part"].share_outside == 0.25 and by["part"].extrapolation  # 25% > 10%
    assert [im.extrapolated for im in by["part"].images] == [False, False, False, True]
    assert est.labelled_range == [
        min(float(e.i_dist_mean.min()) for e in ev),
        hi,
    ]


# ------------------------------------------------------------------------------ refusals


def test_no_estimate_with_one_labelled_set():
    rng = np.random.default_rng(0)
    ev = [_labelled("A", 1, 4, 200, rng)]
    t, _ = _target("U", 2, 8, 50, rng)
    est = E.estimate_performance(ev, [t])
    assert not est.made and "at least 2" in est.reason and "'predictions:'" in est.reason
    u = est.secondaries[0]
    assert u.estimated_f is None and u.low is None and u.loo_mae is None
    assert u.reason == est.reason and u.images == []
    assert E.gate_value(est, "U") is None
    assert est.curve is None and est.loo_mae is None
    assert len(est.points) == 200  # the evidence is still shown


def test_no_estimate_with_too_few_images():
    ev = _three_sets()  # 6 images
    est = E.estimate_performance(ev, [E.Target("U", ["a"], np.zeros(1), np.ones(1), 1.0)])
    assert not est.made and f"at least {E.MIN_LABELLED_IMAGES}" in est.reason
    assert est.secondaries[0].estimated_f is None


def test_deterministic_and_seeded():
    rng = np.random.default_rng(11)
    ev = [_labelled(n, lo, hi, 60, rng) for n, lo, hi in [("A", 1, 4), ("B", 3, 7)]]
    t, _ = _target("U", 2, 8, 40, rng)
    a = E.estimate_performance(ev, [t], seed=3).model_dump_json()
    b = E.estimate_performance(ev, [t], seed=3).model_dump_json()
    c = E.estimate_performance(ev, [t], seed=4)
    assert a == b
    assert c.secondaries[0].estimated_f == json.loads(a)["secondaries"][0]["estimated_f"]
    assert c.secondaries[0].low != json.loads(a)["secondaries"][0]["low"]


# ------------------------------------------------------------------------------ models


def _all_models():
    return [E.LabelledPoint, E.LabelledSet, E.Curve, E.ImageEstimate, E.DatasetEstimate, E.Estimate]


def test_models_are_strict_and_documented():
    for model in _all_models():
        assert issubclass(model, BaseModel)
        assert model.model_config.get("extra") == "forbid"
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
    with pytest.raises(ValueError):
        E.Curve(x=[], f=[], low=[], high=[], other=1)


def test_json_has_no_nan_and_round_trips():
    rng = np.random.default_rng(2)
    ev = [_labelled(n, lo, hi, 40, rng) for n, lo, hi in [("A", 1, 4), ("B", 3, 7)]]
    nan_target = E.Target("nan_o", ["x"], np.zeros(1), np.array([3.0]), float("nan"))
    empty = E.Target("empty", [], np.zeros(0), np.zeros(0), float("nan"))
    est = E.estimate_performance(ev, [nan_target, empty], n_bootstrap=20)
    text = est.model_dump_json()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert E.Estimate.model_validate(data) == est
    slim = est.model_dump(exclude={"secondaries": {"__all__": {"images"}}})
    assert E.Estimate.model_validate(slim).for_dataset("nan_o").images == []
    assert "expected_f" not in json.dumps(slim)
    by = {s.dataset: s for s in est.secondaries}
    assert by["nan_o"].o_dist_mean is None and by["nan_o"].dataset_fit_f is None
    assert by["nan_o"].estimated_f is not None
    assert by["empty"].estimated_f is None and "no image distances" in by["empty"].reason


# ------------------------------------------------------------------------------ from report.json


def _report(rng) -> dict:
    secs, results = [], []
    for name, lo, hi, n in [("A", 1, 4, 40), ("B", 3, 7, 40), ("Z", 2, 5, 10), ("U", 2, 8, 30)]:
        x = rng.uniform(lo, hi, n)
        ids = [f"img{i}.jpg" for i in range(n)]
        images = [
            {"id": i, "i_dist": float(v) * 10, "i_dist_scaled": k / n, "i_dist_mean": float(v)}
            for k, (i, v) in enumerate(zip(ids, x, strict=True))
        ]
        secs.append({"name": name, "o_dist_mean": float(x.mean()), "images": images})
        if name == "U":
            continue
        f = np.clip(truth(x) + rng.normal(0, 0.05, n), 0, 1)
        for model, shift in [("M", 0.0), ("M3", 0.2)]:
            # the first image was selected for training: not evaluated
            per_image = [
                {"id": i, "f": float(v) + shift} for i, v in zip(ids[1:], f[1:], strict=True)
            ]
            results.append(
                {
                    "model": model,
                    "dataset": name,
                    "ods_f": float(f.mean()) + shift,
                    "ods_threshold": 0.4,
                    "mask_pixels": 0 if name == "Z" else 100,
                    "per_image": per_image,
                }
            )
    return {"secondaries": secs, "adaptation": {"results": results}}


def test_evidence_from_adaptation_and_estimate_from_report():
    report = _report(np.random.default_rng(4))
    ev = E.evidence_from_adaptation(report)
    assert [e.name for e in ev] == ["A", "B"]  # Z has no mask pixel: F means nothing
    a_sec = report["secondaries"][0]
    a_res = report["adaptation"]["results"][0]
    assert ev[0].ids == [im["id"] for im in a_sec["images"]][1:]
    np.testing.assert_array_equal(ev[0].f, [r["f"] for r in a_res["per_image"]])
    np.testing.assert_array_equal(ev[0].i_dist_mean,
                                  [im["i_dist_mean"] for im in a_sec["images"]][1:])  # fmt: skip
    assert ev[0].ods_f == a_res["ods_f"] and ev[0].ods_threshold == 0.4
    assert ev[0].o_dist_mean == a_sec["o_dist_mean"]
    est = E.estimate_from_report(report, seed=1, n_bootstrap=30)
    assert est.source == "adaptation:M" and est.made
    assert [s.dataset for s in est.secondaries] == ["Z", "U"]
    assert E.gate_value(est, "U") == est.for_dataset("U").estimated_f
    assert E.gate_value(est, "A") is None and E.gate_value(None, "U") is None
    assert [len(s.images) for s in est.secondaries] == [10, 30]
    m3 = E.estimate_from_report(report, seed=1, n_bootstrap=30, model="M3")
    assert m3.source == "adaptation:M3"
    assert m3.labelled[0].ods_f == pytest.approx(est.labelled[0].ods_f + 0.2)
    assert E.estimate_from_report({"secondaries": report["secondaries"]}) is None


def test_evidence_from_scores_joins_by_stem():
    report = _report(np.random.default_rng(4))
    scores = {
        "U": {
            "ods_f": 0.5, "ods_threshold": 0.3,
            "per_image": [{"id": f"img{i}", "f": 0.1 * (i % 10)} for i in range(30)],
        },
        "Z": {
            "ods_f": 0.7, "ods_threshold": 0.2,
            "per_image": [{"id": f"img{i}", "f": 0.7} for i in range(10)],
        },
    }  # fmt: skip
    ev = E.evidence_from_scores(report, scores)
    assert [e.name for e in ev] == ["Z", "U"]  # report order
    assert ev[1].ids[:2] == ["img0.jpg", "img1.jpg"] and ev[1].f[3] == pytest.approx(0.3)
    est = E.estimate_from_report(report, scores, n_bootstrap=20)
    assert est.source == "predictions"
    assert [s.dataset for s in est.secondaries] == ["A", "B"]  # predictions win over adaptation


# ------------------------------------------------------------------------------ predictions:


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _write_predictions(root: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        mask = (rng.random((12, 16)) < 0.2).astype(np.uint8) * 255
        prob = np.clip(mask * 0.6 + rng.integers(0, 120, mask.shape), 0, 255)
        _png(root / "masks" / f"sub/im{i}.png", mask)
        _png(root / "pred" / f"sub/im{i}.png", prob)
        _png(root / "images" / f"sub/im{i}.jpg", rng.integers(0, 255, (12, 16, 3)))


def _job(tmp_path: Path, secondary: dict) -> dict:
    return {
        "datasets": {
            "primary": {"name": "P", "path": "imagesP"},
            "secondary": [secondary, {"name": "S2", "path": "images2"}],
        },
        "gates": [{"metric": "estimated_f", "min": 0.5}],
    }


def test_predictions_scored_identically_to_evaluate(tmp_path, capsys):
    _write_predictions(tmp_path, 6, 0)
    sec = {"name": "S", "path": "images", "masks": "masks", "predictions": "pred"}
    job = parse_job(_job(tmp_path, sec), tmp_path)
    assert job.datasets.secondary[0].predictions == "pred"
    scored = score_predictions(job, job.datasets.secondary[0])
    code = evaluate_cli.main(
        ["--pred", str(tmp_path / "pred"), "--masks", str(tmp_path / "masks"), "--json"]
    )
    assert code == 0
    cli = json.loads(capsys.readouterr().out)
    assert {k: scored[k] for k in cli} == cli
    assert [r["id"] for r in scored["per_image"]] == [f"sub/im{i}" for i in range(6)]
    assert score_all_predictions(job) == {"S": scored}
    # the per-image F joins the report's image ids (with extension) by stem
    report = {"secondaries": [{"name": "S", "o_dist_mean": 1.0, "images": [
        {"id": f"sub/im{i}.jpg", "i_dist_scaled": i / 5, "i_dist_mean": 1.0 + i} for i in range(6)
    ]}]}  # fmt: skip
    (ev,) = E.evidence_from_scores(report, {"S": scored})
    np.testing.assert_array_equal(ev.f, [r["f"] for r in scored["per_image"]])
    assert ev.ods_f == cli["ods_f"] and ev.ids[0] == "sub/im0.jpg"


def test_predictions_errors_name_the_dataset(tmp_path):
    _write_predictions(tmp_path, 3, 1)
    (tmp_path / "pred/sub/im2.png").unlink()
    sec = {"name": "S", "path": "images", "masks": "masks", "predictions": "pred"}
    job = parse_job(_job(tmp_path, sec), tmp_path)
    with pytest.raises(JobError, match=r"datasets\.S\.predictions: .*sub/im2"):
        score_predictions(job, job.datasets.secondary[0])
    buf = io.BytesIO()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(buf, format="PNG")
    (tmp_path / "pred/sub/im2.png").write_bytes(buf.getvalue())
    with pytest.raises(JobError, match="save maps at the mask's size"):
        score_predictions(job, job.datasets.secondary[0])


@pytest.mark.parametrize(
    ("secondary", "primary_extra", "expected"),
    [
        ({"name": "S", "path": "i", "predictions": "p"}, {}, "'predictions' needs 'masks'"),
        (
            {"name": "S", "path": "i", "masks": "m", "predictions": " "},
            {},
            "'predictions' is empty",
        ),
        (
            {"name": "S", "path": "i"},
            {"masks": "m", "predictions": "p"},
            "primary.predictions",
        ),
    ],
)
def test_predictions_key_validated(tmp_path, secondary, primary_extra, expected):
    job = _job(tmp_path, secondary)
    job["datasets"]["primary"].update(primary_extra)
    with pytest.raises(JobError, match=expected):
        parse_job(job, tmp_path)


def test_estimated_f_is_a_gate_metric(tmp_path):
    job = parse_job(_job(tmp_path, {"name": "S", "path": "i"}), tmp_path)
    assert job.gates[0].metric == "estimated_f" and job.gates[0].min == 0.5
    assert math.isclose(job.gates[0].min, 0.5)


# ------------------------------------------------------------------------------ figure and partial


def _rendered(estimate, figures=None) -> str:
    from jinja2 import Environment, FileSystemLoader

    root = Path(__file__).resolve().parents[1] / "templates"
    env = Environment(loader=FileSystemLoader(str(root)), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)  # fmt: skip
    return env.get_template("estimate.html.j2").render(estimate=estimate, figures=figures or {})


def test_figure_and_partial(tmp_path):
    from worker.report.estimate_figures import make_estimate_figures

    rng = np.random.default_rng(9)
    ev = [_labelled(n, lo, hi, 60, rng) for n, lo, hi in [("A", 1, 4), ("B", 3, 7)]]
    near, _ = _target("near<b>", 2, 6, 30, rng)
    far, _ = _target("far", 9, 12, 30, rng)
    est = E.estimate_performance(ev, [near, far], n_bootstrap=30)
    figs = make_estimate_figures(est, tmp_path / "figs")
    png = figs["estimate_curve"]
    with Image.open(png) as im:
        assert im.size[0] > 600 and im.size[1] > 300
    for obj in (est, est.model_dump()):
        html = _rendered(obj, {"estimate_curve": "file:///x.png"})
        assert "far <strong>(extrapolated)</strong>" in html
        assert "near&lt;b&gt;" in html and "near<b>" not in html  # names escaped
        assert f"{est.for_dataset('far').estimated_f:.3f}" in html
        assert "more than 10% of" in html and 'src="file:///x.png"' in html
        assert "baseline model M of the adaptation runs" in html
    refused = E.estimate_performance(ev[:1], [near])
    assert make_estimate_figures(refused, tmp_path / "f2") == {}
    assert make_estimate_figures(None, tmp_path / "f3") == {}
    html = _rendered(refused)
    assert "No estimate: 1 labelled dataset(s) (A)" in html and "<table" not in html
