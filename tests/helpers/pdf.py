"""PDF text for tests, in pure Python (pypdf), so `make test` needs no poppler."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def pdf_text(pdf: str | Path) -> str:
    """Every page's text, pages separated by a form feed (as pdftotext prints them)."""
    from pypdf import PdfReader

    reader = PdfReader(str(pdf))
    return "".join((page.extract_text() or "") + "\f" for page in reader.pages)


# report.css: @page margins (top 17 mm, bottom 19 mm) bound the content area; the footer lies
# below it and is no content.
MM = 72 / 25.4
TOP_MARGIN_PT = 17 * MM
BOTTOM_MARGIN_PT = 19 * MM
HEADING_SLACK_PT = 24.0  # a heading "starts" a page when nothing lies this far above it


def _apply(m, x: float, y: float) -> tuple[float, float]:
    return m[0] * x + m[2] * y + m[4], m[1] * x + m[3] * y + m[5]


def content_extent(page) -> tuple[float, float] | None:
    """(top, bottom) in PDF points (y up) of what is drawn inside the page's content area:
    text baselines, painted images and forms, path points; None for a page with nothing."""
    height = float(page.mediabox.height)
    top_limit, bottom_limit = height - TOP_MARGIN_PT + 1, BOTTOM_MARGIN_PT - 1
    ys: list[float] = []

    def visit(op, args, cm, tm):
        if op in (b"Tj", b"TJ", b"'", b'"'):
            m = [
                tm[0] * cm[0] + tm[1] * cm[2],
                tm[0] * cm[1] + tm[1] * cm[3],
                tm[2] * cm[0] + tm[3] * cm[2],
                tm[2] * cm[1] + tm[3] * cm[3],
                tm[4] * cm[0] + tm[5] * cm[2] + cm[4],
                tm[4] * cm[1] + tm[5] * cm[3] + cm[5],
            ]
            ys.append(_apply(m, 0, 0)[1])
        elif op == b"Do":
            ys.extend(_apply(cm, x, y)[1] for x, y in ((0, 0), (1, 1), (0, 1), (1, 0)))
        elif op == b"re":
            x, y, w, h = (float(a) for a in args)
            ys.extend((_apply(cm, x, y)[1], _apply(cm, x + w, y + h)[1]))
        elif op in (b"m", b"l"):
            ys.append(_apply(cm, float(args[0]), float(args[1]))[1])

    page.extract_text(visitor_operand_before=visit)
    inside = [y for y in ys if bottom_limit <= y <= top_limit]
    return (max(inside), min(inside)) if inside else None


@dataclass(frozen=True)
class PageFill:
    """One page of a PDF: how full its content area is (0 empty, 1 full, measured from the
    top of the area to the lowest thing drawn), and whether it ends a section (the last
    page, or the next page starts with a top-level heading: h1/h2, PDF outline levels 1-2)."""

    number: int  # 1-based
    fill: float
    section_end: bool
    next_starts: str | None  # the heading that starts the next page, if any


def headings(reader) -> list[tuple[int, int, float, str]]:
    """(level, 0-based page, top, title) of every outline entry (WeasyPrint writes one per
    heading: level 1 = h1, 2 = h2, 3 = h3...)."""
    out = []

    def walk(items, level):
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
            else:
                top = float(item.top) if item.get("/Top") is not None else float("inf")
                out.append((level, reader.get_destination_page_number(item), top, item.title))

    walk(reader.outline, 1)
    return out


def page_fill(pdf: str | Path) -> list[PageFill]:
    """How full every page of `pdf` is, and which pages end a section (see PageFill)."""
    from pypdf import PdfReader

    reader = PdfReader(str(pdf))
    extents = [content_extent(p) for p in reader.pages]
    heads = headings(reader)
    out = []
    for k, (page, extent) in enumerate(zip(reader.pages, extents, strict=True)):
        height = float(page.mediabox.height)
        area_top, area = height - TOP_MARGIN_PT, height - TOP_MARGIN_PT - BOTTOM_MARGIN_PT
        fill = 0.0 if extent is None else (area_top - extent[1]) / area
        starts = None
        if k + 1 < len(extents):
            nxt = extents[k + 1]
            for level, page_no, top, title in heads:
                if (
                    page_no == k + 1
                    and level <= 2
                    and (nxt is None or nxt[0] <= top + HEADING_SLACK_PT)
                ):
                    starts = title
                    break
        last = k == len(extents) - 1
        out.append(PageFill(k + 1, max(0.0, min(1.0, fill)), last or starts is not None, starts))
    return out


def underfull_pages(pdf: str | Path, least: float = 1 / 3) -> list[PageFill]:
    """The pages of `pdf` less than `least` full that end no section (issue 30: no page less
    than a third full except at a section's end)."""
    return [p for p in page_fill(pdf) if p.fill < least and not p.section_end]


@dataclass(frozen=True)
class Overflow:
    """A piece of text laid out past the right edge of its table cell (`where` = "cell") or of
    the page's content area (`where` = "page"), by `beyond` CSS pixels."""

    page: int  # 1-based
    where: str
    text: str
    beyond: float


def overflowing_text(html: str, base_url: str | None = None, slack: float = 0.5) -> list[Overflow]:
    """Lay `html` out with WeasyPrint (as report.pdf is) and return every text box that
    reaches more than `slack` CSS px past its table cell's padding box or past the page's
    content box: a table that does not fit its columns or its page (issue 30)."""
    from weasyprint import HTML
    from weasyprint.formatting_structure import boxes

    document = HTML(string=html, base_url=base_url).render()
    out: list[Overflow] = []

    def visit(box, cell, page_no: int, page_right: float) -> None:
        if isinstance(box, boxes.TableCellBox):
            cell = box
        if isinstance(box, boxes.TextBox):
            right = box.position_x + box.width
            if cell is not None:
                edge = cell.padding_box_x() + cell.padding_width()
                if right > edge + slack:
                    out.append(Overflow(page_no, "cell", box.text, right - edge))
            if right > page_right + slack:
                out.append(Overflow(page_no, "page", box.text, right - page_right))
        for child in getattr(box, "children", None) or ():
            visit(child, cell, page_no, page_right)

    for k, page in enumerate(document.pages, start=1):
        root = page._page_box  # WeasyPrint's laid-out page: the only way to its boxes
        page_right = root.content_box_x() + root.width
        visit(root, None, k, page_right)
    return out
