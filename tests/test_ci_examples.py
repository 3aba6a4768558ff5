"""Every shipped CI example runs here on two nights where nothing changed, and passes.

The commands are read from the example files themselves (the GitHub Actions steps' scripts,
the Kubernetes containers' args and volumes, the AWS Batch command and parameters, the
RayJob's entrypoint), never copied here, so an edit that breaks an example fails this test.
What cannot run on this machine is replaced, and only that: the image (its entrypoint runs
here, tests/helpers/containers.py, with the container's mounts mapped onto local folders; a
stand-in `docker` for the workflows), the model (the examples' dinov2 on a GPU becomes HOG on
small images), GPU requests of the Ray job, and AWS (a moto S3 server holding the examples'
own buckets and prefixes: s3://my-datasets/..., s3://my-reports/...; planted credentials
instead of the OIDC role step). Each night: exit 0, the outputs the example says it writes
(the workflows' artifact and JUnit paths, the S3 store's flat report and pointer, the
volume's latest/report.json), and no staging folder left in the pod's /tmp.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import boto3
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers.containers import map_path, run_container
from tests.helpers.s3 import FAKE_KEY_ID, FAKE_SECRET, cli_env

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LOCAL_MODEL = {"name": "hog", "image_size": 32}  # for the examples' dinov2 on a GPU
IMAGES_PER_SET = 10


def _manifest(file: str) -> dict[tuple[str, str], dict]:
    """(kind, name) -> document of one Kubernetes manifest file in docs/."""
    docs = yaml.safe_load_all((DOCS / file).read_text())
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _configmaps() -> dict[str, dict]:
    """name -> ConfigMap, over every manifest shipped in docs/ (a CronJob may name one that
    another file defines, as the compare CronJob does)."""
    return {
        name: doc
        for path in sorted(DOCS.glob("*.yaml"))
        for (kind, name), doc in _manifest(path.name).items()
        if kind == "ConfigMap"
    }


def _local_job(text: str) -> str:
    """A shipped job file with what cannot run here replaced: the model, GPU requests."""
    job = yaml.safe_load(text)
    job["model"] = {**LOCAL_MODEL, **{k: v for k, v in job["model"].items() if k == "batch_size"}}
    if "num_gpus_per_worker" in job.get("compute", {}):
        job["compute"]["num_gpus_per_worker"] = 0
    return yaml.safe_dump(job, sort_keys=False)


def _s3_uris(job_text: str) -> list[str]:
    job = yaml.safe_load(job_text)
    ds = job["datasets"]
    return [d["path"] for d in [ds["primary"], *ds["secondary"]]]


def _nightly_job() -> str:
    """The shipped nightly job (the ConfigMap of docs/k8s-cronjob.yaml, which the compare
    CronJob and the workflows name as the job they run)."""
    return _configmaps()["dataset-distance-job"]["data"]["job.yaml"]


@pytest.fixture
def aws(moto_endpoint, tmp_path):
    """The examples' buckets on moto with one small image set at each dataset prefix the
    shipped jobs name (the same images every night); yields (environment of a process in
    the examples' AWS account, a boto3 client); the buckets are removed afterwards."""
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="eu-west-1",
        aws_access_key_id=FAKE_KEY_ID,
        aws_secret_access_key=FAKE_SECRET,
    )
    texts = [cm["data"]["job.yaml"] for cm in _configmaps().values()]
    uris = sorted({u for t in texts for u in _s3_uris(t)})
    buckets = sorted({u.split("/")[2] for t in texts for u in _s3_uris(t) + _outputs(t)})
    for b in buckets:
        client.create_bucket(
            Bucket=b, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
    rng = np.random.default_rng(0)
    for k, uri in enumerate(uris):
        bucket, prefix = uri[5:].split("/", 1)
        for i in range(IMAGES_PER_SET):
            arr = np.clip(rng.normal(110 + 3 * k, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            path = tmp_path / "img.png"
            Image.fromarray(arr).save(path)
            client.upload_file(str(path), bucket, f"{prefix}/{i:02d}.png")
    yield cli_env(moto_endpoint), client
    for b in buckets:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=b):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=b, Key=obj["Key"])
        client.delete_bucket(Bucket=b)


def _outputs(job_text: str) -> list[str]:
    job = yaml.safe_load(job_text)
    return [job["output"]["dir"], job["cache"]["dir"]]


def _key_exists(client, uri: str) -> bool:
    bucket, key = uri[5:].split("/", 1)
    return client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) > 0


def _pod(doc: dict) -> dict:
    """The pod spec of a CronJob."""
    return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _run_pod(pod: dict, env: dict, volumes_here: dict[str, Path], command=None):
    """Run the pod's one container: its volumes mapped onto local folders (a ConfigMap's
    data written into one; a claim's folder shared by every pod naming it, in
    `volumes_here`), its env on top of `env`; args after the image's entrypoint."""
    (container,) = pod["containers"]
    mounts = {}
    for vol in pod["volumes"]:
        if "configMap" in vol:
            folder = volumes_here.setdefault(f"cm-{vol['configMap']['name']}", None)
            if folder is None:
                folder = volumes_here["root"] / f"cm-{vol['configMap']['name']}"
                folder.mkdir()
                for name, text in _configmaps()[vol["configMap"]["name"]]["data"].items():
                    (folder / name).write_text(_local_job(text))
                volumes_here[f"cm-{vol['configMap']['name']}"] = folder
        elif "persistentVolumeClaim" in vol:
            key = f"pvc-{vol['persistentVolumeClaim']['claimName']}"
            folder = volumes_here.setdefault(key, volumes_here["root"] / key)
            folder.mkdir(exist_ok=True)
        else:  # emptyDir: new for every pod
            folder = Path(
                tempfile.mkdtemp(prefix=f"empty-{vol['name']}-", dir=volumes_here["root"])
            )
        mounts[vol["name"]] = folder
    paths = {m["mountPath"]: str(mounts[m["name"]]) for m in container["volumeMounts"]}
    env = {**env, **{e["name"]: e["value"] for e in container.get("env", [])}}
    home = volumes_here["root"] / "home-worker"
    home.mkdir(exist_ok=True)
    paths["/home/worker"] = str(home)
    done = run_container(container["args"], paths, env, "/home/worker", command=command)
    return done, paths


def _no_staging_left(folder: str | Path) -> None:
    assert not [p.name for p in Path(folder).iterdir() if p.name.startswith("worker-out-")]


def test_the_k8s_nightly_cronjob_and_the_compare_workflow_pass_on_two_identical_nights(
    aws, tmp_path
):
    """docs/k8s-cronjob.yaml runs the nightly job into the S3 store its job names, two
    nights; then docs/github-actions-compare.yml runs the job on the pull request's (same)
    data into out/ and compares the nightly stable report with out/latest/report.json."""
    env, client = aws
    cron = _manifest("k8s-cronjob.yaml")[("CronJob", "dataset-distance-nightly")]
    store = yaml.safe_load(_nightly_job())["output"]["dir"]
    workflow = yaml.safe_load((DOCS / "github-actions-compare.yml").read_text())
    workspace = tmp_path / "checkout"
    (workspace / Path(workflow["env"]["JOB"]).parent).mkdir(parents=True)
    (workspace / workflow["env"]["JOB"]).write_text(_local_job(_nightly_job()))
    for night in (1, 2):
        here = {"root": tmp_path / f"night{night}"}
        here["root"].mkdir()
        done, paths = _run_pod(_pod(cron), {**os.environ, **env}, here)
        assert done.returncode == 0, done.stderr[-3000:]
        for line in done.stderr.splitlines():
            json.loads(line)  # --log-format json
        _no_staging_left(paths["/tmp"])
        _assert_s3_night(client, store, night)
    # the pull request on the second night: its run, then the compare with the nightly
    for step in workflow["jobs"]["compare"]["steps"]:
        if "run" not in step:
            continue
        done = _workflow_step(step, workflow, workspace, env, tmp_path)
        assert done.returncode == 0, (step["name"], done.stdout[-2000:], done.stderr[-3000:])
        assert (workspace / "out" / "latest" / "report.json").is_file(), done.stderr[-3000:]
    assert json.loads((workspace / "out" / "latest" / "report.json").read_text())["passed"]
    _assert_artifacts(workflow["jobs"]["compare"]["steps"], workspace)
    cases = list(ET.parse(workspace / "out" / "compare.xml").getroot().iter("testcase"))
    assert cases and not [c for c in cases if c.find("failure") is not None]


def _workflow_step(step: dict, workflow: dict, workspace: Path, env: dict, tmp_path: Path):
    """A GitHub Actions `run` step as the runner runs it (bash -eo pipefail), with the
    workflow's env, $GITHUB_OUTPUT, and a stand-in `docker` first on PATH."""
    bindir = tmp_path / "bin"
    if not bindir.exists():
        bindir.mkdir()
        helper = ROOT / "tests" / "helpers" / "containers.py"
        (bindir / "docker").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{helper}" "$@"\n')
        (bindir / "docker").chmod(0o755)
    assert step.get("shell", "bash") == "bash"
    full = {**os.environ, **env, **{k: str(v) for k, v in workflow.get("env", {}).items()}}
    full["PATH"] = f"{bindir}{os.pathsep}{full['PATH']}"
    full["GITHUB_OUTPUT"] = str(tmp_path / "github_output")
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT), full.get("PYTHONPATH", "")])
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=workspace,
        env=full,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _assert_artifacts(steps: list[dict], workspace: Path) -> None:
    """Every path the workflow publishes (JUnit report_paths) or keeps (artifact paths)."""
    for step in steps:
        uses = step.get("uses", "")
        with_ = step.get("with", {})
        paths = []
        if uses.startswith("actions/upload-artifact"):
            paths = with_["path"].split()
        elif uses.startswith("mikepenz/action-junit-report"):
            paths = [with_["report_paths"]]
        for p in paths:
            assert (workspace / p).exists(), (step.get("name"), p)


def test_the_github_workflow_passes_on_two_identical_nights(aws, tmp_path):
    """docs/github-actions.yml's step "Run the job" (the nightly job as jobs/ci.yaml):
    exit 0 and exit_code=0 in $GITHUB_OUTPUT each night; the JUnit file and the artifact
    paths exist; every gate is a passing test case."""
    env, _ = aws
    workflow = yaml.safe_load((DOCS / "github-actions.yml").read_text())
    (job,) = workflow["jobs"].values()
    workspace = tmp_path / "checkout"
    (workspace / Path(workflow["env"]["JOB"]).parent).mkdir(parents=True)
    (workspace / workflow["env"]["JOB"]).write_text(_local_job(_nightly_job()))
    for _night in (1, 2):
        (tmp_path / "github_output").write_text("")
        for step in job["steps"]:
            if "run" in step:
                done = _workflow_step(step, workflow, workspace, env, tmp_path)
                assert done.returncode == 0, (
                    step["name"],
                    done.stdout[-2000:],
                    done.stderr[-3000:],
                )
        assert (tmp_path / "github_output").read_text() == "exit_code=0\n"
        _assert_artifacts(job["steps"], workspace)
        cases = list(ET.parse(workspace / "out" / "junit.xml").getroot().iter("testcase"))
        assert cases and not [c for c in cases if c.find("failure") is not None]
    assert (
        len([p for p in (workspace / "out" / "runs").iterdir() if not p.name.startswith(".")]) == 2
    )


def test_the_k8s_compare_cronjobs_pass_on_two_identical_nights(aws, tmp_path):
    """docs/k8s-compare-cronjob.yaml: the run into the claim at /out, then `compare previous
    /out/latest/report.json --store /out` with its thresholds (after the second night: the
    first has no previous run)."""
    env, _ = aws
    manifests = _manifest("k8s-compare-cronjob.yaml")
    here = {"root": tmp_path}
    nightly = manifests[("CronJob", "dataset-distance-nightly")]
    compare = manifests[("CronJob", "dataset-distance-compare")]
    for _night in (1, 2):
        done, paths = _run_pod(_pod(nightly), {**os.environ, **env}, here)
        assert done.returncode == 0, done.stderr[-3000:]
        _no_staging_left(paths["/tmp"])
        assert (Path(paths["/out"]) / "latest" / "report.json").is_file()
    done, _ = _run_pod(_pod(compare), {**os.environ, **env}, here)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    out = json.loads(done.stdout)
    assert out["passed"] is True and out["gates"] and all(g["passed"] for g in out["gates"])


def _assert_s3_night(client, store: str, night: int) -> None:
    """The S3 run store after `night` nights: the flat report, the pointer, one run a night."""
    bucket, prefix = store[5:].split("/", 1)
    assert _key_exists(client, f"{store}/report.json")
    assert _key_exists(client, f"{store}/latest.json")
    runs = client.list_objects_v2(Bucket=bucket, Delimiter="/", Prefix=f"{prefix}/runs/")
    assert len(runs.get("CommonPrefixes", [])) == night


@pytest.mark.slow
def test_the_aws_batch_job_definition_passes_on_two_identical_nights(aws, tmp_path):
    """docs/aws-batch-job.json: its command with the `Ref::` parameters filled in from its
    own defaults, its environment, the EFS volume at its mount point holding the job named
    by the `job` parameter (the nightly job), into the S3 store that job names."""
    env, client = aws
    spec = json.loads((DOCS / "aws-batch-job.json").read_text())
    props = spec["containerProperties"]
    args = [
        spec["parameters"][w.removeprefix("Ref::")] if w.startswith("Ref::") else w
        for w in props["command"]
    ]
    efs = tmp_path / "efs"
    mounts = {}
    for point in props["mountPoints"]:
        (vol,) = [v for v in props["volumes"] if v["name"] == point["sourceVolume"]]
        assert vol["efsVolumeConfiguration"]["rootDirectory"]
        mounts[point["containerPath"]] = str(efs / vol["name"])
        (efs / vol["name"]).mkdir(parents=True)
    job_file = Path(map_path(spec["parameters"]["job"], mounts))
    job_file.write_text(_local_job(_nightly_job()))
    mounts["/tmp"] = str(tmp_path / "container-tmp")
    mounts["/home/worker"] = str(tmp_path / "home")
    for folder in ("container-tmp", "home"):
        (tmp_path / folder).mkdir()
    full = {**os.environ, **env, **{e["name"]: e["value"] for e in props["environment"]}}
    store = yaml.safe_load(_nightly_job())["output"]["dir"]
    for night in (1, 2):
        done = run_container(args, mounts, full, "/home/worker")
        assert done.returncode == 0, done.stderr[-3000:]
        _no_staging_left(mounts["/tmp"])
        _assert_s3_night(client, store, night)
    codes = {
        int(e["onExitCode"]) for e in spec["retryStrategy"]["evaluateOnExit"] if "onExitCode" in e
    }
    assert codes == {1, 2}  # never retried: a gate failed, or the job is invalid


@pytest.mark.slow
def test_the_kuberay_rayjob_passes_on_two_identical_nights(aws, tmp_path, monkeypatch):
    """docs/kuberay-rayjob.yaml: its entrypoint on the head pod (the ConfigMap at /job), with
    `address: auto` finding a Ray cluster started here (RAY_ADDRESS, as on the head node),
    embedding actors without GPUs; into the S3 store its job names."""
    import ray

    env, client = aws
    docs = _manifest("kuberay-rayjob.yaml")
    (rayjob,) = [d for (kind, _), d in docs.items() if kind == "RayJob"]
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    here = {"root": tmp_path}
    pod = {**head, "containers": [{**head["containers"][0], "args": []}]}
    command = shlex.split(rayjob["spec"]["entrypoint"])
    store = yaml.safe_load(_configmaps()["dataset-distance-rayjob"]["data"]["job.yaml"])["output"][
        "dir"
    ]
    for name, value in env.items():  # the cluster's workers read S3 in the same account
        monkeypatch.setenv(name, value)
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        full = {**os.environ, **env, "RAY_ADDRESS": context.address_info["gcs_address"]}
        for night in (1, 2):
            done, paths = _run_pod(pod, full, here, command=command)
            assert done.returncode == 0, done.stderr[-3000:]
            _no_staging_left(paths["/tmp"])
            _assert_s3_night(client, store, night)
            report = json.loads(_read(client, f"{store}/report.json"))
            assert report["run"]["engine"]["engine"] == "ray"
    finally:
        ray.shutdown()


def _read(client, uri: str) -> bytes:
    bucket, key = uri[5:].split("/", 1)
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _docker_lines(path: Path) -> list[str]:
    """The `docker run` command lines of a Markdown file's code blocks (continuations
    joined), except the demo's (it trains a model for a minute; `make docker-smoke` runs it
    in the real image)."""
    import re

    lines = []
    for block in re.findall(r"```\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("docker run") and " demo " not in line:
                lines.append(line)
    return lines


@pytest.mark.slow
def test_the_docker_run_lines_of_the_docs_pass_on_two_identical_nights(aws, tmp_path):
    """docs/scheduling.md's and docker/README.md's `docker run` lines, run by bash from a
    folder holding job/ ("a mounted folder with job.yaml, data and an out/"): the nightly
    job on local copies of its data (and its store where a line gives --out). Each line
    twice: exit 0, its --junit file written, the store's stable report there."""
    env, client = aws
    lines = _docker_lines(DOCS / "scheduling.md") + _docker_lines(ROOT / "docker" / "README.md")
    assert len(lines) == 3, lines
    work = tmp_path / "work"
    job = yaml.safe_load(_local_job(_nightly_job()))
    ds = job["datasets"]
    for d in [ds["primary"], *ds["secondary"]]:  # the same images, in the mounted folder
        bucket, prefix = d["path"][5:].split("/", 1)
        folder = work / "job" / d["name"]
        folder.mkdir(parents=True)
        for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]:
            client.download_file(bucket, obj["Key"], str(folder / Path(obj["Key"]).name))
        d["path"] = d["name"]
    job["output"], job["cache"] = {"dir": "out"}, {"dir": "cache"}
    (work / "job" / "job.yaml").write_text(yaml.safe_dump(job))
    step = {"name": "docs", "run": ""}
    for line in lines:
        words = shlex.split(line)
        for _night in (1, 2):
            done = _workflow_step({**step, "run": line}, {}, work, env, tmp_path)
            assert done.returncode == 0, (line, done.stderr[-3000:])
        out = words[words.index("--out") + 1] if "--out" in words else None
        if out is None:
            assert (work / "job" / "out" / "latest" / "report.json").is_file()
        else:
            _assert_s3_night(client, out, 2)
        if "--junit" in words:
            junit = words[words.index("--junit") + 1].replace("/job/", "job/", 1)
            cases = list(ET.parse(work / junit).getroot().iter("testcase"))
            assert cases and not [c for c in cases if c.find("failure") is not None]
