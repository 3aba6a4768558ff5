"""compute.engine: ray gives the local engine's report numbers (docs/ray.md).

A local Ray cluster (ray.init(num_cpus=2)) is started once for the module; jobs run
in-process against it, so the worker reuses the connection. Every comparison is against a
run of the same job with engine: local.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from tests.helpers.extractors import save_tiny
from worker import engine, metrics, pipeline
from worker.demo import make_demo_data
from worker.distributed import RayDistanceBackend
from worker.errors import JobError
from worker.job import parse_job

RTOL = 1e-9


#: fake credentials for the moto S3 server; set before the cluster starts, so that its
#: worker processes inherit them as pods inherit theirs
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIARAYTESTKEY000000",
    "AWS_SECRET_ACCESS_KEY": "ray-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def cluster():
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _run(root: Path, job: dict, out: str) -> dict:
    pipeline.run(parse_job(job, root), out_dir=str(root / out))
    return json.loads((root / out / "report.json").read_text())


def assert_same_numbers(a, b, path: str = "") -> int:
    """Every number in a equals b's to RTOL; every other value equal. Returns numbers seen."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        return sum(assert_same_numbers(a[k], b[k], f"{path}.{k}") for k in a)
    if isinstance(a, list):
        assert len(a) == len(b), path
        pairs = enumerate(zip(a, b, strict=True))
        return sum(assert_same_numbers(x, y, f"{path}[{i}]") for i, (x, y) in pairs)
    if isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=RTOL, abs=1e-12), path
        return 1
    assert a == b, path
    return 0


def compare_reports(local: dict, remote: dict) -> int:
    assert local["run"]["engine"] == {"engine": "local"}
    assert remote["run"]["engine"]["engine"] == "ray"
    assert remote["run"]["engine"]["cpus"] == 2.0
    assert remote["run"]["engine"]["distance_tasks"] > 0
    local, remote = dict(local), dict(remote)
    local.pop("run"), remote.pop("run")
    seen = assert_same_numbers(local, remote)
    assert seen > 100  # the comparison really walked the numbers
    return seen


def _ray_compute(block_rows: int, **extra) -> dict:
    return {"engine": "ray", "block_rows": block_rows, **extra}


def test_embeddings_job_equals_local(cluster, embedding_job):
    root, job, _ = embedding_job
    local = _run(root, job, "out_local")
    job["compute"] = _ray_compute(7)  # P (30 rows) and S (20, 25) split into 3-5 blocks
    remote = _run(root, job, "out_ray")
    compare_reports(local, remote)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray_images")
    make_demo_data(root / "data", seed=3, per_set=10)
    (root / "data/S1/images/zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return root


def _image_job(model: dict, cache: str) -> dict:
    return {
        "version": 1,
        "seed": 0,
        "model": model,
        "pca": {"dims": 4, "sweep": [2, 4]},
        "datasets": {
            "primary": {"name": "P", "path": "data/P/images"},
            "secondary": [
                {"name": "S1", "path": "data/S1/images"},
                {"name": "S2", "path": "data/S2/images"},
            ],
        },
        "metrics": {"null_repeats": 3, "mmd_permutations": 20, "robustness": True},
        "selection": {"strategy": ["band", "kcenter"], "counts": [1, 3]},
        "cache": {"dir": cache},
        "max_skipped_fraction": 0.2,
    }


def _entries(folder: Path) -> dict[str, float]:
    """The cache's shard files and their modification times."""
    return {p: os.stat(p).st_mtime_ns for p in glob.glob(f"{folder}/**/*.f32", recursive=True)}


def _cached(folder: Path) -> int:
    from worker.cache import EmbeddingCache

    return EmbeddingCache(str(folder)).count()


def test_image_job_equals_local_and_fills_the_shared_cache(cluster, image_root):
    job = _image_job({"name": "hog", "image_size": 64}, "cache_local")
    local = _run(image_root, job, "out_local")
    job["cache"]["dir"] = "cache_ray"
    job["compute"] = _ray_compute(4, batch_size=4)
    remote = _run(image_root, job, "out_ray")
    compare_reports(local, remote)
    assert [s["id"] for s in remote["skipped"]] == ["zz_broken.png"]
    assert "robustness" in remote

    # the actors wrote every vector: 30 clean images + 3 perturbations x 20 secondary ones
    entries = _entries(image_root / "cache_ray")
    assert _cached(image_root / "cache_ray") == _cached(image_root / "cache_local") == 30 + 3 * 20
    again = _run(image_root, job, "out_ray_again")
    assert _entries(image_root / "cache_ray") == entries  # all cached: nothing rewritten
    compare_reports(local, again)


@pytest.mark.slow  # two runs of an image job, one on Ray
def test_labelled_folder_is_embedded_by_the_actors(cluster, image_root):
    # selection.labelled images outside the datasets go through the same Ray pipeline
    job = _image_job({"name": "hog", "image_size": 64}, "cache_labelled_local")
    job["metrics"]["robustness"] = False
    job["selection"]["labelled"] = ["data/S3/images"]
    local = _run(image_root, job, "out_labelled_local")
    job["cache"]["dir"] = "cache_labelled_ray"
    job["compute"] = _ray_compute(4, batch_size=4)
    remote = _run(image_root, job, "out_labelled_ray")
    compare_reports(local, remote)
    assert remote["selection"]["labelled_pool"] == 10
    assert _cached(image_root / "cache_labelled_ray") == 30 + 10


def test_transformers_model_loads_in_the_actors(cluster, image_root, tmp_path):
    ckpt = save_tiny("dinov2", tmp_path / "dinov2")
    model = {"name": "dinov2", "checkpoint": str(ckpt), "pooling": "cls", "batch_size": 3}
    job = _image_job(model, "cache_hf_local")
    job["metrics"]["robustness"] = False
    local = _run(image_root, job, "out_hf_local")
    job["cache"]["dir"] = "cache_hf_ray"
    job["compute"] = _ray_compute(5, num_workers=1)
    remote = _run(image_root, job, "out_hf_ray")
    # batch composition differs between the engines; float32 features agree to ~1e-6
    for a, b in zip(local["secondaries"], remote["secondaries"], strict=True):
        np.testing.assert_allclose(
            [im["i_dist"] for im in b["images"]], [im["i_dist"] for im in a["images"]], rtol=1e-4
        )
    assert remote["model"] == local["model"]


def test_trained_encoder_is_shipped_to_the_actors(cluster, image_root):
    job = _image_job({"name": "hog", "image_size": 64}, "cache_trained_local")
    job["metrics"] = {"statistics": False, "robustness": False}
    for ds in [job["datasets"]["primary"], *job["datasets"]["secondary"]]:
        ds["masks"] = ds["path"].replace("/images", "/masks")
    job["adaptation"] = {
        "enabled": True,
        "counts": [1],
        "epochs": 1,
        "image_size": 32,
        "batch_size": 4,
        "features_from_trained": True,
    }
    local = _run(image_root, job, "out_trained_local")
    job["cache"]["dir"] = "cache_trained_ray"
    job["compute"] = _ray_compute(4)
    remote = _run(image_root, job, "out_trained_ray")
    (a,) = [m for m in local["models"] if m["model"]["name"] == "trained"]
    (b,) = [m for m in remote["models"] if m["model"]["name"] == "trained"]
    assert a["model"] == b["model"]  # same weights digest: the same trained encoder
    for name, value in a["o_dist"].items():
        assert b["o_dist"][name] == pytest.approx(value, rel=1e-6)


def test_s3_images_and_s3_cache(cluster, image_root):
    """Images read from S3 in the read tasks; the actors write the cache under an s3:// prefix."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="data")
        for name in ("P", "S2"):
            for f in sorted((image_root / "data" / name / "images").iterdir()):
                client.put_object(Bucket="data", Key=f"{name}/{f.name}", Body=f.read_bytes())
        job = _image_job({"name": "hog", "image_size": 64}, "s3://data/cache-local")
        job["metrics"]["robustness"] = False
        job["datasets"] = {
            "primary": {"name": "P", "path": "s3://data/P"},
            "secondary": [{"name": "S2", "path": "s3://data/S2"}],
        }
        job["storage"] = {"s3": {"endpoint_url": endpoint}}
        local = _run(image_root, job, "out_s3_local")
        job["cache"]["dir"] = "s3://data/cache-ray"
        job["compute"] = _ray_compute(4)
        remote = _run(image_root, job, "out_s3_ray")
        compare_reports(local, remote)
        from worker.cache import EmbeddingCache
        from worker.job import StorageConfig

        storage = StorageConfig.model_validate(job["storage"])
        assert EmbeddingCache("s3://data/cache-ray", storage=storage).count() == 20
    finally:
        server.stop()


def test_bad_checkpoint_comes_back_as_a_job_error(cluster, image_root, tmp_path):
    (tmp_path / "empty").mkdir()
    job = _image_job({"name": "dinov2", "checkpoint": str(tmp_path / "empty")}, "c")
    job["compute"] = _ray_compute(5)
    with pytest.raises(JobError, match="model.checkpoint"):
        pipeline.run(parse_job(job, image_root), out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _ray_pids(title: bytes) -> list[int]:
    """Processes whose title (Ray sets it to ray::<task or actor>) starts with `title`."""
    pids = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                if f.read().startswith(title):
                    pids.append(int(path.split("/")[2]))
        except OSError:
            continue
    return pids


def _kill_first(title: bytes, stop: threading.Event, killed: list[int]) -> None:
    while not stop.is_set() and not killed:
        for pid in _ray_pids(title):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)
            return
        time.sleep(0.002)


def test_killed_distance_worker_is_retried_and_the_result_is_unchanged(cluster):
    rng = np.random.default_rng(0)
    p = rng.normal(size=(40_000, 32))
    s = rng.normal(size=(6_000, 32)) + 0.1
    expected = metrics.image_dataset_distances(s, p)
    backend = RayDistanceBackend(block_rows=500)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first, args=(b"ray::row_distance_sums", stop, killed))
    killer.start()
    try:
        with engine.distance_backend(backend):
            got = metrics.image_dataset_distances(s, p)
    finally:
        stop.set()
        killer.join()
    assert killed, "no distance task was seen running"
    assert backend.stats["distance_tasks"] == 12
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_killed_embedding_actor_is_restarted_and_the_report_is_unchanged(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_kill")
    make_demo_data(root / "data", seed=5, per_set=40)
    job = _image_job({"name": "hog", "image_size": 256}, "cache_local")
    job["metrics"]["robustness"] = False
    local = _run(root, job, "out_local")
    job["cache"]["dir"] = "cache_ray"
    job["compute"] = _ray_compute(16, batch_size=4, num_workers=1)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first, args=(b"ray::MapWorker", stop, killed))
    killer.start()
    try:
        remote = _run(root, job, "out_ray")
    finally:
        stop.set()
        killer.join()
    assert killed, "no embedding actor was seen"
    compare_reports(local, remote)


def test_local_engine_never_imports_ray(embedding_job):
    root, job, _ = embedding_job
    (root / "job.yaml").write_text(json.dumps(job))
    code = (
        "import sys; from worker.__main__ import main; rc = main(['run', sys.argv[1], "
        "'--quiet']); assert 'ray' not in sys.modules, 'ray imported'; sys.exit(rc)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(root / "job.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode in (0, 1), res.stderr


def test_command_line_starts_and_stops_its_own_ray(embedding_job):
    """engine: ray with no address: the worker starts a private Ray and shuts it down."""
    root, job, _ = embedding_job
    job["compute"] = _ray_compute(7)
    (root / "job.yaml").write_text(json.dumps(job))
    res = subprocess.run(
        [sys.executable, "-m", "worker", "run", str(root / "job.yaml"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode in (0, 1), res.stderr
    engine_block = json.loads((root / "out/report.json").read_text())["run"]["engine"]
    assert engine_block["engine"] == "ray" and engine_block["distance_tasks"] > 0


def test_unreachable_address_is_a_job_error_without_output(embedding_job):
    """Nothing listens on the port: exit 2 within seconds, naming compute.address."""
    import socket

    root, job, _ = embedding_job
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    job["compute"] = {"engine": "ray", "address": f"127.0.0.1:{port}"}
    (root / "job.yaml").write_text(json.dumps(job))
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "worker", "run", str(root / "job.yaml"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert f"compute.address: nothing answers at 127.0.0.1:{port}" in res.stderr
    assert time.monotonic() - started < 60
    assert not (root / "out").exists()


@pytest.mark.parametrize(
    ("compute", "message"),
    [
        ({"address": "auto"}, "address only apply to engine: ray"),
        ({"num_gpus_per_worker": 1}, "num_gpus_per_worker only apply to engine: ray"),
        ({"engine": "ray", "address": "no port"}, "address must be 'auto'"),
        ({"engine": "ray", "block_rows": 0}, "compute.block_rows"),
        ({"engine": "spark"}, "compute.engine"),
    ],
)
def test_compute_block_is_validated(embedding_job, compute, message):
    root, job, _ = embedding_job
    job["compute"] = compute
    with pytest.raises(JobError, match=message):
        parse_job(job, root)


def test_kuberay_rayjob_manifest():
    import yaml

    docs_dir = Path(__file__).resolve().parents[1] / "docs"
    docs = list(yaml.safe_load_all((docs_dir / "kuberay-rayjob.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "RayJob"}
    rayjob = kinds["RayJob"]
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    assert spec["entrypoint"].startswith("python -m worker run /job/job.yaml")
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] == 0
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (workers,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    worker_pod = workers["template"]["spec"]
    images = {c["image"] for pod in (head, worker_pod) for c in pod["containers"]}
    assert len(images) == 1  # one worker image for the driver and the workers
    (gpu_container,) = worker_pod["containers"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {m["mountPath"] for m in head["containers"][0]["volumeMounts"]} >= {"/job", "/tmp"}

    job = parse_job(yaml.safe_load(kinds["ConfigMap"]["data"]["job.yaml"]), Path("/job"))
    assert job.compute.engine == "ray" and job.compute.address == "auto"
    assert job.compute.num_gpus_per_worker == gpu_container["resources"]["limits"]["nvidia.com/gpu"]
    assert job.cache.dir.startswith("s3://")  # shared by every node
