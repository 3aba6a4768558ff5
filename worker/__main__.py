"""Command line: run, validate, evaluate, schema, compare, demo.

Exit codes: 0 done and every gate passed; 1 done, report written, some gate failed;
2 invalid job or input (the message names the field or file; nothing is written);
3 internal error (a bug: nothing is written); 130 interrupted.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m worker: a signal is a stop request from the first moment
    from worker import interrupt

    interrupt.install()

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from worker.errors import JobError  # noqa: E402
from worker.interrupt import Interrupted, check, signal_name  # noqa: E402

EXIT_OK, EXIT_GATE_FAILED, EXIT_INVALID, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
        sp.add_argument("--log-format", choices=("text", "json"), default="text")

    run = sub.add_parser("run", help="run a job: report.json, report.pdf, figures/")
    run.add_argument("job", help="the job YAML file")
    run.add_argument("--out", help="output folder or s3:// prefix (overrides output.dir)")
    run.add_argument("--junit", help="also write gate results as JUnit XML to this path")
    common(run)

    val = sub.add_parser("validate", help="check a job file and its inputs' locations")
    val.add_argument("job")
    common(val)

    sch = sub.add_parser("schema", help="print the report.json JSON Schema")
    sch.add_argument(
        "--markdown", action="store_true", help="the field-by-field contract as Markdown tables"
    )

    ev = sub.add_parser("evaluate", help="ODS/OIS F-score of saved probability maps vs masks")
    ev.add_argument("--pred", required=True, help="folder of 8-bit PNG probability maps")
    ev.add_argument("--masks", required=True, help="folder of masks with the same stems")
    ev.add_argument("--json", action="store_true", help="print one JSON object")

    cmp = sub.add_parser("compare", help="what changed between two reports or runs")
    from worker.runs_compare import add_arguments

    add_arguments(cmp)

    demo = sub.add_parser("demo", help="write the embedded demo data and run its job")
    demo.add_argument("--dir", default="demo", help="where the demo data and job go")
    common(demo)
    return p


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _run_job(job_path: Path, args: argparse.Namespace) -> int:
    from worker.job import load_job
    from worker.pipeline import run
    from worker.store import forget_published

    job = load_job(job_path)
    forget_published()
    result = run(
        job,
        out_dir=getattr(args, "out", None),
        # the file's name, not the path as typed: report.json outside `run` must not
        # depend on how the job path was spelled (relative, absolute, ./, symlinked)
        job_source=job_path.name,
        show_progress=_show_progress(args),
        junit_path=getattr(args, "junit", None),
    )
    from worker.report.junit import gate_bound, gate_target

    print(f"report: {result.out_dir}/report.json and {result.out_dir}/report.pdf")
    if result.run_id:
        print(f"run: {result.run_id} ({result.run_dir}; {result.out_dir}/latest names the newest)")
    for g in result.report.gates:
        if not g.passed:
            print(f"gate failed: {gate_target(g)} = {g.value} (want {gate_bound(g)})")
    return result.exit_code


def _validate(job_path: Path) -> int:
    """The job's fields, then every local location it names (the checks run does first),
    then each local image folder is listed: nothing is decoded or computed."""
    from worker.job import load_job
    from worker.labelled import entries as labelled_entries
    from worker.preflight import check_locations
    from worker.sources import IMAGE_EXTENSIONS, is_s3, list_images, policy_for
    from worker.sources.samples import (
        VIDEO_EXTENSIONS,
        check_no_videos_for_adaptation,
        is_video,
        list_dataset,
    )

    job = load_job(job_path)
    check_locations(job)
    counts = []
    for ds in job.all_datasets:
        if ds.path is None or is_s3(ds.path):
            continue
        root = job.resolve(ds.path)
        found = list_dataset(root, job.storage, policy=policy_for(job))
        if not found:
            raise JobError(
                f"datasets.{ds.name}.path: no images found in {root}, and no videos (looked "
                f"for {' '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)}, recursively)"
            )
        check_no_videos_for_adaptation(job, ds, found)
        videos = sum(is_video(it.id) for it in found)
        shown = f"{len(found) - videos} images" + (f", {videos} videos" if videos else "")
        counts.append(f"{ds.name}: {shown}")
    folders = [e for e in labelled_entries(job) if e.kind == "folder"]
    if folders:  # selection.labelled's local folders, listed like the datasets'
        listed = sum(len(list_images(e.location, policy=policy_for(job))) for e in folders)
        counts.append(f"selection.labelled: {listed} images in {len(folders)} folder(s)")
    if job.adaptation.enabled:
        from worker.adapt.masks import check_adaptation_inputs

        sets = check_adaptation_inputs(job)
        counts.append(f"masks of {len(sets)} datasets checked for adaptation")
    detail = f": {', '.join(counts)}" if counts else ""
    print(f"{job_path}: valid ({1 + len(job.datasets.secondary)} datasets{detail})")
    return EXIT_OK


def _interrupted(signame: str, stage: str | None = None) -> int:
    """The message for a stop asked for by a signal (or Ctrl-C), before or after publishing;
    `stage`: the stage it stopped."""
    from worker.store import last_published

    published = last_published()
    if published is not None:  # the stop came after the run was made visible
        print(
            f"interrupted by {signame} after run {published.run_id} was published: "
            f"{published.report_uri} is complete and {published.store} names it as latest",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    where = f" during the {stage} stage" if stage else ""
    print(
        f"interrupted by {signame}{where}; no report was published (the previous latest run, "
        "if any, is unchanged); embeddings finished so far are cached: run the same job again "
        "to resume",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from worker.logs import setup_logging

    setup_logging(getattr(args, "log_format", "text"), getattr(args, "quiet", False))
    try:
        check()  # a signal during start-up stops here, before any work
        code = _command(args)
        check()  # a signal held through publishing lands here, after the run is visible
        return code
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except Interrupted as stop:
        return _interrupted(stop.name, stop.stage)
    except KeyboardInterrupt as stop:  # main() called in-process, without the recording handler
        return _interrupted(signal_name(signal.SIGINT), getattr(stop, "stage", None))
    except Exception as err:  # a bug, not a gate: never exit 1 for it
        import traceback

        traceback.print_exc(file=sys.stderr)
        print(f"internal error ({err.__class__.__name__}); no report was written", file=sys.stderr)
        return EXIT_INTERNAL


def _command(args: argparse.Namespace) -> int:
    """Run one subcommand; its exit code (JobError and Interrupted go to main())."""
    if args.command == "schema":
        from worker.report.model import schema_markdown, schema_text

        print(schema_markdown() if args.markdown else schema_text(), end="")
        return EXIT_OK
    if args.command == "validate":
        return _validate(Path(args.job))
    if args.command == "run":
        return _run_job(Path(args.job), args)
    if args.command == "evaluate":
        from worker.adapt.evaluate_cli import main as evaluate_main

        ev_args = ["--pred", args.pred, "--masks", args.masks] + (["--json"] if args.json else [])
        return evaluate_main(ev_args)
    if args.command == "compare":
        from worker.runs_compare import run_compare

        return run_compare(args)
    if args.command == "demo":
        from worker.demo import write_demo

        job_path = write_demo(Path(args.dir))
        return _run_job(job_path, args)
    return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
