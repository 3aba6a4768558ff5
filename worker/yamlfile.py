"""Reading a YAML job file safely: a regular file of bounded size, UTF-8 text, strict YAML.

- the file must be a regular file (a link to /dev/zero, a FIFO or a device is refused before
  it is opened) of at most MAX_JOB_BYTES;
- UTF-16 / UTF-32 (a byte-order mark or NUL bytes) and other non-UTF-8 text (Latin-1, ...) are
  refused with the position of the first bad byte and "save it as UTF-8";
- a duplicate key in any mapping is refused (YAML forbids it; the last value used to win);
- nesting deeper than MAX_DEPTH is refused from the event stream (the parser is iterative),
  before PyYAML's recursive composer could run out of stack.

Every refusal is a JobError naming the file and, where there is one, the line and column.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

import yaml

from worker.errors import JobError

MAX_JOB_BYTES = 4 << 20  # 4 MiB: a job file is a page of settings
MAX_DEPTH = 64  # the job's deepest real nesting is 4 levels


def read_text(path: Path) -> str:
    """The text of the job file at `path`; JobError naming it when it cannot be a job file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise JobError(f"{path}: job file not found; check the path") from None
    except OSError as err:
        raise JobError(f"{path}: cannot read the job file ({err.strerror or err})") from None
    if stat.S_ISDIR(info.st_mode):
        raise JobError(f"{path}: is a folder, not a job file; give the job's .yaml file")
    if not stat.S_ISREG(info.st_mode):
        raise JobError(
            f"{path}: not a regular file (a device, FIFO or socket); give the job's .yaml file"
        )
    if info.st_size > MAX_JOB_BYTES:
        raise JobError(
            f"{path}: {info.st_size} bytes, more than a job file can be "
            f"({MAX_JOB_BYTES >> 20} MiB); give the job's .yaml file"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JOB_BYTES + 1)
    except OSError as err:
        raise JobError(f"{path}: cannot read the job file ({err.strerror or err})") from None
    if len(data) > MAX_JOB_BYTES:
        raise JobError(f"{path}: larger than {MAX_JOB_BYTES >> 20} MiB; not a job file")
    return decode(data, path)


def _position(data: bytes, offset: int) -> tuple[int, int]:
    before = data[:offset]
    line = before.count(b"\n") + 1
    column = offset - (before.rfind(b"\n") + 1) + 1
    return line, column


def decode(data: bytes, path: Path | str) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is allowed); JobError with the position otherwise."""
    for bom, name in (
        (codecs.BOM_UTF32_LE, "UTF-32"),
        (codecs.BOM_UTF32_BE, "UTF-32"),
        (codecs.BOM_UTF16_LE, "UTF-16"),
        (codecs.BOM_UTF16_BE, "UTF-16"),
    ):
        if data.startswith(bom):
            raise JobError(
                f"{path}: the job file is saved as {name}; save it as UTF-8 (in most editors: "
                "File > Save with encoding > UTF-8)"
            )
    if b"\x00" in data:
        line, column = _position(data, data.index(b"\x00"))
        raise JobError(
            f"{path}: a NUL byte at line {line}, column {column} (UTF-16 without a byte-order "
            "mark, or not a text file); save it as UTF-8"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        offset = err.start + (3 if data.startswith(codecs.BOM_UTF8) else 0)
        line, column = _position(data, offset)
        raise JobError(
            f"{path}: byte 0x{data[offset]:02x} at line {line}, column {column} is not UTF-8 "
            "(Latin-1 or Windows-1252 text?); save the file as UTF-8"
        ) from None


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with a key given twice."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # SafeLoader itself refuses an unhashable key, with its position
            if key in seen:
                first = seen[key]
                mark = key_node.start_mark
                raise JobError(
                    f"duplicate key {key!r} at line {mark.line + 1}, column {mark.column + 1} "
                    f"(first at line {first.line + 1}); YAML forbids a key twice in one "
                    "mapping: keep one"
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _check_depth(text: str, source: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise JobError(
                    f"{source}: nested more than {MAX_DEPTH} levels deep at line "
                    f"{mark.line + 1}, column {mark.column + 1}; a job is a few levels of "
                    "settings: check the file"
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def parse(text: str, source: str) -> object:
    """The YAML document in `text` (safe types only); JobError naming `source` and the
    position for malformed YAML, a duplicate key or too deep a nesting."""
    try:
        _check_depth(text, source)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except JobError as err:
        if str(err).startswith(source):
            raise
        raise JobError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None)
        detail = f" ({problem})" if problem else ""
        raise JobError(
            f"{source}: malformed YAML{where}{detail}; fix the syntax and run again"
        ) from None
    except RecursionError:  # pragma: no cover - _check_depth refuses such nesting first
        raise JobError(f"{source}: nested too deeply; check the file") from None
