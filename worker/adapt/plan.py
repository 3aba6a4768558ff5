"""Which models the adaptation trains, on which images (docs/method.md §5.1).

- `M`: the baseline, trained on P;
- `M{q}` for q in adaptation.counts (M1, M3, M7): P plus the q selected images of every
  secondary with masks and `select: true` (the ids the selection section chose);
- `M_B{q}` for q in adaptation.negatives.counts (M_B3, M_B7): the training set of the largest
  M{q} (M7 by default) plus q images with empty masks from adaptation.negatives.path (a seeded
  permutation of that folder; the smaller set is a prefix of the larger).

Names come from `worker.adapt.names`. Every architecture and seed trains the same plan.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from worker.adapt import names
from worker.adapt.masks import MaskedSet, Sample
from worker.errors import JobError
from worker.sources import list_images


@dataclass
class PlannedModel:
    """One model to train: its name, q, negatives and training samples; `segmenter`,
    `train_ids` and `history` are filled by training (one copy per architecture and seed)."""

    name: str
    q: int
    negatives: int
    samples: list[Sample]
    segmenter: object = None
    train_ids: list[str] = field(default_factory=list)
    history: dict = field(default_factory=dict)

    def fresh(self) -> PlannedModel:
        """An untrained copy with the same plan."""
        return PlannedModel(self.name, self.q, self.negatives, self.samples)


def fingerprint(job, arch, samples: list[Sample], unet_width: int, seed: int) -> str:
    """Key of a resume checkpoint: the architecture, settings, seed and training set."""
    cfg = job.adaptation
    fields = {
        "v": 1,
        "model": arch.name,
        "checkpoint": arch.checkpoint,
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": seed,
        "unet_width": unet_width,
        "samples": [[s.dataset, s.id, s.image_uri, s.mask_uri, s.empty_mask] for s in samples],
    }
    if arch.encoder is not None:  # absent otherwise, so older resume checkpoints still match
        fields["encoder"] = arch.encoder
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def train_ids(samples: list[Sample], primary: str) -> list[str]:
    """Training ids for report.json: P's ids as they are, others prefixed 'dataset/'."""
    return [s.id if s.dataset == primary else f"{s.dataset}/{s.id}" for s in samples]


def selectable(job, datasets: dict[str, MaskedSet]) -> list[str]:
    """The secondaries that give training images: `select: true` and masks."""
    return [
        ds.name
        for ds in job.datasets.secondary
        if ds.select and ds.name in datasets and datasets[ds.name].has_masks
    ]


def plan_models(job, datasets, selections, primary: MaskedSet) -> list[PlannedModel]:
    """M, M{q} and M_B{q} with their training samples (rule in the module docstring)."""
    cfg = job.adaptation
    for field_name, values in (
        ("adaptation.counts", cfg.counts),
        ("adaptation.negatives.counts", cfg.negatives.counts if cfg.negatives else []),
    ):
        if any(int(q) < 1 for q in values):
            raise JobError(f"{field_name}: every count must be a positive integer, got {values}")
    base = primary.samples()
    models = [PlannedModel(names.BASELINE, 0, 0, base)]
    for q in sorted(set(cfg.counts)):
        extra: list[Sample] = []
        for name in selectable(job, datasets):
            chosen = (selections.get(name) or {}).get(q)
            if chosen is None:
                raise JobError(
                    f"adaptation.counts: no selection of {q} images for dataset {name!r} "
                    f"(strategy {cfg.selection!r}); add {q} to selection.counts and "
                    f"{cfg.selection!r} to selection.strategy, or set select: false on {name!r}"
                )
            extra.extend(datasets[name].samples(list(chosen)))
        models.append(PlannedModel(names.adapted(q), q, 0, base + extra))
    if cfg.negatives is not None and cfg.negatives.counts:
        neg_counts = sorted(set(cfg.negatives.counts))
        root = job.resolve(cfg.negatives.path)
        items = list_images(root, job.storage)
        if len(items) < neg_counts[-1]:
            raise JobError(
                f"adaptation.negatives.path: {root} has {len(items)} images but "
                f"adaptation.negatives.counts asks for {neg_counts[-1]}; add images or lower it"
            )
        order = np.random.default_rng(job.seed).permutation(len(items))
        largest = models[-1]
        for q in neg_counts:
            negs = [
                Sample("negatives", items[k].id, items[k].uri, None, empty_mask=True)
                for k in order[:q]
            ]
            models.append(
                PlannedModel(names.with_negatives(q), largest.q, q, largest.samples + negs)
            )
    return models


def check_masks(samples: list[Sample]) -> None:
    """Every image that trains or is evaluated has a mask (checked before any training)."""
    missing = sorted({s.image_uri for s in samples if s.mask_uri is None and not s.empty_mask})
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise JobError(
            f"adaptation: {len(missing)} images have no mask with the same stem in their "
            f"dataset's masks folder: {shown}; add the masks or remove the images"
        )
