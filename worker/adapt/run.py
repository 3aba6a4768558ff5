"""The adaptation stage (paper sections 3.3, 4.2-4.3, appendix C; docs/method.md §5).

Every architecture of adaptation.models (`unet`, `unetplusplus`, `segformer`, `upernet`; the
first is the baseline) trains the same models (`worker.adapt.plan`: M, M{q}, M_B{q}) on the
same images with the same settings, once per seed of adaptation.seeds (job.seed,
job.seed + 1, ...), and every model of every architecture and seed is scored on the same
images (`worker.adapt.score`). Images selected for training by any q are excluded from a
secondary's evaluation, and so are images without an I_dist (skipped by the distance stage);
every model is also scored on the held-out split alone (`held_out`: chosen before selection,
never selected; method.md §5.7).
Every secondary with masks is scored (`select: false` sets included: the paper's blind sets).

The block is returned as `worker.adapt.block.Adaptation`, with `summary` from
`worker.adapt.summary`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from worker.adapt import summary as summ
from worker.adapt.block import (
    Adaptation,
    ArchitectureBlock,
    DatasetRole,
    HeldOut,
    HeldOutSplit,
    SelectionIds,
    TrainedModel,
)
from worker.adapt.masks import MaskedSet, primary_masks_error
from worker.adapt.names import BASELINE
from worker.adapt.noise import bootstrap_draws
from worker.adapt.plan import PlannedModel, check_masks, fingerprint, plan_models, train_ids
from worker.adapt.score import EvaluatedSet, Runs, evaluate_set, score, trivial_baseline
from worker.adapt.segmenters import TrainedEncoderExtractor, build_segmenter, save_segmenter
from worker.adapt.train import load_pair, resolve_device, train_segmenter
from worker.adapt.verdicts import VERDICT_RULE
from worker.errors import JobError
from worker.sources import is_s3

LOGGER = logging.getLogger("worker")

EXAMPLES_PER_DATASET = 4  # farthest images shown in the prediction grid (fig. 8)
UNET_WIDTH = 16


def seeds_of(job) -> list[int]:
    """The seeds every model trains with: job.seed, job.seed + 1, ... (adaptation.seeds)."""
    return [job.seed + k for k in range(job.adaptation.seeds)]


def _resume_root(job, train_dir: str | Path | None) -> Path | None:
    if train_dir is not None:
        return Path(train_dir)
    if job.cache.enabled and job.cache.dir and not is_s3(job.cache.dir):
        return Path(job.resolve(job.cache.dir)) / "adaptation"
    return None


def _train_data(job, models: list[PlannedModel]) -> dict[tuple[str, str], tuple | None]:
    """Every training pair, loaded once as uint8 tensors ((3, S, S) image, (1, S, S) 0/1
    mask) and shared by every architecture and seed; None for an undecodable image."""
    cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor] | None] = {}
    for m in models:
        for s in m.samples:
            key = (s.dataset, s.id)
            if key not in cache:
                pair = load_pair(s, job.adaptation.image_size, job.storage)
                cache[key] = None
                if pair is not None:
                    x = torch.from_numpy(pair[0]).permute(2, 0, 1).contiguous()
                    cache[key] = (x, torch.from_numpy(pair[1].astype(np.uint8)).unsqueeze(0))
    return cache


def _name(job, arch, seed: int, model: str) -> str:
    """File / log name of a trained model: M for the baseline architecture and first seed,
    else prefixed by the architecture label and suffixed by the seed."""
    cfg = job.adaptation
    name = model if arch.label == cfg.architectures[0].label else f"{arch.label}-{model}"
    return name if seed == job.seed else f"{name}-seed{seed}"


def _train_all(
    job,
    arch,
    seed: int,
    models: list[PlannedModel],
    resume_root,
    progress,
    unet_width: int,
    cache: dict,
    field_name: str,
) -> None:
    cfg = job.adaptation
    primary_name = job.datasets.primary.name
    for m in models:
        used = [s for s in m.samples if cache[(s.dataset, s.id)] is not None]
        if not used:
            raise JobError(f"adaptation: model {m.name} has no usable training images")
        x = torch.stack([cache[(s.dataset, s.id)][0] for s in used])
        y = torch.stack([cache[(s.dataset, s.id)][1] for s in used])
        m.train_ids = train_ids(used, primary_name)
        fp = fingerprint(job, arch, used, unet_width, seed)
        name = _name(job, arch, seed, m.name)
        ckpt_dir = resume_root / f"{name}-{fp}" if resume_root is not None else None
        m.segmenter = build_segmenter(
            arch.name,
            arch.checkpoint,
            encoder=arch.encoder,
            width=unet_width,
            seed=seed,
            field=field_name,
        )
        tag = name.replace("-", " ")

        def _report(epoch: int, epochs: int, loss: float, tag: str = tag) -> None:
            if progress is not None:
                progress(f"train {tag}", epoch, epochs)
            LOGGER.debug("adaptation: %s epoch %d/%d loss %.4f", tag, epoch, epochs, loss)

        m.history = train_segmenter(
            m.segmenter,
            x,
            y,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=seed,
            checkpoint_dir=ckpt_dir,
            fingerprint=fp,
            progress=_report,
            device=resolve_device(job.compute.device),
        )
        LOGGER.info(
            "adaptation: trained %s on %d images in %.1fs (final loss %.4f)",
            tag,
            len(used),
            m.history["seconds"],
            m.history["losses"][-1] if m.history["losses"] else float("nan"),
        )


def _scoring_plan(job, datasets, plan: list[PlannedModel], i_dist_scaled) -> list:
    """(set, ids to score) per secondary with masks: images any model trained on (any q) are
    left out of every model's evaluation, and so are images without an I_dist."""
    selected_by_set: dict[str, set[str]] = {}
    for m in plan:
        for s in m.samples:
            if not s.empty_mask:
                selected_by_set.setdefault(s.dataset, set()).add(s.id)
    out: list[tuple[MaskedSet, list[str]]] = []
    for ds_cfg in job.datasets.secondary:
        ds = datasets.get(ds_cfg.name)
        if ds is None or not ds.has_masks:
            continue
        scaled = i_dist_scaled.get(ds.name)
        exclude = selected_by_set.get(ds.name, set())
        out.append(
            (ds, [i for i in ds.ids if i not in exclude and (scaled is None or i in scaled)])
        )
    return out


def held_out_sets(
    evaluated: list[EvaluatedSet], held_out: dict[str, list[str]]
) -> list[EvaluatedSet]:
    """Each scored secondary's held-out split (method.md §5.7), cut from its evaluation: the
    split is never selected, so every model is scored on it already; ids sorted by I_dist."""
    out = []
    for es in evaluated:
        wanted = set(held_out.get(es.ds.name, ()))
        rows = np.array([k for k, i in enumerate(es.kept) if i in wanted], dtype=np.int64)
        if not len(rows):
            continue
        if es.d is not None:
            rows = rows[np.argsort(es.d[rows], kind="stable")]
        out.append(
            EvaluatedSet(
                es.ds,
                {key: c[rows] for key, c in es.counts.items()},
                es.pixels[rows],
                [es.kept[k] for k in rows],
                None if es.x is None else es.x[rows],
                None if es.d is None else es.d[rows],
            )
        )
    return out


def _held_out_block(job, held: list[EvaluatedSet], results) -> HeldOut:
    lo, hi = job.selection.band
    return HeldOut(
        fraction=job.adaptation.held_out,
        splits=[
            HeldOutSplit(
                dataset=es.ds.name,
                ids=es.kept,
                far_count=0 if es.x is None else int(((es.x >= lo) & (es.x <= hi)).sum()),
                i_dist_scaled_max=None if es.x is None else float(es.x.max()),
            )
            for es in held
        ],
        results=results,
    )


def _roles(job, datasets, selections_by_dataset, plan: list[PlannedModel]) -> list[DatasetRole]:
    roles = []
    for ds_cfg in job.datasets.secondary:
        ds = datasets.get(ds_cfg.name)
        scored = ds is not None and ds.has_masks
        selections = None
        if ds_cfg.select and scored:
            chosen = selections_by_dataset.get(ds_cfg.name) or {}
            selections = [
                SelectionIds(q=m.q, ids=list(chosen.get(m.q) or []))
                for m in plan
                if m.q > 0 and not m.negatives
            ]
        roles.append(
            DatasetRole(
                name=ds_cfg.name,
                role="selected" if ds_cfg.select else "blind",
                scored=scored,
                selections=selections,
            )
        )
    return roles


def _trained(m: PlannedModel) -> TrainedModel:
    losses = m.history.get("losses") or []
    return TrainedModel(
        name=m.name,
        q=m.q,
        negatives=m.negatives,
        train_ids=m.train_ids,
        training_seconds=float(m.history.get("seconds", 0.0)),
        final_loss=float(losses[-1]) if losses else None,
    )


def run_adaptation(
    job,
    datasets: dict[str, MaskedSet],
    selections_by_dataset: dict[str, dict[int, list[str]]],
    i_dist_scaled: dict[str, dict[str, float]],
    out_dir: str | Path,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    i_dist: dict[str, dict[str, float]] | None = None,
    train_dir: str | Path | None = None,
    unet_width: int = UNET_WIDTH,
    held_out: dict[str, list[str]] | None = None,
) -> tuple[Adaptation, dict]:
    """Train M, M{q} and M_B{q} for every architecture and seed; score them on every
    secondary with masks.

    `datasets`: name -> MaskedSet (see `build_masked_sets`), the primary included.
    `selections_by_dataset[name][q]`: the ids selected for training from secondary `name`.
    `i_dist_scaled[name]`: {id: min-max scaled I_dist}; `i_dist[name]` (optional): raw I_dist,
    used for the I_dist mean / std of the splits (scaled values when absent).
    `out_dir`: model checkpoints go to out_dir/checkpoints/<model>.pt (baseline architecture,
    first seed), <label>-<model>.pt (the other architectures) and ...-seed<N>.pt (the other
    seeds) when output.save_checkpoints. `train_dir`: where per-epoch resume checkpoints live
    (default: <cache.dir>/adaptation for a local cache; none otherwise). `unet_width`: channels
    of the UNet's first scale (architecture 'unet' only). `progress(stage, done, total)` is
    called per epoch and per evaluation chunk. `held_out[name]`: the ids of the secondary's
    held-out split (chosen before selection, never selected): every model is also scored on it
    alone (`held_out` block).

    Returns (report.json's `adaptation` block, extras for the figures: {"adaptation":
    {model_order, curves, examples, histories, seconds, architectures: {label: {model_order,
    histories}}}, "trained_extractor": TrainedEncoderExtractor of the baseline M or None}).
    Figures and per-image results show the first seed.
    """
    t0 = time.perf_counter()
    cfg = job.adaptation
    archs = cfg.architectures
    seeds = seeds_of(job)
    primary_name = job.datasets.primary.name
    primary = datasets.get(primary_name)
    if primary is None or not primary.has_masks:
        raise primary_masks_error(primary_name)
    plan = plan_models(job, datasets, selections_by_dataset, primary)
    to_score = _scoring_plan(job, datasets, plan, i_dist_scaled)
    check_masks(
        [s for m in plan for s in m.samples] + [s for ds, ids in to_score for s in ds.samples(ids)]
    )

    cache = _train_data(job, plan)
    resume_root = _resume_root(job, train_dir)
    runs: Runs = {}
    for k, arch in enumerate(archs):
        field_name = "adaptation" if cfg.models is None else f"adaptation.models[{k}]"
        for seed in seeds:
            models = [m.fresh() for m in plan]
            _train_all(
                job, arch, seed, models, resume_root, progress, unet_width, cache, field_name
            )
            runs[(arch.label, seed)] = models
    baseline = archs[0].label

    evaluated: list[EvaluatedSet] = []
    curves, examples = {}, {}
    for ds, ids in to_score:
        scaled = i_dist_scaled.get(ds.name)
        far = sorted(ids, key=lambda i: -scaled[i])[:EXAMPLES_PER_DATASET] if scaled else []
        counts, pixels, kept, ex = evaluate_set(job, ds, ids, runs, set(far), progress)
        ex.sort(key=lambda e: -scaled[e["id"]] if scaled else 0.0)
        examples[ds.name] = ex
        x = np.array([scaled[i] for i in kept], dtype=np.float64) if scaled else None
        raw = (i_dist or {}).get(ds.name)
        if raw and all(i in raw for i in kept):
            d = np.array([raw[i] for i in kept], dtype=np.float64)
        else:
            d = x
        curves[ds.name] = {"ids": kept, "i_dist_scaled": None if x is None else x.tolist()}
        evaluated.append(EvaluatedSet(ds, counts, pixels, kept, x, d))

    held = held_out_sets(evaluated, held_out or {})
    blocks = []
    for arch in archs:
        per_seed = []
        for seed in seeds:
            results, splits = score(arch.label, seed, runs[(arch.label, seed)], evaluated)
            per_seed += summ.seed_scores(seed, results)
            if seed == seeds[0]:
                first_results, first_splits = results, splits
        models = runs[(arch.label, seeds[0])]
        held_results = score(arch.label, seeds[0], models, held)[0] if held else []
        blocks.append(
            ArchitectureBlock(
                label=arch.label,
                name=arch.name,
                checkpoint=arch.checkpoint,
                encoder=arch.encoder,
                parameters=models[0].segmenter.parameters_count,
                models=[_trained(m) for m in models],
                results=first_results,
                splits=first_splits,
                per_seed=per_seed,
                over_seeds=summ.over_seeds(per_seed),
                held_out_results=held_results,
            )
        )
    baselines = [
        trivial_baseline(es.ds.name, es.counts[(baseline, seeds[0], BASELINE)], es.pixels)
        for es in evaluated
    ]
    draws = {}
    if len(archs) > 1:
        adapted = [m.name for m in plan if m.q > 0 and not m.negatives]
        draws = bootstrap_draws(
            {(a, s, m, es.ds.name): c for es in evaluated for (a, s, m), c in es.counts.items()},
            {es.ds.name: es.x for es in evaluated},
            [a.label for a in archs],
            seeds,
            [b.dataset for b in baselines if b.positive_pixels > 0],
            adapted[-1] if adapted else None,
            seed=job.seed,
        )

    if job.output.save_checkpoints:
        for arch in archs:
            for seed in seeds:
                for m in runs[(arch.label, seed)]:
                    name = _name(job, arch, seed, m.name)
                    save_segmenter(m.segmenter, Path(out_dir) / "checkpoints" / f"{name}.pt")

    first = blocks[0]
    adaptation = Adaptation(
        model=archs[0].name,
        checkpoint=archs[0].checkpoint,
        baseline_architecture=baseline,
        selection=cfg.selection,
        epochs=cfg.epochs,
        image_size=cfg.image_size,
        verdict_rule=VERDICT_RULE,
        datasets=_roles(job, datasets, selections_by_dataset, plan),
        models=first.models,
        results=first.results,
        splits=first.splits,
        architectures=blocks,
        summary=summ.summarise(blocks, baselines, draws, cfg.choose_by),
        seeds=seeds,
        baselines=baselines,
        held_out=_held_out_block(job, held, blocks[0].held_out_results) if held else None,
    )
    first_runs = {a.label: runs[(a.label, seeds[0])] for a in archs}
    extractor = None
    if cfg.features_from_trained:
        extractor = TrainedEncoderExtractor(
            first_runs[baseline][0].segmenter,
            cfg.image_size,
            label="M",
            batch_size=cfg.batch_size,
        )
    extras = {
        "adaptation": {
            "model_order": [m.name for m in first_runs[baseline]],
            "curves": curves,
            "examples": examples,
            "histories": {m.name: m.history.get("losses", []) for m in first_runs[baseline]},
            "architectures": {
                a: {
                    "model_order": [m.name for m in ms],
                    "histories": {m.name: m.history.get("losses", []) for m in ms},
                }
                for a, ms in first_runs.items()
            },
            "seconds": time.perf_counter() - t0,
        },
        "trained_extractor": extractor,
    }
    return adaptation, extras
