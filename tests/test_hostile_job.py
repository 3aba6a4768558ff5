"""Hostile job files: every value that cannot work is refused by `validate` and by `run`
before any computation (exit 2, the field named, the output folder unchanged).

docs/reliability.md lists the cases. Each case runs through the command line in this process.
"""

from __future__ import annotations

import copy
import math

import pytest

from tests.helpers.hostile import image_job, refused, run_cli, seed_output


def _set(dotted: str, value):
    """A mutation that sets one key, e.g. _set("selection.band", [0.9, 0.1])."""

    def mutate(job: dict) -> None:
        node = job
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        last = parts[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _gate(**gate):
    def mutate(job: dict) -> None:
        job["gates"] = [gate]

    return mutate


def _both(*mutations):
    def mutate(job: dict) -> None:
        for m in mutations:
            m(job)

    return mutate


def _drop(dotted: str):
    def mutate(job: dict) -> None:
        node = job
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[parts[-1]]

    return mutate


_ADAPT = _set("adaptation", {"enabled": True, "epochs": 1, "image_size": 32})
_MASKS = _set("datasets.secondary.0.masks", "S_masks")

# (case id, mutation, subjects the message must name)
CASES = [
    # seed
    ("seed-negative", _set("seed", -1), ["seed"]),
    ("seed-too-large", _set("seed", 2**40), ["seed"]),
    ("seed-float", _set("seed", 1.5), ["seed"]),
    ("seed-list", _set("seed", [1]), ["seed"]),
    ("version-2", _set("version", 2), ["version"]),
    # gates: finite bounds, min <= max, exactly what they name
    ("gate-max-inf", _gate(metric="o_dist", max=math.inf), ["gates[0].max", "finite"]),
    ("gate-max-nan", _gate(metric="o_dist", max=math.nan), ["gates[0].max"]),
    ("gate-min-minus-inf", _gate(metric="o_dist", min=-math.inf), ["gates[0].min"]),
    ("gate-min-above-max", _gate(metric="o_dist", min=2, max=1), ["gates[0]", "min 2.0"]),
    ("gate-no-bound", _gate(metric="o_dist"), ["gates[0]", "give 'max' or 'min'"]),
    ("gate-unknown-metric", _gate(metric="odist", max=1), ["gates[0].metric", "odist"]),
    ("gate-empty-dataset", _gate(metric="o_dist", dataset="", max=1), ["gates[0].dataset"]),
    ("gate-unknown-dataset", _gate(metric="o_dist", dataset="T", max=1), ["gates[0].dataset"]),
    ("gate-primary-o-dist", _gate(metric="o_dist", dataset="P", max=1), ["gates[0].dataset"]),
    ("gate-primary-fid", _gate(metric="fid", dataset="P", max=1), ["gates[0].dataset", "'P'"]),
    ("gate-model-not-in-job", _gate(metric="o_dist", model="clip", max=1), ["gates[0].model"]),
    ("gate-empty-model", _gate(metric="o_dist", model="", max=1), ["gates[0].model"]),
    (
        "gate-model-ambiguous",
        _both(
            _set("model", None),
            _set(
                "models",
                [
                    {"name": "clip", "checkpoint": "a"},
                    {"name": "clip", "checkpoint": "b"},
                ],
            ),
            _drop("model"),
            _gate(metric="o_dist", model="clip", max=1),
        ),
        ["gates[0].model", "clip (a)"],
    ),
    ("gate-f-slope-no-adaptation", _gate(metric="f_slope", max=1), ["gates[0].metric"]),
    ("gate-ods-no-adaptation", _gate(metric="ods_f", dataset="S", min=0.5), ["gates[0].metric"]),
    (
        "gate-ods-no-masks",
        _both(_ADAPT, _gate(metric="ods_f", dataset="S", min=0.5)),
        ["gates[0].dataset", "masks"],
    ),
    (
        "gate-ods-unknown-adaptation-model",
        _both(_ADAPT, _MASKS, _gate(metric="ods_f", dataset="S", model="M99", min=0.5)),
        ["gates[0].model", "M99"],
    ),
    (
        "gate-ods-extractor-as-model",
        _both(_ADAPT, _MASKS, _gate(metric="ods_f", model="hog", min=0.5)),
        ["gates[0].model", "'hog'"],
    ),
    (
        "gate-diversity-switched-off",
        _both(_set("metrics.diversity", False), _gate(metric="diversity_mean", min=0)),
        ["gates[0].metric", "metrics.diversity"],
    ),
    (
        "gate-coverage-switched-off",
        _both(_set("metrics.coverage", False), _gate(metric="coverage_by_primary_max", max=9)),
        ["gates[0].metric", "metrics.coverage"],
    ),
    (
        "gate-fid-statistics-off",
        _both(_set("metrics.statistics", False), _gate(metric="fid", max=9)),
        ["gates[0].metric", "metrics.statistics"],
    ),
    (
        "gate-ratio-statistics-off",
        _both(_set("metrics.statistics", False), _gate(metric="o_dist_ratio", max=9)),
        ["gates[0].metric"],
    ),
    (
        "gate-mmd-no-permutations",
        _both(_set("metrics.mmd_permutations", 0), _gate(metric="mmd_p_value", min=0.05)),
        ["gates[0].metric", "mmd_permutations"],
    ),
    (
        "gate-duplicates-off",
        _both(_set("metrics.duplicates", False), _gate(metric="duplicates_with_primary", max=0)),
        ["gates[0].metric", "metrics.duplicates"],
    ),
    ("gate-unknown-key", _gate(metric="o_dist", max=1, maximum=2), ["gates[0].maximum"]),
    ("gates-not-a-list", _set("gates", {"metric": "o_dist", "max": 1}), ["gates"]),
    (
        "gate-second-of-two",
        lambda j: j.update(
            gates=[{"metric": "o_dist", "max": 1}, {"metric": "o_dist", "dataset": "X", "max": 1}]
        ),
        ["gates[1].dataset"],
    ),
    # model
    ("hog-image-size-8", _set("model.image_size", 8), ["model", "image_size 8", "hog"]),
    ("hog-image-size-16", _set("model.image_size", 16), ["model", "at least 32"]),
    ("clip-image-size-16", _set("model", {"name": "clip", "image_size": 16}), ["model"]),
    ("image-size-zero", _set("model.image_size", 0), ["model.image_size"]),
    ("image-size-negative", _set("model.image_size", -5), ["model.image_size"]),
    ("image-size-huge", _set("model.image_size", 5000), ["model.image_size"]),
    ("batch-size-zero", _set("model.batch_size", 0), ["model.batch_size"]),
    ("num-workers-negative", _set("model.num_workers", -1), ["model.num_workers"]),
    ("unknown-extractor", _set("model.name", "resnet"), ["model.name", "resnet"]),
    ("device-gpu", _set("model.device", "gpu"), ["model.device"]),
    ("device-cuda-x", _set("model.device", "cuda:x"), ["model.device"]),
    ("dtype-float8", _set("model.dtype", "float8"), ["model.dtype"]),
    ("pooling-max", _set("model.pooling", "max"), ["model.pooling"]),
    ("checkpoint-empty", _set("model.checkpoint", ""), ["model.checkpoint"]),
    ("prompt-blank", _set("model.prompt", "  "), ["model.prompt"]),
    ("revision-empty", _set("model.revision", ""), ["model.revision"]),
    ("models-empty", _both(_drop("model"), _set("models", [])), ["models"]),
    ("model-and-models", _set("models", [{"name": "hog"}]), ["'model' or 'models'"]),
    (
        "models-repeated",
        _both(_drop("model"), _set("models", [{"name": "hog"}, {"name": "hog"}])),
        ["models"],
    ),
    (
        "precomputed-with-images",
        _set("model", {"name": "precomputed"}),
        ["datasets.P", "needs 'embeddings'"],
    ),
    # pca
    ("pca-dims-zero", _set("pca.dims", 0), ["pca.dims"]),
    ("pca-dims-text", _set("pca.dims", "ten"), ["pca.dims"]),
    ("pca-dims-float", _set("pca.dims", 2.5), ["pca.dims"]),
    ("pca-sweep-zero", _set("pca.sweep", [0, 2]), ["pca.sweep"]),
    ("pca-sweep-negative", _set("pca.sweep", [-3]), ["pca.sweep"]),
    ("pca-sweep-not-list", _set("pca.sweep", 5), ["pca.sweep"]),
    ("pca-route", _set("pca.route", "fast"), ["pca.route"]),
    # selection
    ("strategy-empty-list", _set("selection.strategy", []), ["selection.strategy"]),
    ("strategy-unknown", _set("selection.strategy", "random"), ["selection.strategy"]),
    ("strategy-list-unknown", _set("selection.strategy", ["band", "x"]), ["selection.strategy"]),
    ("counts-empty", _set("selection.counts", []), ["selection.counts"]),
    ("counts-zero", _set("selection.counts", [0, 1]), ["selection.counts"]),
    ("counts-negative", _set("selection.counts", [-1]), ["selection.counts"]),
    ("band-reversed", _set("selection.band", [0.9, 0.1]), ["selection.band"]),
    ("band-inf", _set("selection.band", [0.0, math.inf]), ["selection.band"]),
    ("band-nan", _set("selection.band", [math.nan, 1.0]), ["selection.band"]),
    ("band-one-value", _set("selection.band", [0.5]), ["selection.band"]),
    ("band-below-zero", _set("selection.band", [-0.1, 1.0]), ["selection.band"]),
    ("band-above-one", _set("selection.band", [0.5, 1.5]), ["selection.band"]),
    # metrics and fractions
    ("histogram-bins-1", _set("metrics.histogram_bins", 1), ["metrics.histogram_bins"]),
    ("null-repeats-0", _set("metrics.null_repeats", 0), ["metrics.null_repeats"]),
    ("mmd-permutations-neg", _set("metrics.mmd_permutations", -1), ["metrics.mmd_permutations"]),
    ("metrics-flag-text", _set("metrics.diversity", "perhaps"), ["metrics.diversity"]),
    ("skipped-fraction-1.5", _set("max_skipped_fraction", 1.5), ["max_skipped_fraction"]),
    ("skipped-fraction-neg", _set("max_skipped_fraction", -0.1), ["max_skipped_fraction"]),
    ("skipped-fraction-nan", _set("max_skipped_fraction", math.nan), ["max_skipped_fraction"]),
    ("skipped-fraction-inf", _set("max_skipped_fraction", math.inf), ["max_skipped_fraction"]),
    ("allow-outside-text", _set("allow_outside_paths", "maybe"), ["allow_outside_paths"]),
    # datasets: paths that are not empty, names that are well formed and unique
    ("primary-path-empty", _set("datasets.primary.path", ""), ["datasets.primary.path"]),
    ("primary-path-blank", _set("datasets.primary.path", "  "), ["datasets.primary.path"]),
    (
        "secondary-path-empty",
        _set("datasets.secondary.0.path", ""),
        ["datasets.secondary[0].path"],
    ),
    ("path-with-nul", _set("datasets.primary.path", "P\x00x"), ["datasets.primary.path"]),
    ("path-with-newline", _set("datasets.primary.path", "P\nQ"), ["datasets.primary.path"]),
    (
        "embeddings-empty",
        _both(_drop("datasets.secondary.0.path"), _set("datasets.secondary.0.embeddings", "")),
        ["datasets.secondary[0].embeddings"],
    ),
    ("masks-empty", _set("datasets.secondary.0.masks", ""), ["datasets.secondary[0].masks"]),
    ("output-dir-empty", _set("output.dir", ""), ["output.dir"]),
    ("cache-dir-empty", _set("cache.dir", ""), ["cache.dir"]),
    ("name-empty", _set("datasets.secondary.0.name", ""), ["datasets.secondary[0].name"]),
    ("name-star", _set("datasets.secondary.0.name", "*"), ["datasets.secondary[0].name"]),
    ("name-slash", _set("datasets.secondary.0.name", "a/b"), ["datasets.secondary[0].name"]),
    ("name-backslash", _set("datasets.secondary.0.name", "a\\b"), ["datasets.secondary[0].name"]),
    ("name-dotdot", _set("datasets.secondary.0.name", ".."), ["datasets.secondary[0].name"]),
    ("name-space", _set("datasets.secondary.0.name", " S"), ["datasets.secondary[0].name"]),
    ("name-newline", _set("datasets.secondary.0.name", "S\n2"), ["datasets.secondary[0].name"]),
    ("name-tab", _set("datasets.secondary.0.name", "S\t2"), ["datasets.secondary[0].name"]),
    ("name-too-long", _set("datasets.secondary.0.name", "S" * 101), ["datasets.secondary"]),
    ("name-number", _set("datasets.secondary.0.name", 7), ["datasets.secondary[0].name"]),
    ("names-repeated", _set("datasets.secondary.0.name", "P"), ["repeated: P"]),
    ("secondaries-empty", _set("datasets.secondary", []), ["datasets.secondary"]),
    ("secondaries-mapping", _set("datasets.secondary", {"name": "S"}), ["datasets.secondary"]),
    ("primary-missing", _drop("datasets.primary"), ["datasets.primary", "missing"]),
    (
        "path-and-embeddings",
        _set("datasets.secondary.0.embeddings", "x.npy"),
        ["datasets.secondary[0]", "exactly one"],
    ),
    ("no-path-no-embeddings", _drop("datasets.secondary.0.path"), ["datasets.secondary[0]"]),
    (
        "masks-without-path",
        _both(
            _drop("datasets.secondary.0.path"),
            _set("datasets.secondary.0.embeddings", "x.npy"),
            _set("datasets.secondary.0.masks", "m"),
        ),
        ["datasets.secondary[0]", "'masks' needs 'path'"],
    ),
    # compute, storage
    ("engine-spark", _set("compute.engine", "spark"), ["compute.engine"]),
    ("gpus-inf", _set("compute.num_gpus_per_worker", math.inf), ["compute.num_gpus_per_worker"]),
    ("memory-budget-1", _set("compute.memory_budget_mb", 1), ["compute.memory_budget_mb"]),
    ("ray-address-on-local", _set("compute.address", "auto"), ["compute", "engine: ray"]),
    ("compute-device-tpu", _set("compute.device", "tpu"), ["compute.device"]),
    ("precision-half", _set("compute.precision", "float16"), ["compute.precision"]),
    ("s3-attempts-0", _set("storage.s3.max_attempts", 0), ["storage.s3.max_attempts"]),
    # adaptation
    ("adapt-counts-empty", _set("adaptation.counts", []), ["adaptation.counts"]),
    ("adapt-counts-zero", _set("adaptation.counts", [0]), ["adaptation.counts"]),
    ("adapt-lr-zero", _set("adaptation.lr", 0), ["adaptation.lr"]),
    ("adapt-lr-inf", _set("adaptation.lr", math.inf), ["adaptation.lr"]),
    ("adapt-lr-nan", _set("adaptation.lr", math.nan), ["adaptation.lr"]),
    ("adapt-epochs-zero", _set("adaptation.epochs", 0), ["adaptation.epochs"]),
    ("adapt-image-size-8", _set("adaptation.image_size", 8), ["adaptation.image_size"]),
    ("adapt-model", _set("adaptation.model", "resnet"), ["adaptation.model"]),
    ("adapt-checkpoint-empty", _set("adaptation.checkpoint", ""), ["adaptation.checkpoint"]),
    (
        "negatives-counts-empty",
        _set("adaptation.negatives", {"path": "N", "counts": []}),
        ["adaptation.negatives.counts"],
    ),
    (
        "negatives-path-empty",
        _set("adaptation.negatives", {"path": ""}),
        ["adaptation.negatives.path"],
    ),
    # structure
    ("unknown-top-key", _set("pcaa", {"dims": 3}), ["pcaa", "unknown key"]),
    ("unknown-nested-key", _set("datasets.primary.colour", "red"), ["datasets.primary.colour"]),
]


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize(("mutate", "subjects"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_at_the_door(tmp_path, command, mutate, subjects):
    job = copy.deepcopy(image_job(tmp_path))
    mutate(job)
    out = tmp_path / "out"
    before = seed_output(out)
    res = run_cli(tmp_path, job, command=command)
    refused(res, out, before, *subjects)
    assert "the job is not valid" in res.stderr or "datasets." in res.stderr


def test_every_case_has_a_distinct_id():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_the_unbroken_job_validates(tmp_path):
    """The base job of every case is valid: a case is refused for what it breaks."""
    res = run_cli(tmp_path, image_job(tmp_path), command="validate")
    assert res.returncode == 0, res.stderr
    assert "P: 12 images" in res.stdout and "S: 10 images" in res.stdout
