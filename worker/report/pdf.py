"""report.pdf: Jinja2 (autoescaped) HTML from templates/report.html.j2, printed by WeasyPrint.

`render_html(report, figures, pictures)` returns the HTML string; `render_pdf(report, figures,
out_path, pictures)` writes the PDF atomically. `figures` is make_figures' {key: path}; the
template and its partials receive it as {key: file URI}; `pictures` (worker.report.pictures)
holds the thumbnails as data URIs. WeasyPrint may only read the stylesheet, the templates
folder, the figure files and data: URIs.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup, escape

from worker.report.fmt import fmt_num, fmt_p, fmt_pct, fmt_ratio, fmt_signed_pct
from worker.report.model import atomic_write_bytes
from worker.report.pictures import PictureSets
from worker.results import GateResult, Report

SKIPPED_LIMIT = 150  # rows of the skipped-images table


def templates_dir() -> Path:
    """templates/ of the project (WORKER_TEMPLATES overrides, e.g. in an installed image)."""
    env = os.environ.get("WORKER_TEMPLATES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "templates"


def header_breaks(text: str) -> Markup:
    """A column title that may wrap after an underscore or a slash, never inside a word."""
    return Markup(str(escape(text)).replace("_", "_<wbr>").replace("/", "/<wbr>"))


def fmt_bound(gate: GateResult) -> str:
    """'≤ 0.5', '≥ 2' or 'in [a, b]' for a gate result."""
    from worker.report.junit import gate_bound

    return gate_bound(gate, fmt_num, "≤", "≥", missing="")


@lru_cache(maxsize=4)
def _environment(folder: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(folder),
        autoescape=True,  # every string: names and ids come from users' files
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = fmt_num
    env.filters["p"] = fmt_p
    env.filters["pct"] = fmt_pct
    env.filters["ratio"] = fmt_ratio
    env.filters["signed_pct"] = fmt_signed_pct
    env.filters["bound"] = fmt_bound
    env.filters["hdr"] = header_breaks
    return env


def environment() -> Environment:
    """The Jinja2 environment of templates/ (autoescaped, with the number filters)."""
    return _environment(str(templates_dir()))


def _figure_uris(figures: dict | None) -> dict[str, str]:
    return {str(k): Path(v).resolve().as_uri() for k, v in (figures or {}).items() if v}


def _context(report: Report, figures: dict | None, pictures=None) -> dict:
    from worker.report.decide import COLUMNS, decision

    skipped_by: dict[str, int] = {}
    for s in report.skipped:
        skipped_by[s.dataset] = skipped_by.get(s.dataset, 0) + 1
    by_name = {s.name: s for s in report.secondaries}
    order = report.ranking.order if report.ranking else [s.name for s in report.secondaries]
    ranked = [by_name[n] for n in order if n in by_name]
    shown = report.ranking.sections if report.ranking else order
    evidence = report.ranking.highlighted if report.ranking else order
    return {
        "report": report,
        "d": decision(report),
        "columns": COLUMNS,
        "figures": _figure_uris(figures),
        "pictures": pictures or PictureSets(),
        "ranked": ranked,  # secondaries, closest first (report.ranking.order)
        "ranked_names": [s.name for s in ranked],
        "rank_of": {s.name: i + 1 for i, s in enumerate(ranked)},
        "sections": [by_name[n] for n in shown if n in by_name],  # secondaries with a block
        # the evidence's per-secondary rows: every secondary, or both ends of a long ranking
        "evidence": [by_name[n] for n in evidence if n in by_name],
        "section_names": list(shown),
        "summary": bool(report.ranking and report.ranking.detail == "summary"),
        "gates_failed": [g for g in report.gates if not g.passed],
        "skipped_by": skipped_by,
        "table_models": report.models,
        "skipped_limit": SKIPPED_LIMIT,
    }


def render_html(report: Report, figures: dict | None, pictures: PictureSets | None = None) -> str:
    """The report as one HTML document (stylesheet linked as report.css next to the template)."""
    env = _environment(str(templates_dir()))
    return env.get_template("report.html.j2").render(**_context(report, figures, pictures))


def prepare() -> None:
    """Pay render_pdf's fixed costs ahead (WeasyPrint's import, the templates' compilation),
    e.g. while the figures are drawn in other processes."""
    import weasyprint  # noqa: F401

    _environment(str(templates_dir())).get_template("report.html.j2")


def _allowed(url: str, roots: list[Path]) -> bool:
    parsed = urlparse(url)
    if parsed.scheme == "data":
        return True
    if parsed.scheme != "file":
        return False
    target = Path(unquote(parsed.path)).resolve()
    return any(target == r or r in target.parents for r in roots)


def _url_fetcher(allowed: list[Path], figure_files=(), figures_ready=None):
    """A WeasyPrint fetcher that reads only data: URIs and files under `allowed` (no network).
    figures_ready(): called once, before the first of `figure_files` is read."""
    import weasyprint

    roots = [p.resolve() for p in allowed]
    waiting = {Path(f).resolve() for f in figure_files} if figures_ready else set()

    def check(url: str) -> None:
        if not _allowed(url, roots):
            raise ValueError(f"report.pdf: refusing to load {url!r} (not a report resource)")
        if not waiting:
            return
        parsed = urlparse(url)
        if parsed.scheme == "file" and Path(unquote(parsed.path)).resolve() in waiting:
            waiting.clear()
            figures_ready()

    base = getattr(weasyprint, "URLFetcher", None)
    if base is not None:  # WeasyPrint >= 68: a URLFetcher subclass

        class _Fetcher(base):
            def fetch(self, url, headers=None):
                check(url)
                return super().fetch(url, headers)

        return _Fetcher(allowed_protocols={"file", "data"})

    def fetch(url: str, *args, **kwargs):  # older WeasyPrint: a plain function
        check(url)
        return weasyprint.default_url_fetcher(url, *args, **kwargs)

    return fetch


def render_pdf(
    report: Report,
    figures: dict | None,
    out_path: str | Path,
    pictures: PictureSets | None = None,
    figures_ready=None,
) -> Path:
    """Render report.pdf (A4, page numbers) and write it atomically to `out_path`.

    figures_ready: where `figures` are files still being drawn, called (once) before
    WeasyPrint first reads one of them: it returns once they are all written (or raises,
    e.g. when one of them will not be); what comes before (parsing the HTML, the style
    cascade) overlaps with their drawing."""
    from weasyprint import HTML

    folder = templates_dir()
    html = render_html(report, figures, pictures)
    files = [Path(p).resolve() for p in (figures or {}).values() if p]
    document = HTML(
        string=html,
        base_url=folder.resolve().as_uri() + "/",
        url_fetcher=_url_fetcher([folder, *files], files, figures_ready),
    )
    data = document.write_pdf()
    return atomic_write_bytes(out_path, data)
