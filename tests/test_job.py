"""Job validation: every invalid job is refused with the field named and what to do."""

from __future__ import annotations

import pytest

from tests.helpers.jobs import write_job
from worker.errors import JobError
from worker.job import load_job


def _error(tmp_path, job) -> str:
    with pytest.raises(JobError) as err:
        load_job(write_job(tmp_path, job))
    return str(err.value)


def test_valid_job_loads_with_defaults(embedding_job):
    folder, job, _ = embedding_job
    loaded = load_job(write_job(folder, job))
    assert loaded.pca.dims == 5
    assert loaded.selection.strategies == ["band", "farthest", "kcenter"]
    assert loaded.resolve("emb/P.npy") == str(folder.resolve() / "emb/P.npy")
    assert loaded.model_list[0].name == "precomputed"
    assert loaded.compute.memory_budget_mb == "auto"
    job["compute"] = {"memory_budget_mb": 512}
    assert load_job(write_job(folder, job)).compute.memory_budget_mb == 512


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda j: j.update(extra_key=1), "extra_key: unknown key"),
        (lambda j: j["pca"].update(dims=-3), "pca.dims"),
        (lambda j: j["pca"].update(dims="many"), "pca.dims"),
        (lambda j: j["model"].update(name="resnet9000"), "unknown extractor 'resnet9000'"),
        (
            lambda j: j["datasets"]["secondary"].append({"name": "S1", "embeddings": "x.npy"}),
            "repeated: S1",
        ),
        (
            lambda j: j["datasets"]["primary"].pop("embeddings"),
            "exactly one of 'path' or 'embeddings'",
        ),
        (lambda j: j["datasets"].update(secondary=[]), "datasets.secondary"),
        (lambda j: j["selection"].update(band=[0.9, 0.1]), "selection.band"),
        (lambda j: j["selection"].update(counts=[0]), "selection.counts"),
        (lambda j: j["gates"].append({"metric": "o_dist", "dataset": "nope", "max": 1}), "'nope'"),
        (lambda j: j["gates"].append({"metric": "o_dist"}), "give 'max' or 'min'"),
        (lambda j: j["gates"].append({"metric": "bogus", "max": 1}), "unknown gate metric 'bogus'"),
        (lambda j: j.update(version=2), "version"),
        (lambda j: j.update(compute={"memory_budget_mb": "lots"}), "compute.memory_budget_mb"),
        (lambda j: j.update(compute={"memory_budget_mb": 4}), "compute.memory_budget_mb"),
        (lambda j: j["datasets"].pop("primary"), "datasets.primary: required field is missing"),
    ],
)
def test_invalid_jobs_name_the_field(embedding_job, mutate, expected):
    folder, job, _ = embedding_job
    mutate(job)
    assert expected in _error(folder, job)


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\ndatasets: [unclosed\n", encoding="utf-8")
    with pytest.raises(JobError, match=r"malformed YAML at line \d+"):
        load_job(path)


def test_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(JobError, match="must be a YAML mapping"):
        load_job(path)


def test_missing_job_file(tmp_path):
    with pytest.raises(JobError, match="job file not found"):
        load_job(tmp_path / "absent.yaml")


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("version: !!python/object/apply:os.system ['echo hi']\n", encoding="utf-8")
    with pytest.raises(JobError, match="malformed YAML"):
        load_job(path)


def test_config_example_is_a_valid_job():
    job = load_job(__import__("pathlib").Path(__file__).parents[1] / "config.example.yaml")
    assert job.datasets.primary.name == "P"
    assert [g.metric for g in job.gates] == ["o_dist_scaled", "i_dist_scaled_p90"]
