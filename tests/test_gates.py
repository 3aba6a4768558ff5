"""Gates on the typed report: each metric read from its typed field, bounds, '*', missing values."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.sample_report import make_report
from worker.gate_metrics import (
    ADAPTATION_METRICS,
    GATE_METRICS,
    GROUP_METRICS,
    SECONDARY_METRICS,
)
from worker.gates import SECONDARY_VALUES, evaluate_gates, gate_value
from worker.job import GateConfig, parse_job
from worker.results import Report


@pytest.fixture(scope="module")
def report() -> Report:
    raw = make_report()
    sec = raw["secondaries"][0]
    sec["statistics"] = {
        "o_dist_null_mean": 2.0,
        "o_dist_ratio": 1.75,
        "o_dist_percentile": 100.0,
        "mmd": {"statistic": 0.1, "p_value": 0.01, "sigma": 1.0, "permutations": 99,
                "n_x": 40, "n_y": 30},
        "fid": 3.5,
        "kid": {"mean": 0.2, "std": 0.01},
    }  # fmt: skip
    sec["duplicates"] = {
        "threshold": 0.1,
        "within": [],
        "with_primary": [
            {"id": "a", "primary_id": "p1", "distance": 0.0, "exact": True},
            {"id": "b", "primary_id": "p2", "distance": 0.05, "exact": False},
        ],
    }
    clip = raw["models"][1]
    clip["secondaries"] = [dict(s, o_dist=s["o_dist"] * 0.5) for s in raw["secondaries"]]
    return Report.model_validate(raw)


def gate(**kw) -> GateConfig:
    return GateConfig(**kw)


def test_every_registered_metric_reads_a_typed_field(report):
    """No metric name is accepted by the job but unknown to the report reader."""
    for metric in GATE_METRICS:
        g = gate(metric=metric, dataset="S1 near", max=1e9)
        gate_value(report, g, "S1 near")  # raises KeyError/AttributeError if unmapped


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("o_dist_ratio", 1.75),
        ("o_dist_percentile", 100.0),
        ("mmd_p_value", 0.01),
        ("fid", 3.5),
        ("duplicates_with_primary", 2),
    ],
)
def test_statistics_metrics(report, metric, expected):
    assert gate_value(report, gate(metric=metric, dataset="S1 near", max=1), "S1 near") == expected


def test_values_are_the_report_fields(report):
    s2 = report.secondary("S2 far & wide")
    assert gate_value(report, gate(metric="o_dist", max=1), s2.name) == s2.o_dist
    assert gate_value(report, gate(metric="i_dist_p90", max=1), s2.name) == s2.i_dist.p90
    assert gate_value(report, gate(metric="diversity_mean", max=1), s2.name) == s2.diversity.mean
    cov = gate_value(report, gate(metric="coverage_by_primary_max", max=1), s2.name)
    assert cov == s2.coverage_by_primary.max
    p = report.primary
    assert gate_value(report, gate(metric="diversity_mean", max=1), p.name) == p.diversity.mean
    # not computed for S2 (no statistics block): None, never another dataset's number
    assert gate_value(report, gate(metric="fid", max=1), s2.name) is None
    assert gate_value(report, gate(metric="o_dist", max=1), "no such set") is None


def test_model_gate_reads_that_models_secondaries(report):
    first = gate_value(report, gate(metric="o_dist", max=1), "S1 near")
    clip = gate_value(report, gate(metric="o_dist", max=1, model="clip"), "S1 near")
    assert clip == pytest.approx(first * 0.5, rel=1e-15)
    assert gate_value(report, gate(metric="o_dist", max=1, model="hog"), "S1 near") == first
    assert gate_value(report, gate(metric="o_dist", max=1, model="dinov2"), "S1 near") is None


def test_skipped_fraction_counts_per_dataset(report):
    # make_report skips one image of "S1 near" (30 used) and one of P-train (40 used)
    g = gate(metric="skipped_fraction", max=0.01)
    assert gate_value(report, g, "S1 near") == pytest.approx(1 / 31)
    assert gate_value(report, g, "P-train") == pytest.approx(1 / 41)
    assert gate_value(report, g, "S3-emb") == 0.0


def test_bounds_star_and_missing_values(report):
    results = evaluate_gates(
        report,
        [
            gate(metric="o_dist_scaled", dataset="*", max=0.4),
            gate(metric="skipped_fraction", dataset="*", max=0.03),
            gate(metric="fid", dataset="S3-emb", max=10),
            gate(metric="o_dist_ratio", dataset="S1 near", min=1.0, max=2.0),
        ],
    )
    scaled = report.o_dist_scaled
    by = {(r.metric, r.dataset): r for r in results}
    assert [r.dataset for r in results[:3]] == ["S1 near", "S2 far & wide", "S3-emb"]
    for name, value in scaled.items():
        assert by[("o_dist_scaled", name)].passed is (value <= 0.4)
    # skipped_fraction on '*' includes the primary; P: 1/41 < 0.03 but S1: 1/31 > 0.03
    assert by[("skipped_fraction", "P-train")].passed
    assert not by[("skipped_fraction", "S1 near")].passed
    missing = by[("fid", "S3-emb")]
    assert not missing.passed and missing.value is None and "not computed" in missing.reason
    assert by[("o_dist_ratio", "S1 near")].passed
    dumped = missing.model_dump(exclude_none=False)
    assert dumped["max"] == 10 and "min" not in dumped  # report.json lists only bounds set


def test_gate_names_come_from_the_one_registry(tmp_path: Path):
    job = {
        "datasets": {"primary": {"name": "P", "embeddings": "p.npy"},
                     "secondary": [{"name": "S", "embeddings": "s.npy"}]},
        "gates": [{"metric": "no_such_metric", "max": 1}],
    }  # fmt: skip
    from worker.errors import JobError

    with pytest.raises(JobError, match="no_such_metric"):
        parse_job(job, tmp_path)
    job["metrics"] = {"statistics": True, "duplicates": True}
    plain = [m for m in GATE_METRICS if m not in ADAPTATION_METRICS + GROUP_METRICS]
    plain.remove("estimated_f")  # known, but only with labelled evidence
    job["gates"] = [{"metric": m, "max": 1} for m in plain]
    assert [g.metric for g in parse_job(job, tmp_path).gates] == plain
    job["gates"] = [{"metric": "estimated_f", "min": 0.5}]
    with pytest.raises(JobError, match="estimated_f can never be computed"):
        parse_job(job, tmp_path)
    for metric in GROUP_METRICS:  # known, but only with two groups of secondaries
        job["gates"] = [{"metric": metric, "min": 0.5}]
        with pytest.raises(JobError, match="group"):
            parse_job(job, tmp_path)
    for metric in ADAPTATION_METRICS:  # known, but only with an adaptation run
        job["gates"] = [{"metric": metric, "max": 1}]
        with pytest.raises(JobError, match="adaptation.enabled"):
            parse_job(job, tmp_path)


def test_every_secondary_gate_metric_has_one_reader():
    """worker.gate_metrics names the metrics (the job model validates against it without
    importing the report schema); worker.gates holds exactly one reader per secondary metric."""
    assert list(SECONDARY_VALUES) == list(SECONDARY_METRICS)
    assert len(set(GATE_METRICS)) == len(GATE_METRICS)
