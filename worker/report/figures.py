"""Figures of report.pdf: which to draw, drawn in forked processes. The drawing lives in
distance_figures (I_dist, scatter, matrix), estimate_figures, history_figures and
adaptation_figures; every number comes from the typed Report, points and adaptation data
from FigureData (worker.report.inputs). Pictures (thumbnails, the ranking strip, duplicate
pairs) are no figures: worker.report.pictures embeds them in the page.

`make_figures(report, data, out_dir)` returns {key: PNG path}. Keys:

- `i_dist_violin`, `i_dist_sorted`, `scatter`, `matrix` (distance_figures);
- `estimate_curve`, `history_*`, `adaptation_*`: from their modules when the report has the
  block.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt

from worker.report import distance_figures as dist
from worker.report.forked import run_tasks
from worker.report.inputs import FigureData
from worker.report.style import STYLE
from worker.results import Report

Task = Callable[[], dict[str, Path]]  # draws one figure (or one module's) -> {key: path}


def _figure(key: str, draw: Callable[..., Path | None], *args) -> Task:
    def task() -> dict[str, Path]:
        with plt.rc_context(STYLE):
            path = draw(*args)
        return {} if path is None else {key: path}

    return task


def _figures(make: Callable[..., dict[str, Path]], *args) -> Task:
    def task() -> dict[str, Path]:
        with plt.rc_context(STYLE):
            return make(*args)

    return task


def figure_tasks(report: Report, data: FigureData, out: Path) -> list[Task]:
    """One task per figure of the PDF (one per module for estimate and history)."""
    tasks = [
        _figure("i_dist_violin", dist.plot_violin_overview, report, out / "i_dist_violin.png"),
        _figure("i_dist_sorted", dist.plot_sorted_overview, report, out / "i_dist_sorted.png"),
        _figure("matrix", dist.plot_matrix, report, out / "matrix.png"),
    ]
    if data.scatter is not None:
        tasks.append(
            _figure("scatter", dist.plot_scatter, report, data.scatter, out / "scatter.png")
        )
    if report.estimate is not None:
        from worker.report.estimate_figures import make_estimate_figures

        tasks.append(_figures(make_estimate_figures, report.estimate, out))
    if report.history is not None:
        from worker.report.history_figures import make_history_figures

        tasks.append(_figures(make_history_figures, report.history, out))
    if report.adaptation is not None:
        from worker.report.adaptation_figures import adaptation_figures

        for key, draw in adaptation_figures(report.adaptation, data.adaptation, out):
            tasks.append(_figure(key, draw))
    return tasks


def make_figures(
    report: Report,
    data: FigureData | None,
    out_dir: str | Path,
    *,
    processes: int | None = None,
) -> dict[str, Path]:
    """Draw every figure of the PDF into `out_dir`; returns {figure key: PNG path}.

    Figures whose data is missing (no images, no scatter) are left out; the template checks
    each key before using it. The figures are drawn in forked processes
    (worker.report.forked; `processes` None: one per core); the PNG bytes are those of a
    serial run (processes=1).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = figure_tasks(report, data or FigureData(), out)
    figures: dict[str, Path] = {}
    for drawn in run_tasks(tasks, processes):
        figures.update(drawn)
    return figures
