"""The embed stage (moved out of worker.pipeline): every dataset of the job listed, checked and
embedded by one model (locally or on Ray), P first, then every S in job order.

worker.pipeline re-exports every name here and calls `embed_all` through its own namespace.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.embeddings import EmbeddedSet, embed_items, load_precomputed
from worker.errors import JobError
from worker.interrupt import check as check_interrupt
from worker.job import DatasetConfig, Job, ModelConfig
from worker.labelled import Labelled, check_labelled_width, embed_labelled
from worker.results import (
    ModelInfo,
)
from worker.sources import IMAGE_EXTENSIONS, is_s3, policy_for
from worker.sources.samples import (
    VIDEO_EXTENSIONS,
    check_no_videos_for_adaptation,
    expand_dataset,
    list_dataset,
    samples_of,
)


def _check_location(job: Job, ds: DatasetConfig, key: str, location: str) -> str:
    resolved = job.resolve(location)
    if not job.allow_outside_paths and not is_s3(resolved):
        real = Path(resolved).resolve()
        base = job.base_dir.resolve()
        if base != real and base not in real.parents:
            raise JobError(
                f"datasets.{ds.name}.{key}: {location} resolves outside the job folder "
                f"({real}); move the data under {base} or set allow_outside_paths: true"
            )
    return resolved


def dataset_items(job: Job, ds: DatasetConfig, extractor) -> list[tuple[str, Any]]:
    """A dataset as [(name, what to embed)]: a precomputed EmbeddedSet, or the list of images,
    video frames and object crops to embed (worker/sources/samples.py). `samples: both`
    gives two entries, `<name>` (images and frames) and `<name>/crops`."""
    storage = job.storage
    if ds.embeddings is not None:
        uri = _check_location(job, ds, "embeddings", ds.embeddings)
        return [(ds.name, load_precomputed(ds.name, uri, storage))]
    root = _check_location(job, ds, "path", ds.path)
    if extractor is None:
        raise JobError(
            f"datasets.{ds.name}: model 'precomputed' needs 'embeddings', but this dataset "
            "gives 'path' (images); name an extractor in model.name (e.g. hog) instead"
        )
    listing = list_dataset(root, storage, policy=policy_for(job))
    if not listing:
        raise JobError(
            f"datasets.{ds.name}.path: no images found in {root}, and no videos (looked "
            f"for {' '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)}, recursively)"
        )
    check_no_videos_for_adaptation(job, ds, listing)
    boxes = _check_location(job, ds, "boxes", ds.boxes) if ds.boxes else None
    return expand_dataset(
        ds.name, ds, listing, boxes_uri=boxes, storage=storage, policy=policy_for(job)
    )


def load_dataset(
    job: Job, ds: DatasetConfig, extractor, cache, progress, batch_size: int = 32
) -> list[EmbeddedSet]:
    """One dataset's features (two with samples: both): a precomputed array, or its images,
    frames or crops embedded (cached)."""
    out = []
    for name, items in dataset_items(job, ds, extractor):
        if isinstance(items, EmbeddedSet):
            out.append(items)
            continue
        out.append(embed_listing(job, name, items, extractor, cache, progress, batch_size))
    return out


def embed_listing(
    job: Job, name: str, items: list, extractor, cache, progress, batch_size: int = 32
) -> EmbeddedSet:
    """One listing of images embedded in this process (cached), with its progress bar."""
    bar = progress(len(items), f"embed {name}")
    try:
        return embed_items(
            name,
            items,
            extractor,
            cache=cache,
            batch_size=batch_size,
            storage=job.storage,
            progress=bar.update_to,
        )
    finally:
        bar.close()


def load_datasets_ray(
    job: Job,
    configs: list[DatasetConfig],
    extractor,
    cache,
    progress,
    batch_size: int,
    listings: dict[str, list] | None = None,
) -> list[EmbeddedSet]:
    """Every dataset's features, the images of all of them embedded by one Ray Data
    pipeline (one actor pool, one model load per actor), then those of `listings` (name ->
    images). Datasets of frames or crops are embedded in this process (the Ray read stage
    reads whole files)."""
    from worker.distributed import embed_items_ray

    found = {name: v for ds in configs for name, v in dataset_items(job, ds, extractor)}
    found.update(listings or {})
    local = {n: v for n, v in found.items() if not isinstance(v, EmbeddedSet) and samples_of(v)}
    for name, items in local.items():
        found[name] = embed_items(
            name, items, extractor, cache=cache, batch_size=batch_size, storage=job.storage
        )
    images = {name: v for name, v in found.items() if not isinstance(v, EmbeddedSet)}
    if images:
        bar = progress(sum(len(v) for v in images.values()), "embed (ray)")
        try:
            embedded = embed_items_ray(
                images,
                extractor,
                cache=cache,
                storage=job.storage,
                batch_size=job.compute.batch_size or batch_size,
                num_gpus=job.compute.num_gpus_per_worker,
                num_workers=job.compute.num_workers,
                progress=bar.update_to,
            )
        finally:
            bar.close()
        found.update(embedded)
    return list(found.values())


def _check_sets(job: Job, sets: list[EmbeddedSet]) -> None:
    for ds in sets:
        if ds.count == 0:
            raise JobError(
                f"datasets.{ds.name}: no usable images (all {len(ds.skipped)} skipped: "
                f"{ds.skipped[0]['reason'] if ds.skipped else 'empty'}); check the files"
            )
        total = ds.count + len(ds.skipped)
        fraction = len(ds.skipped) / total
        if fraction > job.max_skipped_fraction:
            raise JobError(
                f"datasets.{ds.name}: {len(ds.skipped)} of {total} images could not be used "
                f"({fraction:.0%} > max_skipped_fraction {job.max_skipped_fraction:.0%}), "
                f"e.g. {ds.skipped[0]['id']}: {ds.skipped[0]['reason']}; fix the files or "
                "raise max_skipped_fraction"
            )
    widths = {ds.name: ds.vectors.shape[1] for ds in sets}
    if len(set(widths.values())) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in widths.items())
        raise JobError(
            f"datasets: feature widths differ ({detail}); every dataset must be embedded "
            "by the same model"
        )


class _Progress:
    """A tqdm bar when enabled (TTY and not --quiet), otherwise a no-op with the same calls."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="img", leave=False, file=sys.stderr)

    def update_to(self, done: int) -> None:
        check_interrupt()  # after each embedded batch: a safe point to stop at
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _local_checkpoint(job: Job, model: ModelConfig) -> ModelConfig:
    """A checkpoint that names a folder relative to the job file is resolved against it."""
    if model.checkpoint and not is_s3(model.checkpoint):
        candidate = Path(job.resolve(model.checkpoint))
        if candidate.is_dir():
            return model.model_copy(update={"checkpoint": str(candidate)})
    return model


@dataclass
class Embedded:
    """The embed stage's result for one model: P first, then every S, in job order."""

    sets: list[EmbeddedSet]
    extractor: Any  # the extractor that made the vectors (None for precomputed)
    model: ModelInfo
    #: selection.labelled's images outside every dataset, embedded by the same model
    labelled: Labelled | None = None


def embed_all(
    job: Job, model: ModelConfig, show_progress: bool, extractor=None, datasets=None
) -> Embedded:
    """Features of P and every S for one model, in job order (primary first).

    `extractor` overrides the model's own (the trained baseline's encoder); `datasets`
    limits the work to those dataset configs."""
    cache = None
    if extractor is None and model.name != "precomputed" and any(d.path for d in job.all_datasets):
        from worker.extractors import get_extractor

        cfg = _local_checkpoint(job, model)
        if job.compute.engine == "ray":  # built in the Ray actors, described once remotely
            from worker.distributed import remote_extractor

            factory = functools.partial(get_extractor, cfg)
            extractor = remote_extractor(factory, job.compute.num_gpus_per_worker)
        else:
            extractor = get_extractor(cfg)
    if extractor is not None and job.cache.enabled and job.cache.dir:
        from worker.cache import EmbeddingCache

        cache = EmbeddingCache(job.resolve(job.cache.dir), storage=job.storage)

    def progress(total: int, desc: str) -> _Progress:
        return _Progress(total, desc, show_progress)

    configs = datasets or job.all_datasets
    # model.batch_size auto: the extractor's choice (from the device's memory)
    batch = model.batch_size if model.batch_size != "auto" else None
    batch = batch or getattr(extractor, "batch_size", None) or 32
    if job.compute.engine == "ray" and extractor is not None:
        sets = load_datasets_ray(job, configs, extractor, cache, progress, batch)
    else:
        sets = [
            emb
            for ds in configs
            for emb in load_dataset(job, ds, extractor, cache, progress, batch)
        ]
    _check_sets(job, sets)
    labelled = None
    if datasets is None:  # the whole job: its labelled images too, by the same model

        def embed(name: str, items: list) -> EmbeddedSet:
            if job.compute.engine == "ray" and extractor is not None:
                found = load_datasets_ray(job, [], extractor, cache, progress, batch, {name: items})
                return found[0]
            return embed_listing(job, name, items, extractor, cache, progress, batch)

        labelled = embed_labelled(job, extractor, embed, sets, job.storage)
        if labelled is not None:
            check_labelled_width(labelled.images, sets)
    info = dict(extractor.info) if extractor is not None else {"name": "precomputed"}
    if extractor is None and model.reduce is not None:  # precomputed: projected as loaded
        from worker.reduce import reduce_sets

        with_labelled = sets + ([labelled.images] if labelled is not None else [])
        info["reduce"] = reduce_sets(with_labelled, model.reduce.dims, model.reduce.seed)
    info["feature_dim"] = int(sets[0].vectors.shape[1])
    keys = ModelInfo.model_fields
    return Embedded(sets, extractor, ModelInfo(**{k: info.get(k) for k in keys}), labelled)
