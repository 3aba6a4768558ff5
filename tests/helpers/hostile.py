"""Shared by the hostile suites: a small job that runs cleanly, the CLI in this process, and
the three assertions every refused case makes (exit code, the message's subject, an output
folder unchanged from before the run)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

SIZE = 32


def png(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    """Encoded image bytes of `arr` (PNG unless `fmt` says otherwise)."""
    buf = io.BytesIO()
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(buf, format=fmt)
    return buf.getvalue()


def images(folder: Path, count: int, seed: int, shift: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        arr = np.clip(rng.normal(120 + shift, 40, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        (folder / f"img_{i:02d}.png").write_bytes(png(arr))


def image_job(folder: Path) -> dict:
    """hog on 12 + 10 small images; fast and valid. Cases break one thing."""
    images(folder / "P", 12, 0)
    images(folder / "S", 10, 1, shift=40)
    return {
        "seed": 0,
        "model": {"name": "hog", "image_size": 32},
        "pca": {"dims": 4, "sweep": [2, 4]},
        "datasets": {
            "primary": {"name": "P", "path": "P"},
            "secondary": [{"name": "S", "path": "S"}],
        },
        "metrics": {"null_repeats": 2, "mmd_permutations": 10},
        "selection": {"counts": [1, 2]},
        "cache": {"enabled": False},
        "max_skipped_fraction": 0.3,
    }


def run_cli(
    folder: Path,
    job: dict | str,
    *extra: str,
    command: str = "run",
    out: Path | None = None,
    no_out: bool = False,
) -> subprocess.CompletedProcess:
    """`python -m worker COMMAND job.yaml ...` in this process: exit code, stdout, stderr.

    `run` gets `--out folder/out` (or `out`) unless no_out (then output.dir applies)."""
    from worker.__main__ import main

    path = folder / "job.yaml"
    path.write_text(job if isinstance(job, str) else yaml.safe_dump(job), encoding="utf-8")
    args = [command, str(path)]
    if command == "run":
        args += [] if no_out else ["--out", str(out or folder / "out")]
        args += ["--quiet"]
    args += list(extra)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(args)
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def seed_output(out: Path) -> dict:
    """An output folder holding a previous run's files; returns its snapshot."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"previous": True}))
    (out / "report.pdf").write_bytes(b"%PDF-previous")
    return snapshot(out)


def snapshot(folder: Path) -> dict:
    """{relative path: sha256} of every entry under folder (folders map to None)."""
    if not folder.exists():
        return {}
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def refused(res: subprocess.CompletedProcess, out: Path, before: dict, *subjects: str) -> None:
    """Exit 2, no traceback, every subject named in the message, the output folder as before."""
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    for s in subjects:
        assert s in res.stderr, (s, res.stderr)
    assert snapshot(out) == before, "the output folder changed on a refused run"


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def precomputed_job(folder: Path, job: dict, s: np.ndarray | bytes, name: str = "S.npy") -> dict:
    """`job` switched to precomputed embeddings: P.npy (10 x 6, seed 0) and the secondary
    `name` written from `s` (an array, .npz as {"vectors": s}, or raw bytes as they are)."""
    np.save(folder / "P.npy", np.random.default_rng(0).normal(size=(10, 6)))
    target = folder / name
    if isinstance(s, bytes):
        target.write_bytes(s)
    elif name.endswith(".npz"):
        np.savez(target, **{"vectors": s})
    else:
        np.save(target, s)
    job["model"] = {"name": "precomputed"}
    job["datasets"]["primary"] = {"name": "P", "embeddings": "P.npy"}
    job["datasets"]["secondary"] = [{"name": "S", "embeddings": name}]
    return job
