"""Adaptation runs (paper sections 3.3, 4.2-4.3; docs/method.md §3, §5).

- `ods`: ODS / OIS F-score (pure numpy);
- `segmenters`: UNet and SegFormer behind one `Segmenter`, encoder features as an extractor;
- `train`: image / mask loading, seeded and resumable training;
- `run`: the stage (`build_masked_sets`, `run_adaptation`);
- `evaluate_cli`: `python -m worker evaluate` (no torch import).

Nothing is imported here, so `import worker.adapt.ods` stays light.
"""
