"""run(job) -> RunResult: the one place that wires the stages, top to bottom.

check -> embed -> measure -> [robustness] -> [matrix] -> [adapt -> measure with the trained
    encoder] -> report (typed) -> estimate -> history (earlier runs of the store, read as typed
    Reports through worker.store) -> gates -> render (figures, PDF, report.json) -> publish
    -> JUnit
"""

from __future__ import annotations

import datetime as dt
import functools
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker import __version__, exports
from worker.adapt.masks import check_adaptation_inputs
from worker.adapt.predictions import score_all_predictions
from worker.analysis import (
    ModelAnalysis,
    analyse_matrix,
    analyse_model,
    compare_groups,
    rank_secondaries,
)
from worker.embed_stage import (  # noqa: F401
    Embedded,
    _check_location,
    _check_sets,
    _local_checkpoint,
    _Progress,
    dataset_items,
    embed_all,
    load_dataset,
    load_datasets_ray,
)
from worker.errors import JobError
from worker.gates import evaluate_gates
from worker.job import Job, ModelConfig
from worker.labelled import unmatched_ids
from worker.logs import LOGGER, stage
from worker.preflight import check_locations
from worker.report.inputs import AdaptationFigureData, RenderInputs
from worker.report.render import render_outputs
from worker.results import (
    SCHEMA_VERSION,
    Adaptation,
    DatasetMatrix,
    JobInfo,
    ModelResult,
    Perturbation,
    Report,
    RunInfo,
    SelectionInfo,
)
from worker.selection import ALPHA, PAPER_STRATEGY, SelectionMemory, earlier_selections
from worker.sources import is_s3, listing_policy, policy_for
from worker.store import new_run_id, publish_run, staging_dir


@dataclass
class Measured:
    """Everything measured with one extractor: its embeddings, numbers and robustness."""

    label: str
    embedded: Embedded
    analysis: ModelAnalysis
    robustness: dict[str, Perturbation] | None = None


@dataclass
class RunResult:
    report: Report
    out_dir: str  # the run store (output.dir or --out)
    run_id: str | None = None  # this run's id in the store
    run_dir: str | None = None  # <out_dir>/runs/<run_id>

    @property
    def exit_code(self) -> int:
        return 0 if self.report.passed else 1


def run(
    job: Job,
    *,
    out_dir: str | None = None,
    job_source: str | None = None,
    show_progress: bool = False,
    junit_path: str | None = None,
) -> RunResult:
    """Run every stage of a job, in order, and publish report.json, report.pdf and figures/:
    check, embed, measure, robustness, adapt, measure with the trained encoder, report,
    estimate, history, gates, render, publish, then the JUnit file (`junit_path`)."""
    with listing_policy(policy_for(job)):
        return _run(job, out_dir, job_source, show_progress, junit_path)


def _run(
    job: Job,
    out_dir: str | None,
    job_source: str | None,
    show_progress: bool,
    junit_path: str | None,
) -> RunResult:
    started = time.time()
    run_id = new_run_id(started)
    out_uri = out_dir or job.resolve(job.output.dir)
    check_locations(job, out=out_dir, junit=junit_path)  # every local location, before work
    masked = check_adaptation_inputs(job)  # masks checked before any embedding
    scores = score_all_predictions(job)  # the user's own maps (predictions:), also checked early
    with staging_dir(out_uri, run_id) as staging:  # inside the store: a later run cleans it
        memory = selection_memory(job, out_uri)  # earlier runs' selections, not proposed again
        with compute_engine(job) as engine_info:
            measured: list[Measured] = []
            for model in job.model_list:
                with stage("embed", model=model.label):
                    embedded = embed_all(job, model, show_progress)
                with stage("measure", model=model.label), numeric_input_errors():
                    analysis = analyse_model(
                        embedded.sets[0], embedded.sets[1:], job, memory, _labelled(embedded)
                    )
                robustness = None
                if job.metrics.robustness:
                    with stage("robustness", model=model.label), numeric_input_errors():
                        robustness = measure_robustness(job, model, embedded, analysis)
                measured.append(Measured(model.label, embedded, analysis, robustness))
            matrix = None
            if job.datasets.matrix:
                with stage("matrix"), numeric_input_errors():
                    matrix = analyse_matrix(measured[0].embedded.sets, job)
            adapted = None
            if job.adaptation.enabled:
                with stage("adapt"):
                    adapted = adapt(job, measured[0].analysis, masked, staging)
                if adapted.trained_encoder is not None:
                    with stage("measure", model="trained"), numeric_input_errors():
                        measured.append(measure_trained(job, adapted.trained_encoder, memory))
        with stage("report"):
            report = build_report(
                job,
                job_source,
                measured,
                adapted,
                RunInfo(**_run_info(started, engine_info), run_id=run_id),
                matrix=matrix,
            )
            report.selection = selection_summary(job, memory, measured[0].embedded)
            for entry in report.selection.labelled_unmatched:
                warning = (
                    f"selection.labelled: {entry} matches no image (no secondary image has "
                    "this id and no image lies under it); check the entry"
                )
                LOGGER.warning("%s", warning)
                report.warnings = sorted({*report.warnings, warning})
        with stage("estimate"):
            attach_estimate(report, scores, job.seed)
        with stage("history"):
            attach_history(report, job, out_uri, measured[0].embedded)
        with stage("gates"):
            report.gates = evaluate_gates(report, job.gates)
            report.passed = all(g.passed for g in report.gates)
        with stage("render"):
            try:
                write_exports(job, report, measured[0], staging)
                render_outputs(report, _render_inputs(measured[0], adapted, job), staging)
            except OSError as err:
                raise JobError(
                    f"output.dir: cannot write the reports ({err.strerror or err}); "
                    "free disk space or choose another folder with --out"
                ) from None
        with stage("publish"):
            published = publish_run(
                staging, out_uri, job.storage, started=started, run_id=run_id, keep=job.output.keep
            )
    if junit_path:
        write_junit_file(report, junit_path)
    LOGGER.info("reports written to %s", published.run_uri, extra={"fields": {"out": out_uri}})
    return RunResult(report, out_uri, published.run_id, published.run_uri)


@contextmanager
def numeric_input_errors():
    """The numeric layer (PCA, selection, engine) raises ValueError naming the job field its
    input came from; here, in the job layer, that becomes a JobError (exit 2)."""
    try:
        yield
    except JobError:
        raise
    except ValueError as err:
        raise JobError(str(err)) from err


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


def measure_robustness(
    job: Job, model: ModelConfig, embedded: Embedded, analysis: ModelAnalysis
) -> dict[str, Perturbation] | None:
    """Re-embed every secondary brightened, darkened and blurred; rank stability (appendix D)."""
    from worker.analysis import robustness_probe
    from worker.extractors import PerturbedExtractor
    from worker.images import PERTURBATIONS

    sets = embedded.sets
    if embedded.extractor is None or not all(s.has_images for s in sets[1:]):
        analysis.warnings.append(
            "robustness probe skipped: it needs every secondary as images and an extractor"
        )
        return None
    perturbed = {
        kind: embed_all(
            job,
            model,
            False,
            extractor=PerturbedExtractor(embedded.extractor, kind),
            datasets=job.datasets.secondary,
        ).sets
        for kind in PERTURBATIONS
    }
    return robustness_probe(sets[0], analysis, perturbed, job)


@dataclass
class Adapted:
    """The adapt stage's result: the report block, what its figures draw, and the trained
    baseline's encoder when `features_from_trained` asks for it."""

    block: Adaptation
    figure_data: AdaptationFigureData
    trained_encoder: Any = None


def adapt(job: Job, analysis: ModelAnalysis, sets: dict, artifacts: Path) -> Adapted:
    """Train every architecture as M and M_q on P + selected far images; evaluate ODS
    (method.md §5). `sets`: the masked datasets checked before embedding. Checkpoints
    (output.save_checkpoints) go under `artifacts`."""
    from worker.adapt.run import run_adaptation

    strategy = job.adaptation.selection
    selections = {}
    for entry in analysis.secondaries:
        if entry.name not in sets:
            continue
        chosen = analysis.selections.get(entry.name, {})
        ids = [im.id for im in entry.images]
        selections[entry.name] = {
            q: [ids[i] for i in chosen[(strategy, q)]]
            for q in job.adaptation.counts
            if (strategy, q) in chosen
        }

    def per_image(key: str) -> dict[str, dict[str, float]]:
        return {e.name: {im.id: getattr(im, key) for im in e.images} for e in analysis.secondaries}

    held_out = {
        e.name: [e.images[i].id for i in analysis.held_out[e.name]]
        for e in analysis.secondaries
        if e.name in sets and e.name in analysis.held_out
    }
    block, extras = run_adaptation(
        job,
        sets,
        selections,
        per_image("i_dist_scaled"),
        artifacts,
        i_dist=per_image("i_dist"),
        held_out=held_out,
    )
    return Adapted(
        block=block,
        figure_data=AdaptationFigureData.from_extras(extras),
        trained_encoder=extras.get("trained_extractor"),
    )


def measure_trained(job: Job, encoder, memory: SelectionMemory | None = None) -> Measured:
    """Distances measured with the trained baseline M's own encoder (features_from_trained);
    `memory`: the earlier runs' selections, as for the other extractors."""
    embedded = embed_all(job, ModelConfig(name="trained"), False, extractor=encoder)
    analysis = analyse_model(embedded.sets[0], embedded.sets[1:], job, memory, _labelled(embedded))
    return Measured("trained (baseline M encoder)", embedded, analysis)


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


def _run_info(started: float, engine_info: dict) -> dict:
    finished = time.time()

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")

    return {
        "started": iso(started),
        "finished": iso(finished),
        "duration_s": round(finished - started, 3),
        "host": platform.node(),
        "versions": _versions(),
        "engine": engine_info,
    }


def build_report(
    job: Job,
    job_source: str | None,
    measured: list[Measured],
    adapted: Adapted | None,
    run_info: RunInfo,
    matrix: DatasetMatrix | None = None,
) -> Report:
    """report.json as one typed Report: the first extractor's blocks at the top level, every
    extractor in `models`. The estimate, history and gates stages complete it (run())."""
    from worker import stats

    first = measured[0].analysis
    models = [
        ModelResult(
            model=m.embedded.model,
            label=m.label,
            o_dist=m.analysis.o_dist,
            o_dist_scaled=m.analysis.o_dist_scaled,
            secondaries=m.analysis.secondaries if i else [],
            robustness={k: v.kendall_tau for k, v in m.robustness.items()}
            if m.robustness
            else None,
        )
        for i, m in enumerate(measured)
    ]
    agreement = None
    if len(measured) > 1:
        agreement = stats.model_agreement(
            {m.label: m.analysis.o_dist for m in measured},
            {
                m.label: {s.name: [im.i_dist for im in s.images] for s in m.analysis.secondaries}
                for m in measured
            },
        )
    robustness = measured[0].robustness
    if robustness:
        for sec in first.secondaries:
            sec.robustness = {k: v.image_kendall_tau[sec.name] for k, v in robustness.items()}
    report = Report(
        schema_version=SCHEMA_VERSION,
        passed=True,
        run=run_info,
        job=JobInfo(seed=job.seed, source=job_source),
        model=measured[0].embedded.model,
        primary=first.primary,
        pca=first.pca,
        o_dist_scaled=first.o_dist_scaled,
        secondaries=first.secondaries,
        pca_sweep=first.pca_sweep,
        pca_sweep_stable=first.pca_sweep_stable,
        models=models,
        gates=[],
        skipped=[s for ds in _read_sets(measured[0].embedded) for s in ds.skipped],
        warnings=sorted(
            {w for m in measured for w in m.analysis.warnings}
            | {w for ds in _read_sets(measured[0].embedded) for w in ds.warnings}
        ),
        model_agreement=agreement,
        robustness=robustness,
        adaptation=adapted.block if adapted else None,
        ranking=rank_secondaries(first.secondaries, job),
        groups=compare_groups(first.secondaries, job, matrix),
        matrix=matrix,
    )
    return report


def write_junit_file(report: Report, junit: str) -> None:
    """Gate results as JUnit XML, atomically, once the reports are published (a run that
    published nothing writes no JUnit file)."""
    from worker.report.junit import write_junit

    try:
        write_junit(report, Path(junit))
    except OSError as err:
        raise JobError(
            f"--junit: cannot write {junit} ({err.strerror or err}); the reports were "
            "published; choose another --junit path"
        ) from None


def attach_estimate(report: Report, scores: dict | None, seed: int) -> None:
    """Estimate ODS for secondaries without masks from the labelled ones (method-estimate.md):
    the top-level `estimate` block and each estimated secondary's `estimate`."""
    if not scores and (report.adaptation is None or not report.adaptation.results):
        return  # no labelled evidence (and no scikit-learn import for it)
    from worker.estimate import estimate_from_report

    estimate = estimate_from_report(report, scores, seed=seed)
    if estimate is None:
        return
    for sec in report.secondaries:
        sec.estimate = estimate.for_dataset(sec.name)
    # per-image values live under each secondary; the top-level block keeps the fit
    estimate.secondaries = [e.model_copy(update={"images": []}) for e in estimate.secondaries]
    report.estimate = estimate


def attach_history(report: Report, job: Job, store: str, embedded: Embedded | None = None) -> None:
    """Compare this run with the earlier runs of the same store (method.md §6): the `history`
    block, and `new` on every image of a secondary that the previous run also had. Earlier
    runs are read as typed Reports by worker.store (one reader); one that cannot be read is
    skipped, and the skip is in report.warnings, on stderr and in the gate reasons it
    changes. The first run of a store (no earlier run, no baseline, nothing skipped) gets
    no block."""
    from worker.estimate import estimated_vs_realised
    from worker.history import build_history
    from worker.store import earlier_runs, is_run_id, load_report, load_run

    previous, skipped = earlier_runs(
        store, before=report.run.run_id, max_runs=job.history.max_runs, storage=job.storage
    )
    baseline = label = None
    ref = job.history.baseline
    if ref:
        try:
            if is_run_id(ref):
                baseline = load_run(store, ref, job.storage)
            else:
                loc = ref if is_s3(ref) or Path(ref).is_absolute() else str(job.base_dir / ref)
                baseline = load_report(loc, storage=job.storage)
                label = ref
        except JobError as err:
            raise JobError(
                f"history.baseline: {err}; give an existing run id of {store} or a readable "
                "report.json path"
            ) from None
    for warning in skipped:
        LOGGER.warning("%s", warning)
    history = build_history(
        report,
        previous,
        baseline,
        tuple(job.selection.band),
        baseline_label=label,
        run_id=report.run.run_id,
        skipped=skipped,
    )
    report.warnings = sorted(set(report.warnings) | set(history.warnings))
    if history.previous_run is None and not history.baseline and not skipped:
        return  # a first run: nothing to compare, and report.json stays free of run ids
    report.history = history
    # estimates of earlier runs against the F realised once masks arrived (method-estimate.md)
    history.estimates = estimated_vs_realised([*previous, report])
    if embedded is not None and history.previous_run is not None:
        attach_change_tests(history, previous[-1], job, embedded)
    for sec in report.secondaries:
        new = history.new_ids.get(sec.name)
        if new is None:
            continue
        new = set(new)
        for im in sec.images:
            im.new = im.id in new


def attach_change_tests(history, previous: Report, job: Job, embedded: Embedded) -> None:
    """The new images of every secondary tested against the previous run's images (method.md
    §12.7): that run's embeddings are this run's vectors of the same content, else the
    embedding cache's entries under the same extractor (content hash)."""
    from worker.analysis import change_tests

    lookup = None
    if embedded.extractor is not None and job.cache.enabled and job.cache.dir:
        from worker.cache import EmbeddingCache

        cache = EmbeddingCache(job.resolve(job.cache.dir), storage=job.storage)
        lookup = functools.partial(cache.get, key=embedded.extractor.cache_key)
    change_tests(history, previous, embedded.sets, job, lookup)


def selection_memory(job: Job, store: str) -> SelectionMemory | None:
    """What the earlier runs of the run store selected (selection.exclude_previous; method.md
    §3.6), read one report at a time; None when exclusion is off."""
    if not job.selection.exclude_previous:
        return None
    from worker.store import each_run

    skipped: list[str] = []
    memory = earlier_selections(each_run(store, storage=job.storage, skipped=skipped))
    for warning in skipped:
        LOGGER.warning("selection.exclude_previous: %s", warning)
    return memory


def _labelled(embedded: Embedded):
    """The labelled images outside the job's datasets (selection.labelled), or None."""
    return embedded.labelled.images if embedded.labelled is not None else None


def _read_sets(embedded: Embedded) -> list:
    """Every set the embed stage read: the datasets, then the labelled images."""
    labelled = _labelled(embedded)
    return embedded.sets + ([labelled] if labelled is not None else [])


def selection_summary(
    job: Job, memory: SelectionMemory | None, embedded: Embedded
) -> SelectionInfo:
    """report.json's `selection` block: strategies, judging, memory, labelled images and
    exports."""
    cfg = job.selection
    labelled = _labelled(embedded)
    return SelectionInfo(
        strategies=cfg.strategies,
        paper_strategy=PAPER_STRATEGY,
        random_subsets=cfg.random_subsets,
        alpha=ALPHA,
        exclude_previous=cfg.exclude_previous,
        earlier_runs=0 if memory is None else memory.runs,
        labelled=list(cfg.labelled),
        labelled_pool=labelled.count if labelled is not None else 0,
        labelled_unmatched=unmatched_ids(job, embedded.sets[1:], embedded.labelled),
        exports=[exports.FILES[f] for f in exports.FILES if f in cfg.export],
    )


def write_exports(job: Job, report: Report, first: Measured, folder: Path) -> None:
    """selection.csv / label-studio.json / fiftyone.json into the run folder (selection.export)."""
    if not job.selection.export:
        return
    locations = {s.name: dict(zip(s.ids, s.uris, strict=False)) for s in first.embedded.sets}
    exports.write_exports(job.selection.export, exports.export_rows(report, locations), folder)


def _render_inputs(first: Measured, adapted: Adapted | None, job: Job) -> RenderInputs:
    """What the PDF draws beyond report.json: 2-D points, image locations, adaptation data."""
    return RenderInputs(
        scatter=first.analysis.scatter,
        image_uris={s.name: dict(zip(s.ids, s.uris, strict=False)) for s in first.embedded.sets},
        samples={s.name: s.samples for s in first.embedded.sets if s.samples},
        storage=job.storage,
        adaptation=adapted.figure_data if adapted else None,
    )
