"""compute.engine: ray -- the embedding and distance stages on a Ray cluster (docs/ray.md).

Imported only when a job asks for `engine: ray`; the local path never imports Ray.

- `ray_session(compute)`: connect to `compute.address` ('auto', 'ray://host:port',
  'host:port'; unset starts a private Ray on this machine), route large distance calls to
  the cluster for the duration, and disconnect afterwards if this process connected.
- Embedding (`embed_items_ray`), on Ray Data: the image list -> read, hash, cache lookup and
  decode in CPU tasks -> prepare and embed in actors (one model load per actor, with
  `num_gpus_per_worker` GPUs each) that write every new vector to the shared embedding
  cache -> the driver puts the rows back in list order. Cached images are neither decoded
  nor embedded. Code shared with the local path: `read_decoded`, `prepare_or_skip`, the
  extractors and `EmbeddingCache`.
- Distances (`RayDistanceBackend`): a `row_distance_sums` / `nearest_distances` call with
  more than `block_rows` query rows is split into row blocks, one Ray task each, against the
  whole column set; both arrays are put in the object store once (P once per pair, however
  many calls use it) and every block is centred by the call's mean, so each row's numbers
  are the local engine's. The per-row partials (I_dist, nearest distance and index, the
  coverage distances) are concatenated on the driver, where metrics reduce them as usual.
  k-center stays on the driver (it is sequential); its first pass goes through the backend.
- Failures: distance tasks are retried by Ray when their worker dies (TASK_RETRIES); Ray
  Data retries its read tasks, restarts dead actors and retries their batches (its defaults:
  max_restarts=-1, max_task_retries=-1). Results do not depend on which attempt ran.
"""

from __future__ import annotations

import functools
import logging
import math
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from worker import engine
from worker.embeddings import EmbeddedSet, prepare_or_skip, read_decoded
from worker.errors import JobError
from worker.interrupt import stoppable, wait
from worker.sources import Item

LOGGER = logging.getLogger("worker")

#: how often a task is retried when its worker process dies (node loss, OOM kill, SIGKILL)
TASK_RETRIES = 5


def import_ray():
    """The `ray` module, or a JobError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the embedding stage needs Ray Data
    except ImportError:
        raise JobError(
            "compute.engine: ray needs Ray with Ray Data; install it with "
            "pip install 'dataset-distance-worker[ray]' (or 'ray[data]'), or use engine: local"
        ) from None
    return ray


def _unwrap(err: Exception) -> Exception:
    """A task's own JobError / ValueError instead of Ray's wrapper, so messages stay ours."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, (JobError, ValueError)):
        return cause
    return err


def _get(refs):
    """ray.get(refs), with a safe point (worker.interrupt) every 0.1 s while the tasks run:
    a stop asked for by a signal does not wait for the cluster's work to end."""
    ray = import_ray()
    pending = list(refs) if isinstance(refs, list) else [refs]
    try:
        if pending:
            wait(lambda t: not ray.wait(pending, num_returns=len(pending), timeout=t)[1])
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        raise _unwrap(err) from None


# --------------------------------------------------------------------------- session


def cluster_summary() -> dict:
    """Nodes, CPUs and GPUs of the connected cluster (for report.json's run block)."""
    ray = import_ray()
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "engine": "ray",
        "nodes": len(nodes),
        "cpus": float(res.get("CPU", 0.0)),
        "gpus": float(res.get("GPU", 0.0)),
    }


#: seconds to wait for a TCP connection to compute.address before giving up
CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """JobError unless 'host:port' / 'ray://host:port' accepts a TCP connection.

    ray.init retries an unreachable GCS address for minutes; this fails in seconds with a
    message naming the field. 'auto' and unset need no probe (Ray answers those at once)."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        raise JobError(
            f"compute.address: nothing answers at {address} ({err.__class__.__name__}: "
            f"{err}); start the cluster (ray start --head) or fix compute.address"
        ) from None


@contextmanager
def ray_session(compute) -> Iterator[dict]:
    """Connect (or reuse a connection), route distance calls to Ray, then disconnect.

    Yields cluster_summary(), whose `distance_tasks` counts the tasks run. A process that
    is already connected (ray.init called by the caller, as in tests or a notebook) keeps
    its connection afterwards."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        check_reachable(compute.address)
        try:
            ray.init(
                address=compute.address,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = compute.address or "a new local cluster"
            detail = (str(err).strip().splitlines() or [""])[0][:200]
            raise JobError(
                f"compute.address: cannot connect to Ray at {where} "
                f"({err.__class__.__name__}: {detail}); "
                "start the cluster (ray start --head) or fix compute.address"
            ) from None
        started = True
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False  # we report progress
    info = cluster_summary()
    backend = RayDistanceBackend(compute.block_rows, compute.num_gpus_per_worker, stats=info)
    try:
        with engine.distance_backend(backend):
            yield info
    finally:
        backend.release()
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- distances


def _row_sums_task(rows, cols, start: int, stop: int, center, kw: dict) -> np.ndarray:
    return engine.block_row_distance_sums(rows[start:stop], cols, center, **kw)


def _nearest_task(queries, points, start: int, stop: int, center, exclude_self: bool, kw: dict):
    return engine.block_nearest_distances(
        queries[start:stop], points, center, exclude_self=exclude_self, row_offset=start, **kw
    )


def _pair_pass_task(rows, cols, start: int, stop: int, center, kw: dict):
    return engine.block_pair_pass(rows[start:stop], cols, center, row_offset=start, **kw)


@dataclass
class RayDistanceBackend:
    """engine.distance_backend target: calls with more than `block_rows` rows run as tasks.

    Each task takes one CPU (and `num_gpus` GPUs, running the engine on CUDA when > 0);
    Ray gives a CPU task one torch thread, so a cluster runs one block per core."""

    block_rows: int
    num_gpus: float = 0.0
    stats: dict = field(default_factory=dict)  # distance_tasks: tasks submitted so far
    _refs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ray = import_ray()
        self.stats.setdefault("distance_tasks", 0)
        opts = {"num_cpus": 1, "num_gpus": self.num_gpus, "max_retries": TASK_RETRIES}
        self._row_sums = ray.remote(_row_sums_task).options(name="row_distance_sums", **opts)
        self._nearest = ray.remote(_nearest_task).options(name="nearest_distances", **opts)
        self._pair = ray.remote(_pair_pass_task).options(name="pair_pass", **opts)

    def takes(self, m: int, n: int) -> bool:
        return m > self.block_rows and n > 0

    def _put(self, x: np.ndarray):
        """One object-store copy per array (by identity) for the backend's lifetime."""
        ray = import_ray()
        hit = self._refs.get(id(x))
        if hit is None or hit[0] is not x:
            hit = (x, ray.put(np.ascontiguousarray(x)))
            self._refs[id(x)] = hit
        return hit[1]

    def release(self) -> None:
        self._refs.clear()

    def _blocks(self, m: int) -> list[tuple[int, int]]:
        return [(s, min(s + self.block_rows, m)) for s in range(0, m, self.block_rows)]

    def _kw(self, memory_budget_mb: float, precision: str) -> dict:
        device = "cuda" if self.num_gpus > 0 else "cpu"
        return {"memory_budget_mb": memory_budget_mb, "precision": precision, "device": device}

    def row_distance_sums(
        self, rows, cols, *, memory_budget_mb: float, precision: str, device: str
    ) -> np.ndarray:
        """engine.row_distance_sums over row blocks: the (m,) float64 row sums."""
        a, b = engine.as_matrix(rows, "rows"), engine.as_matrix(cols, "cols")
        engine.check_pair(a, b, "rows", "cols")
        center, kw = engine.call_center(a, b), self._kw(memory_budget_mb, precision)
        ra, rb = self._put(a), self._put(b)
        refs = [self._row_sums.remote(ra, rb, s, e, center, kw) for s, e in self._blocks(len(a))]
        self.stats["distance_tasks"] += len(refs)
        return np.concatenate(_get(refs))

    def nearest_distances(
        self,
        queries,
        points,
        *,
        exclude_self: bool,
        memory_budget_mb: float,
        precision: str,
        device: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        """engine.nearest_distances over row blocks: (m,) distances and (m,) indices."""
        q, p = engine.as_matrix(queries, "queries"), engine.as_matrix(points, "points")
        engine.check_pair(q, p, "queries", "points")
        center = engine.call_center(p) if exclude_self else engine.call_center(q, p)
        kw = self._kw(memory_budget_mb, precision)
        rq, rp = self._put(q), self._put(p)
        refs = [
            self._nearest.remote(rq, rp, s, e, center, exclude_self, kw)
            for s, e in self._blocks(len(q))
        ]
        self.stats["distance_tasks"] += len(refs)
        parts = _get(refs)
        return np.concatenate([d for d, _ in parts]), np.concatenate([i for _, i in parts])

    def pair_pass(
        self,
        rows,
        cols,
        *,
        prefixes,
        nearest,
        memory_budget_mb: float,
        precision: str,
        device: str,
        exclude_self: bool = False,
    ) -> engine.PairPassResult:
        """engine.pair_pass over row blocks: every block centred by the whole call's mean.
        exclude_self (the self pass, rows is cols): block row i skips column start + i."""
        a, b = engine.as_matrix(rows, "rows"), engine.as_matrix(cols, "cols")
        engine.check_pair(a, b, "rows", "cols")
        center = engine.call_center(b) if exclude_self else engine.call_center(a, b)
        kw = {
            **self._kw(memory_budget_mb, precision),
            "prefixes": prefixes,
            "nearest": nearest,
            "exclude_self": exclude_self,
        }
        ra, rb = self._put(a), self._put(b)
        refs = [self._pair.remote(ra, rb, s, e, center, kw) for s, e in self._blocks(len(a))]
        self.stats["distance_tasks"] += len(refs)
        return engine.concat_pair_results(_get(refs))


# --------------------------------------------------------------------------- embedding


@dataclass
class RemoteExtractor:
    """An extractor that lives in Ray actors: `factory()` builds it there; the driver keeps
    only what the pipeline reads (`cache_key`, `info`), taken from one remote build."""

    factory: Callable
    cache_key: str
    info: dict
    num_workers: int | None = None


def _describe(factory: Callable) -> tuple[str, dict]:
    extractor = factory()
    return extractor.cache_key, dict(extractor.info)


def remote_extractor(factory: Callable, num_gpus: float = 0.0) -> RemoteExtractor:
    """Build the extractor once on a worker with the actors' resources, so its cache key
    (which names the dtype chosen for that device) is the one the actors will use.
    Load errors (bad checkpoint, wrong family) come back as the JobError they are."""
    ray = import_ray()
    task = ray.remote(_describe).options(num_cpus=1, num_gpus=num_gpus, name="describe_model")
    key, info = _get(task.remote(factory))
    return RemoteExtractor(factory=factory, cache_key=key, info=info)


def _as_is(extractor):
    return extractor


def _perturbed(base_factory: Callable, kind: str):
    from worker.extractors import PerturbedExtractor

    return PerturbedExtractor(base_factory(), kind)


def actor_factory(extractor) -> Callable:
    """A picklable zero-argument callable that builds `extractor` inside an actor.

    RemoteExtractor: its factory; a PerturbedExtractor around one: that factory wrapped;
    any other extractor object (the trained encoder of the adaptation stage): shipped as is."""
    from worker.extractors import PerturbedExtractor

    if isinstance(extractor, RemoteExtractor):
        return extractor.factory
    if isinstance(extractor, PerturbedExtractor) and isinstance(extractor.base, RemoteExtractor):
        return functools.partial(_perturbed, extractor.base.factory, extractor.kind)
    return functools.partial(_as_is, extractor)


@functools.lru_cache(maxsize=8)
def _worker_cache(cache_dir: str | None, storage_json: str | None):
    """One EmbeddingCache per worker process and (folder, storage settings)."""
    if cache_dir is None:
        return None
    from worker.cache import EmbeddingCache

    return EmbeddingCache(cache_dir, storage=_storage(storage_json))


def _storage(storage_json: str | None):
    from worker.job import StorageConfig

    return StorageConfig.model_validate_json(storage_json) if storage_json else None


_EMPTY = b""


def _object_column(values: list) -> np.ndarray:
    """A 1-D object array of `values` (bytes or str), which numpy would otherwise turn into
    a fixed-width string array or, for equal-length bytes, try to broadcast."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _read_decode_batch(
    batch: dict,
    *,
    key: str,
    cache_dir: str | None,
    storage_json: str | None,
    draft: int | None = None,
) -> dict:
    """Ray Data CPU stage: uri -> digest, cached vector bytes, or RGB pixels, or a skip reason."""
    cache, storage = _worker_cache(cache_dir, storage_json), _storage(storage_json)
    out: dict[str, list] = {
        k: [] for k in ("digest", "skip", "vector", "pixels", "height", "width")
    }
    for uri in batch["uri"]:
        loaded = read_decoded(Item(id=str(uri), uri=str(uri)), storage, cache, key, draft)
        img = loaded.prepared
        out["digest"].append(loaded.digest or "")
        out["skip"].append(loaded.skip or "")
        out["vector"].append(
            _EMPTY if loaded.vector is None else np.asarray(loaded.vector, "<f4").tobytes()
        )
        out["pixels"].append(_EMPTY if img is None else img.tobytes())
        out["height"].append(0 if img is None else img.height)
        out["width"].append(0 if img is None else img.width)
    result = {"row": np.asarray(batch["row"], dtype=np.int64)}
    for k in ("digest", "skip", "vector", "pixels"):
        result[k] = _object_column(out[k])
    result["height"] = np.asarray(out["height"], dtype=np.int64)
    result["width"] = np.asarray(out["width"], dtype=np.int64)
    return result


class EmbedActor:
    """Ray Data actor stage: one model load per actor; embeds the rows that the read stage
    did not find in the cache and writes their vectors to the cache."""

    def __init__(self, factory: Callable, key: str, cache_dir: str | None, storage_json):
        self.extractor = factory()
        if self.extractor.cache_key != key:
            raise JobError(
                "model: the workers built a different model than the driver described "
                f"({self.extractor.cache_key!r} != {key!r}); use one worker image everywhere"
            )
        self.key = key
        self.cache = _worker_cache(cache_dir, storage_json)

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        ex = self.extractor
        prepare = getattr(ex, "prepare", None)
        embed_prepared = getattr(ex, "embed_prepared", None)
        vectors, skips = list(batch["vector"]), list(batch["skip"])
        todo, inputs = [], []
        for i, px in enumerate(batch["pixels"]):
            if skips[i] or len(vectors[i]) or not len(px):
                continue
            size = (int(batch["width"][i]), int(batch["height"][i]))
            img = Image.frombytes("RGB", size, bytes(px))
            if prepare is None or embed_prepared is None:
                todo.append(i)
                inputs.append(img)
                continue
            prepared, skip = prepare_or_skip(prepare, img)
            if skip is not None:
                skips[i] = skip
                continue
            todo.append(i)
            inputs.append(prepared)
        if todo:
            embed = ex.embed if prepare is None or embed_prepared is None else embed_prepared
            out = np.asarray(embed(inputs), dtype=np.float32)
            if out.ndim != 2 or len(out) != len(todo):
                raise RuntimeError(
                    f"extractor returned shape {out.shape} for a batch of {len(todo)} images"
                )
            if self.cache is not None:
                self.cache.put_many([str(batch["digest"][i]) for i in todo], self.key, out)
            for i, vec in zip(todo, out, strict=True):
                vectors[i] = np.asarray(vec, "<f4").tobytes()
        return {
            "row": batch["row"],
            "digest": batch["digest"],
            "skip": _object_column(skips),
            "vector": _object_column(vectors),
        }


def default_actors(num_gpus: float) -> int:
    """Embedding actors when compute.num_workers is unset: one per `num_gpus` GPUs of the
    cluster, or (CPU only) one per two CPUs, leaving the rest to the read stage."""
    res = import_ray().cluster_resources()
    if num_gpus > 0:
        return max(1, int(res.get("GPU", 0.0) // num_gpus))
    return max(1, int(res.get("CPU", 1.0)) // 2)


def embed_items_ray(
    datasets: dict[str, list[Item]],
    extractor,
    *,
    cache=None,
    storage=None,
    batch_size: int = 32,
    num_gpus: float = 0.0,
    num_workers: int | None = None,
    progress=None,
) -> dict[str, EmbeddedSet]:
    """embed_items on Ray Data, for several datasets in one pipeline: per dataset the same
    EmbeddedSet (ids, vectors, hashes, skipped, in the order of its items), computed by
    actors and cached in `cache`'s folder or S3 prefix."""
    ray = import_ray()
    key = extractor.cache_key
    storage_json = storage.model_dump_json() if storage is not None else None
    cache_dir = cache.dir if cache is not None else None
    actors = num_workers or default_actors(num_gpus)
    uris = [it.uri for items in datasets.values() for it in items]
    rows = [{"row": i, "uri": uri} for i, uri in enumerate(uris)]
    blocks = max(1, min(math.ceil(len(rows) / batch_size), 10_000))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(
        _read_decode_batch,
        fn_kwargs={
            "key": key,
            "cache_dir": cache_dir,
            "storage_json": storage_json,
            "draft": extractor.info.get("decode_size"),  # JPEG DCT scaling, as embed_items
        },
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=1,
    )
    ds = ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs={
            "factory": actor_factory(extractor),
            "key": key,
            "cache_dir": cache_dir,
            "storage_json": storage_json,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
        num_gpus=num_gpus,
    )
    by_row: dict[int, tuple[str, str, bytes]] = {}
    try:
        for batch in stoppable(ds.iter_batches(batch_format="numpy", batch_size=None)):
            for row, digest, skip, vec in zip(
                batch["row"], batch["digest"], batch["skip"], batch["vector"], strict=True
            ):
                by_row[int(row)] = (str(digest), str(skip), bytes(vec))
            if progress is not None:
                progress(len(by_row))
    except ray.exceptions.RayTaskError as err:
        raise _unwrap(err) from None
    out, start = {}, 0
    for name, items in datasets.items():
        out[name] = _assemble(
            name, items, [by_row[start + i] for i in range(len(items))], extractor
        )
        start += len(items)
    return out


def _assemble(name: str, items: list[Item], results: list, extractor) -> EmbeddedSet:
    """One dataset's EmbeddedSet from its rows' (digest, skip reason, vector bytes)."""
    ids, uris, hashes, vectors = [], [], [], []
    skipped = [{"dataset": name, **s} for s in getattr(items, "skipped", [])]  # by the listing
    for item, (digest, skip, vec) in zip(items, results, strict=True):
        if skip:
            skipped.append({"dataset": name, "id": item.id, "reason": skip})
            continue
        ids.append(item.id)
        uris.append(item.uri)
        hashes.append(digest)
        vectors.append(np.frombuffer(vec, dtype="<f4"))
    dim = extractor.info.get("feature_dim") or 0
    matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    return EmbeddedSet(
        name=name,
        ids=ids,
        vectors=matrix,
        uris=uris,
        hashes=hashes,
        skipped=skipped,
        warnings=list(getattr(items, "warnings", [])),
    )
