"""PDF text for tests, in pure Python (pypdf), so `make test` needs no poppler."""

from __future__ import annotations

from pathlib import Path


def pdf_text(pdf: str | Path) -> str:
    """Every page's text, pages separated by a form feed (as pdftotext prints them)."""
    from pypdf import PdfReader

    reader = PdfReader(str(pdf))
    return "".join((page.extract_text() or "") + "\f" for page in reader.pages)
