"""Shared pieces of the typed report: the schema version, the `Result` base, `optional_block`,
the `Count`/`ByName` aliases and the small blocks (histogram, spread, cover, summary, splits).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from worker.base import Model

SCHEMA_VERSION = "1.3.0"


def _is_none(value: Any) -> bool:
    return value is None


def optional_block(description: str) -> Any:
    """A field left out of report.json when None (a block the job did not ask for)."""
    return Field(default=None, exclude_if=_is_none, description=description)


class Result(Model):
    """Base of every report block: unknown keys and non-finite floats are refused."""


Count = Annotated[int, Field(ge=0)]
ByName = dict[str, float | None]


# --------------------------------------------------------------------------- small blocks


class Histogram(Result):
    """Counts of values in equal-width bins."""

    edges: list[float] = Field(description="Bin edges, ascending (len(counts) + 1 values).")
    counts: list[Count] = Field(description="Number of values in each bin (>= 0).")


class Spread(Result):
    """Diversity (method.md §2.1): each sample's distance to its nearest other sample."""

    mean: float | None = Field(description="Mean nearest-other distance (distance units, >= 0).")
    min: float | None = Field(description="Smallest nearest-other distance (>= 0).")
    max: float | None = Field(description="Largest nearest-other distance (>= 0).")
    histogram: Histogram | None = Field(
        default=None, description="Histogram of the nearest-other distances."
    )


class Cover(Result):
    """Coverage (method.md §2.2): each input sample's distance to its nearest output sample."""

    mean: float | None = Field(description="Mean distance to the nearest output (>= 0).")
    max: float | None = Field(
        description="Largest distance to the nearest output: the k-center covering radius (>= 0)."
    )
    histogram: Histogram | None = optional_block(
        "Histogram of the distances to the nearest output (selections only)."
    )


class Summary(Result):
    """Summary statistics of a sample (std with ddof = 0; percentiles numpy 'linear')."""

    mean: float | None = Field(description="Mean.")
    std: float | None = Field(description="Population standard deviation (ddof = 0, >= 0).")
    min: float | None = Field(description="Minimum.")
    max: float | None = Field(description="Maximum.")
    p50: float | None = Field(description="Median (50th percentile, linear interpolation).")
    p90: float | None = Field(description="90th percentile (linear interpolation).")


class Split(Result):
    """One part of S sorted by I_dist (method.md §1.8, paper table 3)."""

    mean: float | None = Field(description="Mean I_dist of the part (null when empty).")
    std: float | None = Field(description="Population std of I_dist in the part (ddof = 0).")
    count: Count = Field(description="Number of images in the part.")


class Splits(Result):
    """S sorted by I_dist (ascending) and cut into equal parts with numpy.array_split."""

    halves: list[Split] = Field(description="Two parts: closest half first.")
    thirds: list[Split] = Field(description="Three parts: closest third first.")
