"""The worker image's entrypoint run here, for the tests of the shipped CI examples: a
container's arguments (a Kubernetes container's args, an AWS Batch command, a `docker run`
line) become `python -m worker ...` with the container's paths mapped onto the local folders
mounted at them. `python tests/helpers/containers.py run [docker run options] IMAGE ARGS...`
is the stand-in `docker` that the GitHub Actions steps call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "docker" / "Dockerfile"


def entrypoint() -> list[str]:
    """The image's ENTRYPOINT (exec form), with this interpreter for `python`."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("ENTRYPOINT ")]
    words = json.loads(lines[-1].split(" ", 1)[1])
    return [sys.executable if w == "python" else w for w in words]


def map_path(word: str, mounts: Mapping[str, str]) -> str:
    """`word` with the longest container mount path it starts with replaced by the local
    folder mounted there (other words unchanged)."""
    for inside in sorted(mounts, key=len, reverse=True):
        root = inside.rstrip("/")
        if word == root or word.startswith(root + "/"):
            return str(mounts[inside]) + word[len(root) :]
    return word


def run_container(
    args: Sequence[str],
    mounts: Mapping[str, str],
    env: Mapping[str, str],
    workdir: str,
    *,
    command: Sequence[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the image with `args` (after its entrypoint, or `command` replacing it, which
    starts with `python` too): paths mapped through `mounts`, in the local folder standing
    for `workdir`; a /tmp mount is the process's TMPDIR. Returns the finished process
    (stdout, stderr as text)."""
    assert command is None or command[0] == "python", command
    words = [*(entrypoint()[1:] if command is None else command[1:]), *args]
    argv = [sys.executable, *(map_path(w, mounts) for w in words)]
    env = dict(env)
    if "/tmp" in mounts:
        env["TMPDIR"] = str(mounts["/tmp"])
    return subprocess.run(
        argv, cwd=map_path(workdir, mounts), env=env, capture_output=True, text=True, timeout=600
    )


#: what stands for the network and a bare host inside the stand-in container (the moto
#: endpoint, no AWS config files); every other AWS_ variable reaches it only through -e
NETWORK = (
    "AWS_ENDPOINT_URL",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_EC2_METADATA_DISABLED",
)


def _docker(argv: list[str]) -> int:
    """`docker run` with the options the examples use (--rm, --user, --gpus, -v, -w, -e).
    As in docker, the container sees no credentials or AWS settings of the caller unless an
    `-e NAME` passes them."""
    assert argv[0] == "run", argv
    mounts: dict[str, str] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k in NETWORK}
    workdir, k = os.getcwd(), 1
    while argv[k].startswith("-"):
        opt = argv[k]
        if opt == "--rm":
            k += 1
            continue
        value = argv[k + 1]
        if opt == "-v":
            local, inside = value.split(":")[:2]
            mounts[inside] = local
        elif opt == "-w":
            workdir = value
        elif opt == "-e" and "=" in value:
            name, _, val = value.partition("=")
            env[name] = val
        elif opt == "-e" and value in os.environ:
            env[value] = os.environ[value]
        elif opt not in ("-e", "--user", "--gpus"):
            raise SystemExit(f"stand-in docker: option {opt} is not handled")
        k += 2
    args = argv[k + 1 :]  # after the image
    done = run_container(args, mounts, env, workdir)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(_docker(sys.argv[1:]))
