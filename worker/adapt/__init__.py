"""Adaptation runs (paper sections 3.3, 4.2-4.3; docs/method.md §3, §5).

- `names`: the models' names (M, M{q}, M_B{q}), one owner;
- `ods`: ODS / OIS F-score (pure numpy);
- `segmenters`: UNet, UNet++, SegFormer, UperNet behind one `Segmenter`;
- `masks`: images paired with masks, the pre-flight mask check (no torch);
- `train`: image / mask loading, seeded and resumable training;
- `plan`: which models train on which images; `score`: counts, ODS, verdicts per result;
- `verdicts`: the slope rule and the verdicts; `summary`: the choice across architectures,
  `noise`: its paired bootstrap;
- `block`: report.json's `adaptation` block (pydantic);
- `run`: the stage (`run_adaptation`);
- `evaluate_cli`: `python -m worker evaluate` (no torch import).

Nothing is imported here, so `import worker.adapt.ods` stays light.
"""
