"""Logging for the command line: plain text or one JSON object per line (`--log-format json`)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER = logging.getLogger("worker")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, sort_keys=True)


def setup_logging(fmt: str = "text", quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.WARNING if quiet else logging.INFO)
    LOGGER.propagate = False


@contextmanager
def stage(name: str, **fields) -> Iterator[dict]:
    """Log one line when a stage ends ("done in", or "stopped after" when an exception or a
    stop left it), with its duration in seconds. Its start and its end
    are safe points: a stop asked for by a signal (worker.interrupt) is raised there, and a
    stop raised inside it is marked with its name (the innermost stage) for the message."""
    from worker.interrupt import Interrupted, check

    start = time.perf_counter()
    extra: dict = dict(fields)
    done = "stopped after"  # an exception or a stop left the stage
    try:
        check()
        yield extra
        check()
        done = "done in"
    except (Interrupted, KeyboardInterrupt) as stop:
        stop.stage = getattr(stop, "stage", None) or name
        raise
    finally:
        duration = round(time.perf_counter() - start, 3)
        extra.update({"stage": name, "duration_s": duration})
        LOGGER.info("%s %s %.2fs", name, done, duration, extra={"fields": extra})
