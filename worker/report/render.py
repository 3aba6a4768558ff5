"""Render a typed Report into a folder: figures/, report.pdf, report.html, then report.json
(last).

`render_outputs(report, inputs, folder)` is the report stage's one entry point. What the
outputs show beyond report.json (2-D points, image files for thumbnails, adaptation curves)
comes in `RenderInputs` (worker.report.inputs); pictures are read here, through
worker.report.pictures, never by the pipeline.
"""

from __future__ import annotations

from pathlib import Path

from worker.report.inputs import FigureData, RenderInputs
from worker.report.pictures import Pictures, picture_sets
from worker.results import Report

BROWSER_IMAGES = 48  # thumbnails per secondary in report.html (the most novel)
PRIMARY_HOVER_IMAGES = 200  # primary images with a hover thumbnail in report.html


def html_data(report: Report, inputs: RenderInputs, pictures: Pictures):
    """report.html's pictures: the BROWSER_IMAGES most novel of each secondary (its browser
    order), and the first PRIMARY_HOVER_IMAGES of the primary for the scatter's hover."""
    from worker.report.interactive import HtmlData, browser_order

    pics: dict[str, dict[str, object]] = {}
    for sec in report.secondaries:
        if not pictures.has_images(sec.name):
            continue
        rows = browser_order(sec)[:BROWSER_IMAGES]
        pics[sec.name] = {sec.images[k].id: pictures.get(sec.name, sec.images[k].id) for k in rows}
    prim = report.primary.name
    ids = {prim: list((inputs.image_uris.get(prim) or {}).keys())}
    if pictures.has_images(prim):
        pics[prim] = {i: pictures.get(prim, i) for i in ids[prim][:PRIMARY_HOVER_IMAGES]}
    return HtmlData(scatter=inputs.scatter, pictures=pics, ids=ids)


class FiguresChanged(BaseException):
    """A planned figure was not drawn (its data turned out missing): the PDF is laid out
    again with the figures there are. A BaseException, so that WeasyPrint's image loading,
    which logs and skips an Exception, lets it through."""


def render_outputs(report: Report, inputs: RenderInputs, folder: Path) -> dict[str, Path]:
    """Draw the figures, print report.pdf, write report.html, then report.json (last), into
    `folder`.

    A forked child loads WeasyPrint and lays out the PDF while the figures are drawn (in
    forked processes too): it starts from the figures' planned files and waits for the
    drawn figures where it first reads one (pdf.render_pdf's figures_ready); meanwhile this
    process writes report.html and serialises report.json (worker.report.forked). Returns
    {figure key: file}."""
    from worker.report.forked import Child, received
    from worker.report.model import atomic_write_bytes, to_json_bytes
    from worker.report.pdf import prepare, render_pdf

    pdf_path = folder / "report.pdf"
    out = folder / "figures"

    def finish(plan: dict[str, Path]) -> Path:
        shown = picture_sets(report, Pictures(inputs))
        drawn: dict[str, Path] = {}

        def figures_ready() -> None:
            drawn.update(received())
            if drawn != plan:
                raise FiguresChanged

        try:
            return render_pdf(report, plan, pdf_path, shown, figures_ready)
        except FiguresChanged:
            return render_pdf(report, drawn, pdf_path, shown)

    with Child(prepare, finish) as printer:
        # after the fork: matplotlib loads here while WeasyPrint loads in the child
        from worker.report.figures import draw_figures, figure_tasks, planned
        from worker.report.interactive import render_interactive

        data = FigureData(scatter=inputs.scatter, adaptation=inputs.adaptation)
        tasks = figure_tasks(report, data, out)
        printer.send(planned(tasks))
        figures = draw_figures(tasks, out)
        printer.send(figures)
        # while the child prints the PDF: report.html and report.json's bytes here
        pictures = Pictures(inputs)
        render_interactive(report, html_data(report, inputs, pictures), folder / "report.html")
        json_bytes = to_json_bytes(report)
        printer.result()
    atomic_write_bytes(folder / "report.json", json_bytes)
    return figures
