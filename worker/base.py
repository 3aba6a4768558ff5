"""The package's one pydantic base class: every typed value (job config, report blocks,
adaptation rows, run comparisons) derives from `Model`, which refuses unknown keys and
non-finite floats. A model with other needs says so in a subclass's model_config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Unknown keys and NaN/infinity are refused (a typo or a broken number fails loudly)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
