"""What the report stage draws beyond report.json, as typed values.

- `RenderInputs`: handed by the pipeline to `render_outputs`: the 2-D points of the joint PCA,
  where each image lives (to show thumbnails), the adaptation stage's pictures and curves;
- `AdaptationFigureData`: the adaptation stage's figure data (image ids with their scaled
  I_dist, example predictions), built once from `run_adaptation`'s extras;
- `FigureData`: the points and adaptation data the figure modules draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from worker.analysis import ScatterPoints
    from worker.job import StorageConfig
    from worker.sources.samples import Sample


@dataclass(frozen=True)
class CurveIds:
    """The evaluated images of one secondary, in evaluation order, with their scaled I_dist."""

    ids: list[str]
    i_dist_scaled: list[float] | None

    def scaled(self) -> dict[str, float]:
        """Image id -> scaled I_dist (empty without distances)."""
        if self.i_dist_scaled is None:
            return {}
        return dict(zip(self.ids, self.i_dist_scaled, strict=True))


@dataclass(frozen=True)
class PredictionExample:
    """One far image of a secondary: its pixels, mask and each model's probability map."""

    id: str
    image: np.ndarray
    mask: np.ndarray
    predictions: dict[str, np.ndarray]


@dataclass(frozen=True)
class AdaptationFigureData:
    """The adaptation stage's figure data: model order, per-secondary curves and examples."""

    model_order: list[str] = field(default_factory=list)
    curves: dict[str, CurveIds] = field(default_factory=dict)
    examples: dict[str, list[PredictionExample]] = field(default_factory=dict)

    @classmethod
    def from_extras(cls, extras: dict | None) -> AdaptationFigureData:
        """From worker.adapt.run.run_adaptation's extras (its "adaptation" entry, or that entry)."""
        data = extras or {}
        data = data.get("adaptation", data)
        return cls(
            model_order=list(data.get("model_order") or []),
            curves={
                name: CurveIds(list(c.get("ids") or []), c.get("i_dist_scaled"))
                for name, c in (data.get("curves") or {}).items()
            },
            examples={
                name: [
                    PredictionExample(e["id"], e["image"], e["mask"], dict(e["predictions"]))
                    for e in rows
                ]
                for name, rows in (data.get("examples") or {}).items()
            },
        )


@dataclass
class RenderInputs:
    """What the figures and report.html need beyond report.json."""

    scatter: ScatterPoints | None = None  # 2-D PCA points of the first extractor
    image_uris: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset -> id -> uri
    storage: StorageConfig | None = None  # for s3:// images
    adaptation: AdaptationFigureData | None = None
    #: dataset -> id -> Sample, for ids that are video frames or crops
    samples: dict[str, dict[str, Sample]] = field(default_factory=dict)


@dataclass
class FigureData:
    """What the figure modules draw beyond the typed Report."""

    scatter: ScatterPoints | None = None
    adaptation: AdaptationFigureData | None = None
