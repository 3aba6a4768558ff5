"""Figures of report.pdf: which to draw, drawn in forked processes. The drawing lives in
distance_figures (I_dist, scatter, matrix), estimate_figures, history_figures and
adaptation_figures; every number comes from the typed Report, points and adaptation data
from FigureData (worker.report.inputs). Pictures (thumbnails, the ranking strip, duplicate
pairs) are no figures: worker.report.pictures embeds them in the page.

`make_figures(report, data, out_dir)` returns {key: file} (PNG plots; the prediction grids
are JPEG pictures). Keys:

- `i_dist_violin`, `i_dist_sorted`, `scatter`, `matrix` (distance_figures);
- `estimate_curve`, `history_*`, `adaptation_*`: from their modules when the report has the
  block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt

from worker.report import distance_figures as dist
from worker.report.forked import run_tasks
from worker.report.inputs import FigureData
from worker.report.style import STYLE
from worker.results import Report


@dataclass(frozen=True)
class FigureTask:
    """One figure to draw: its key, the file it will be (known before drawing: the PDF's
    layout starts from it), and draw(*args), which writes that file or returns None where
    the figure's data is missing. Calling it draws: {key: path}, or {} without a figure."""

    key: str
    path: Path
    draw: Callable[..., Path | None]
    args: tuple = ()

    def __call__(self) -> dict[str, Path]:
        with plt.rc_context(STYLE):
            path = self.draw(*self.args)
        return {} if path is None else {self.key: path}


def _figure(key: str, draw: Callable[..., Path | None], *args) -> FigureTask:
    """A figure drawn by draw(*args), whose last argument is its file."""
    return FigureTask(key, Path(args[-1]), draw, args)


def figure_tasks(report: Report, data: FigureData, out: Path) -> list[FigureTask]:
    """One task per figure of the PDF that the report's blocks call for."""
    tasks = [
        _figure("i_dist_violin", dist.plot_violin_overview, report, out / "i_dist_violin.png"),
        _figure("i_dist_sorted", dist.plot_sorted_overview, report, out / "i_dist_sorted.png"),
    ]
    if report.matrix is not None:
        tasks.append(_figure("matrix", dist.plot_matrix, report, out / "matrix.png"))
    if data.scatter is not None:
        tasks.append(
            _figure("scatter", dist.plot_scatter, report, data.scatter, out / "scatter.png")
        )
    from worker.report.estimate_figures import has_curve, plot_estimate

    if report.estimate is not None and has_curve(report.estimate):
        est = report.estimate
        tasks.append(_figure("estimate_curve", plot_estimate, est, out / "estimate_curve.png"))
    if report.history is not None:
        from worker.report.history_figures import history_figures

        tasks += [
            _figure(k, f, report.history, out / f"{k}.png")
            for k, f in history_figures(report.history)
        ]
    if report.adaptation is not None:
        from worker.report.adaptation_figures import adaptation_figures

        tasks += [
            _figure(key, draw, *args)
            for key, draw, args in adaptation_figures(report.adaptation, data.adaptation, out)
        ]
    return tasks


def planned(tasks: list[FigureTask]) -> dict[str, Path]:
    """{key: file} of every figure the tasks will draw, unless its data turns out missing."""
    return {t.key: t.path for t in tasks}


def make_figures(
    report: Report,
    data: FigureData | None,
    out_dir: str | Path,
    *,
    processes: int | None = None,
) -> dict[str, Path]:
    """Draw every figure of the PDF into `out_dir`; returns {figure key: file}.

    Figures whose data is missing (no images, no scatter) are left out; the template checks
    each key before using it. The figures are drawn in forked processes
    (worker.report.forked; `processes` None: one per core); the files' bytes are those of a
    serial run (processes=1).
    """
    out = Path(out_dir)
    return draw_figures(figure_tasks(report, data or FigureData(), out), out, processes)


def draw_figures(
    tasks: list[FigureTask], out: Path, processes: int | None = None
) -> dict[str, Path]:
    """Run `tasks` (figure_tasks of `out`) in forked processes; {key: file} of those drawn."""
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    for drawn in run_tasks(tasks, processes):
        figures.update(drawn)
    return figures
