"""Score the user's own model: a dataset's `predictions:` (8-bit PNG probability maps, one per
mask, paired by stem) against its `masks:`, with exactly the code of `python -m worker
evaluate --pred --masks` (worker.adapt.evaluate_cli.evaluate), so both give identical numbers.
"""

from __future__ import annotations

from worker.adapt import evaluate_cli
from worker.errors import JobError


def score_predictions(job, dataset) -> dict:
    """ODS / OIS of `dataset.predictions` against `dataset.masks` (paths resolved by the job).

    Returns evaluate_cli.evaluate's dict {ods_f, ods_threshold, ois_f, precision, recall, count,
    per_image [{id (mask stem), f}]}. Raises JobError naming the dataset field when a file is
    missing, unpaired, unreadable or of the wrong size.
    """
    if dataset.predictions is None or dataset.masks is None:
        raise JobError(f"datasets.{dataset.name}.predictions: needs both 'predictions' and 'masks'")
    try:
        return evaluate_cli.evaluate(
            job.resolve(dataset.predictions), job.resolve(dataset.masks), job.storage
        )
    except JobError as err:
        raise JobError(f"datasets.{dataset.name}.predictions: {err}") from None


def score_all_predictions(job) -> dict[str, dict]:
    """{secondary name: score} for every secondary with `predictions:` (job order)."""
    return {
        ds.name: score_predictions(job, ds)
        for ds in job.datasets.secondary
        if ds.predictions is not None
    }
