"""Report outputs: report.json (model), figures (figures), report.pdf (pdf), JUnit XML (junit).

Import the submodules directly; this package does not import matplotlib or WeasyPrint eagerly.
"""

from worker.report.model import (
    SCHEMA_VERSION,
    clean_numbers,
    load_schema,
    to_json_bytes,
    validate_report,
    write_report_json,
)

__all__ = [
    "SCHEMA_VERSION",
    "clean_numbers",
    "load_schema",
    "to_json_bytes",
    "validate_report",
    "write_report_json",
]
