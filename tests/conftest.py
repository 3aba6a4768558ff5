"""Fixtures for every test file; the builders behind them live in tests/helpers/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.jobs import write_embedding_job
from tests.helpers.s3 import admin, aws_env, bucket, moto_endpoint

__all__ = ["admin", "aws_env", "bucket", "embedding_job", "moto_endpoint"]


@pytest.fixture
def embedding_job(tmp_path: Path):
    """A job on precomputed embeddings: P (30 x 12) and two shifted secondaries, written to a
    temp folder: (folder, job dict, {name: vectors})."""
    return write_embedding_job(tmp_path)
