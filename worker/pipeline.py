"""run(job) -> report: the one place that wires the stages, top to bottom.

job -> sources -> embeddings -> analysis (PCA, metrics, selection, statistics)
    -> [adaptation] -> gates -> report.json + report.pdf (+ figures, JUnit)
"""

from __future__ import annotations

import datetime as dt
import functools
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from worker import __version__
from worker.analysis import THUMBNAILS_PER_END, ModelAnalysis, analyse_model
from worker.embeddings import EmbeddedSet, embed_items, load_precomputed
from worker.errors import JobError
from worker.gates import evaluate_gates
from worker.job import DatasetConfig, Job, ModelConfig
from worker.logs import LOGGER, stage
from worker.sources import Item, is_s3, list_images, read_bytes

RUN_BLOCK = "run"  # the only report block allowed to differ between identical runs


@dataclass
class RunResult:
    report: dict
    out_dir: str
    files: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.report["passed"] else 1


def _check_location(job: Job, ds: DatasetConfig, key: str, location: str) -> str:
    resolved = job.resolve(location)
    if not job.allow_outside_paths and not is_s3(resolved):
        real = Path(resolved).resolve()
        base = job.base_dir.resolve()
        if base != real and base not in real.parents:
            raise JobError(
                f"datasets.{ds.name}.{key}: {location} resolves outside the job folder "
                f"({real}); move the data under {base} or set allow_outside_paths: true"
            )
    return resolved


def dataset_items(job: Job, ds: DatasetConfig, extractor) -> EmbeddedSet | list[Item]:
    """A precomputed dataset as its EmbeddedSet, or the list of images to embed."""
    storage = job.storage
    if ds.embeddings is not None:
        uri = _check_location(job, ds, "embeddings", ds.embeddings)
        return load_precomputed(ds.name, uri, storage)
    root = _check_location(job, ds, "path", ds.path)
    if extractor is None:
        raise JobError(
            f"datasets.{ds.name}: model 'precomputed' needs 'embeddings', but this dataset "
            "gives 'path' (images); name an extractor in model.name (e.g. hog) instead"
        )
    items = list_images(root, storage)
    if not items:
        raise JobError(
            f"datasets.{ds.name}.path: no images found in {root} "
            "(looked for .jpg .jpeg .png .bmp .tif .tiff .webp, recursively)"
        )
    return items


def load_dataset(
    job: Job, ds: DatasetConfig, extractor, cache, progress, batch_size: int = 32
) -> EmbeddedSet:
    """One dataset's features: a precomputed array, or its images embedded (cached)."""
    items = dataset_items(job, ds, extractor)
    if isinstance(items, EmbeddedSet):
        return items
    bar = progress(len(items), f"embed {ds.name}")
    try:
        return embed_items(
            ds.name,
            items,
            extractor,
            cache=cache,
            batch_size=batch_size,
            storage=job.storage,
            progress=bar.update_to,
        )
    finally:
        bar.close()


def load_datasets_ray(
    job: Job, configs: list[DatasetConfig], extractor, cache, progress, batch_size: int
) -> list[EmbeddedSet]:
    """Every dataset's features, the images of all of them embedded by one Ray Data
    pipeline (one actor pool, one model load per actor)."""
    from worker.distributed import embed_items_ray

    found = {ds.name: dataset_items(job, ds, extractor) for ds in configs}
    images = {name: v for name, v in found.items() if not isinstance(v, EmbeddedSet)}
    if images:
        bar = progress(sum(len(v) for v in images.values()), "embed (ray)")
        try:
            embedded = embed_items_ray(
                images,
                extractor,
                cache=cache,
                storage=job.storage,
                batch_size=job.compute.batch_size or batch_size,
                num_gpus=job.compute.num_gpus_per_worker,
                num_workers=job.compute.num_workers,
                progress=bar.update_to,
            )
        finally:
            bar.close()
        found.update(embedded)
    return [found[ds.name] for ds in configs]


def _check_sets(job: Job, sets: list[EmbeddedSet]) -> None:
    for ds in sets:
        if ds.count == 0:
            raise JobError(
                f"datasets.{ds.name}: no usable images (all {len(ds.skipped)} skipped: "
                f"{ds.skipped[0]['reason'] if ds.skipped else 'empty'}); check the files"
            )
        total = ds.count + len(ds.skipped)
        fraction = len(ds.skipped) / total
        if fraction > job.max_skipped_fraction:
            raise JobError(
                f"datasets.{ds.name}: {len(ds.skipped)} of {total} images could not be used "
                f"({fraction:.0%} > max_skipped_fraction {job.max_skipped_fraction:.0%}), "
                f"e.g. {ds.skipped[0]['id']}: {ds.skipped[0]['reason']}; fix the files or "
                "raise max_skipped_fraction"
            )
    widths = {ds.name: ds.vectors.shape[1] for ds in sets}
    if len(set(widths.values())) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in widths.items())
        raise JobError(
            f"datasets: feature widths differ ({detail}); every dataset must be embedded "
            "by the same model"
        )


class _Progress:
    """A tqdm bar when enabled (TTY and not --quiet), otherwise a no-op with the same calls."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="img", leave=False, file=sys.stderr)

    def update_to(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _local_checkpoint(job: Job, model: ModelConfig) -> ModelConfig:
    """A checkpoint that names a folder relative to the job file is resolved against it."""
    if model.checkpoint and not is_s3(model.checkpoint):
        candidate = Path(job.resolve(model.checkpoint))
        if candidate.is_dir():
            return model.model_copy(update={"checkpoint": str(candidate)})
    return model


def embed_all(
    job: Job, model: ModelConfig, show_progress: bool, extractor=None, datasets=None
) -> tuple[list[EmbeddedSet], object]:
    """Features of P and every S for one model, in job order (primary first).

    `extractor` overrides the model's own (the trained baseline's encoder); `datasets`
    limits the work to those dataset configs. Returns the sets and the extractor used."""
    cache = None
    if extractor is None and model.name != "precomputed" and any(d.path for d in job.all_datasets):
        from worker.extractors import get_extractor

        cfg = _local_checkpoint(job, model)
        if job.compute.engine == "ray":  # built in the Ray actors, described once remotely
            from worker.distributed import remote_extractor

            factory = functools.partial(get_extractor, cfg)
            extractor = remote_extractor(factory, job.compute.num_gpus_per_worker)
        else:
            extractor = get_extractor(cfg)
    if extractor is not None and job.cache.enabled and job.cache.dir:
        from worker.cache import EmbeddingCache

        cache = EmbeddingCache(job.resolve(job.cache.dir), storage=job.storage)

    def progress(total: int, desc: str) -> _Progress:
        return _Progress(total, desc, show_progress)

    configs = datasets or job.all_datasets
    if job.compute.engine == "ray" and extractor is not None:
        sets = load_datasets_ray(job, configs, extractor, cache, progress, model.batch_size)
    else:
        sets = [
            load_dataset(job, ds, extractor, cache, progress, model.batch_size) for ds in configs
        ]
    _check_sets(job, sets)
    info = dict(extractor.info) if extractor is not None else {"name": "precomputed"}
    info.setdefault("feature_dim", int(sets[0].vectors.shape[1]))
    info["feature_dim"] = int(sets[0].vectors.shape[1])
    for s in sets:
        s.model_info = info  # type: ignore[attr-defined]
    return sets, extractor


def _model_block(info: dict) -> dict:
    keys = ("name", "checkpoint", "revision", "feature_dim", "pooling", "image_size")
    return {k: info.get(k) for k in keys}


def _thumbnails(sets: list[EmbeddedSet], analysis: ModelAnalysis, storage) -> dict:
    """Closest and farthest images of each S (by I_dist), decoded for the PDF."""
    from worker.images import ImageError, decode_image

    out = {}
    for sec, entry in zip(sets[1:], analysis.secondaries, strict=True):
        if not sec.has_images:
            continue
        order = np.argsort([im["i_dist"] for im in entry["images"]], kind="stable")
        ends = {"closest": order[:THUMBNAILS_PER_END], "farthest": order[::-1][:THUMBNAILS_PER_END]}
        out[sec.name] = {}
        for label, rows in ends.items():
            thumbs = []
            for r in rows:
                try:
                    img = decode_image(read_bytes(sec.uris[r], storage))
                except (OSError, ImageError):
                    continue
                img.thumbnail((160, 160))
                thumbs.append((sec.ids[r], img))
            out[sec.name][label] = thumbs
    return out


DUPLICATE_PAIRS_SHOWN = 6


def _duplicate_pairs(sets: list[EmbeddedSet], analysis: ModelAnalysis, storage) -> dict:
    """The first duplicate pairs of each S (with P first, then within S), decoded for the PDF."""
    from worker.images import ImageError, decode_image

    primary = sets[0]
    p_uri = dict(zip(primary.ids, primary.uris, strict=False))

    def load(uri: str):
        try:
            img = decode_image(read_bytes(uri, storage))
        except (OSError, ImageError):
            return None
        img.thumbnail((160, 160))
        return img

    out = {}
    for sec, entry in zip(sets[1:], analysis.secondaries, strict=True):
        dupes = entry.get("duplicates")
        if not dupes or not sec.has_images:
            continue
        s_uri = dict(zip(sec.ids, sec.uris, strict=True))
        wanted = [
            (
                f"{d['id']} vs {primary.name}:{d['primary_id']} (d = {d['distance']:.3g})",
                s_uri.get(d["id"]),
                p_uri.get(d["primary_id"]),
            )
            for d in dupes["with_primary"]
        ] + [
            (
                f"{d['id_a']} vs {d['id_b']} (d = {d['distance']:.3g})",
                s_uri.get(d["id_a"]),
                s_uri.get(d["id_b"]),
            )
            for d in dupes["within"]
        ]
        pairs = []
        for caption, a, b in wanted[:DUPLICATE_PAIRS_SHOWN]:
            img_a, img_b = (load(a) if a else None), (load(b) if b else None)
            if img_a is not None and img_b is not None:
                pairs.append((caption, img_a, img_b))
        if pairs:
            out[sec.name] = pairs
    return out


def _versions() -> dict[str, str]:
    """Package versions for report.json, read from the installed metadata: importing
    transformers and scikit-learn only to read __version__ costs about a second."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "worker": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": ver("torch"),
        "transformers": ver("transformers"),
        "scikit-learn": ver("scikit-learn"),
    }


def build_report(
    job: Job,
    job_source: str | None,
    analyses: list[tuple[dict, ModelAnalysis]],
    labels: list[str],
    skipped: list[dict],
    adaptation: dict | None,
    started: float,
) -> dict:
    """Assemble report.json's dict (schema in worker/report/report.schema.json)."""
    from worker.report.model import SCHEMA_VERSION

    info, first = analyses[0]
    report: dict = {
        "schema_version": SCHEMA_VERSION,
        "passed": True,
        "run": {},
        "job": {"seed": job.seed, "source": job_source},
        "model": _model_block(info),
        "primary": first.primary,
        "pca": first.pca,
        "o_dist_scaled": first.o_dist_scaled,
        "secondaries": first.secondaries,
        "pca_sweep": first.pca_sweep,
        "pca_sweep_stable": first.pca_sweep_stable,
        "models": [
            {
                "model": _model_block(inf),
                "label": label,
                "o_dist": a.o_dist,
                "o_dist_scaled": a.o_dist_scaled,
                "secondaries": a.secondaries if i else [],
            }
            for i, ((inf, a), label) in enumerate(zip(analyses, labels, strict=True))
        ],
        "gates": [],
        "skipped": skipped,
        "warnings": sorted({w for _, a in analyses for w in a.warnings}),
    }
    if len(analyses) > 1:
        from worker import stats

        report["model_agreement"] = stats.model_agreement(
            {m["label"]: m["o_dist"] for m in report["models"]},
            {
                label: {s["name"]: [im["i_dist"] for im in s["images"]] for s in a.secondaries}
                for (_, a), label in zip(analyses, labels, strict=True)
            },
        )
    for (_, a), entry in zip(analyses, report["models"], strict=True):
        if a.robustness:
            entry["robustness"] = {k: v["kendall_tau"] for k, v in a.robustness.items()}
    if first.robustness:
        report["robustness"] = first.robustness
        for sec in report["secondaries"]:
            sec["robustness"] = {
                k: v["image_kendall_tau"][sec["name"]] for k, v in first.robustness.items()
            }
    if adaptation is not None:
        report["adaptation"] = adaptation
    report["gates"] = evaluate_gates(report, job.gates)
    report["passed"] = all(g["passed"] for g in report["gates"])
    finished = time.time()
    report["run"] = {
        "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "finished": dt.datetime.fromtimestamp(finished, dt.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "duration_s": round(finished - started, 3),
        "host": platform.node(),
        "versions": _versions(),
    }
    return report


def _publish(staging: Path, out_uri: str, storage) -> None:
    """Move finished outputs into place: report.json last, so it never appears alone."""
    if is_s3(out_uri):
        from worker.outputs import publish_outputs

        publish_outputs(staging, out_uri, storage)
        return
    out = Path(out_uri)
    names = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
    names.sort(key=lambda p: p.name == "report.json")
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for rel in names:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.partial")
            written.append(tmp)
            shutil.copyfile(staging / rel, tmp)
            tmp.replace(target)
            written.append(target)
    except OSError as err:
        for path in written:
            path.unlink(missing_ok=True)
        raise JobError(
            f"output.dir: cannot write the reports to {out} ({err.strerror or err}); "
            "free disk space or choose another folder with --out"
        ) from None


def run(
    job: Job,
    *,
    out_dir: str | None = None,
    job_source: str | None = None,
    show_progress: bool = False,
    junit_path: str | None = None,
) -> RunResult:
    """Run every stage of a job; write report.json, report.pdf and figures/ to the output."""
    started = time.time()
    out_uri = out_dir or job.resolve(job.output.dir)
    analyses: list[tuple[dict, ModelAnalysis]] = []
    skipped: list[dict] = []
    image_sets: list[EmbeddedSet] | None = None
    with compute_engine(job) as engine_info:
        for model in job.model_list:
            with stage("embed", model=model.label):
                sets, extractor = embed_all(job, model, show_progress)
            if not skipped:
                skipped = [s for ds in sets for s in ds.skipped]
            if image_sets is None:
                image_sets = sets
            with stage("measure", model=model.label):
                analysis = analyse_model(sets[0], sets[1:], job)
            if job.metrics.robustness:
                with stage("robustness", model=model.label):
                    analysis.robustness = _robustness(job, model, extractor, sets, analysis)
            analyses.append((sets[0].model_info, analysis))
        try:
            report = _write_outputs(
                job,
                analyses,
                skipped,
                image_sets,
                out_uri,
                job_source,
                junit_path,
                started,
                engine_info,
            )
        except OSError as err:
            raise JobError(
                f"output.dir: cannot write the reports ({err.strerror or err}); "
                "free disk space or choose another folder with --out"
            ) from None
    LOGGER.info("reports written to %s", out_uri, extra={"fields": {"out": out_uri}})
    return RunResult(report=report, out_dir=out_uri)


@contextmanager
def compute_engine(job: Job):
    """Where the embedding and distance stages run: this process, or a Ray cluster
    (compute.engine: ray; Ray is imported only then). Yields report.json's run.engine."""
    if job.compute.engine != "ray":
        yield {"engine": "local"}
        return
    from worker.distributed import ray_session

    with ray_session(job.compute) as info:
        yield info


def _robustness(job: Job, model: ModelConfig, extractor, sets, analysis) -> dict | None:
    """Re-embed every secondary brightened, darkened and blurred; rank stability."""
    from worker.analysis import robustness_probe
    from worker.extractors import PerturbedExtractor
    from worker.images import PERTURBATIONS

    if extractor is None or not all(s.has_images for s in sets[1:]):
        analysis.warnings.append(
            "robustness probe skipped: it needs every secondary as images and an extractor"
        )
        return None
    perturbed = {
        kind: embed_all(
            job,
            model,
            False,
            extractor=PerturbedExtractor(extractor, kind),
            datasets=job.datasets.secondary,
        )[0]
        for kind in PERTURBATIONS
    }
    return robustness_probe(sets[0], analysis, perturbed, job)


def _write_outputs(
    job, analyses, skipped, image_sets, out_uri, job_source, junit_path, started, engine_info
):
    """Adaptation (it writes checkpoints), report assembly, rendering, then publishing."""
    adaptation, adapt_extras = None, {}
    with tempfile.TemporaryDirectory(prefix="worker-out-") as tmp:
        staging = Path(tmp)
        labels = [m.label for m in job.model_list]
        if job.adaptation.enabled:
            with stage("adapt"):
                adaptation, adapt_extras = _run_adaptation(job, analyses[0][1], staging)
            trained = adapt_extras.pop("trained_extractor", None)
            if trained is not None:
                with stage("measure", model="trained"):
                    sets, _ = embed_all(job, ModelConfig(name="trained"), False, extractor=trained)
                    analyses = [
                        *analyses,
                        (sets[0].model_info, analyse_model(sets[0], sets[1:], job)),
                    ]
                labels.append("trained (baseline M encoder)")
        report = build_report(job, job_source, analyses, labels, skipped, adaptation, started)
        report["run"]["engine"] = engine_info

        with stage("report"):
            from worker.report.figures import make_figures
            from worker.report.model import write_report_json
            from worker.report.pdf import render_pdf

            first = analyses[0][1]
            extras = {
                "scatter": first.scatter,
                "thumbnails": _thumbnails(image_sets, first, job.storage),
                "duplicate_pairs": _duplicate_pairs(image_sets, first, job.storage),
                **adapt_extras,
            }
            figures = make_figures(report, extras, staging / "figures")
            render_pdf(report, figures, staging / "report.pdf")
            write_report_json(report, staging / "report.json")
            if junit_path:
                from worker.report.junit import write_junit

                write_junit(report, Path(junit_path))
        _publish(staging, out_uri, job.storage)
    return report


def _run_adaptation(job: Job, analysis: ModelAnalysis, staging: Path) -> tuple[dict, dict]:
    """Train M and M_q on P + selected far images; evaluate ODS (DESIGN 4)."""
    from worker.adapt.run import build_masked_sets, run_adaptation

    strategy = job.adaptation.selection
    sets = build_masked_sets(job)
    selections = {}
    for entry in analysis.secondaries:
        name = entry["name"]
        if name not in sets:
            continue
        chosen = analysis.selections.get(name, {})
        ids = [im["id"] for im in entry["images"]]
        selections[name] = {
            q: [ids[i] for i in chosen[(strategy, q)]]
            for q in job.adaptation.counts
            if (strategy, q) in chosen
        }

    def per_image(key: str) -> dict[str, dict[str, float]]:
        return {e["name"]: {im["id"]: im[key] for im in e["images"]} for e in analysis.secondaries}

    return run_adaptation(
        job, sets, selections, per_image("i_dist_scaled"), staging, i_dist=per_image("i_dist")
    )
