#!/usr/bin/env bash
# Docker build and smoke test for the worker image.
#
#   docker/smoke.sh            # smoke: local Debian base, CPU torch, run the demo job in the
#                              # container as the non-root user, check report.json/report.pdf
#   docker/smoke.sh build      # build the real image (CUDA base by default): `make docker`
#   docker/smoke.sh context F  # write the clean build context (a tar) to F
#
# The build context is the repository's tracked and untracked-but-not-ignored files (so .venv,
# .cache and outputs never reach the daemon), sent to `docker build` as a tar on stdin.
#
# Environment: IMAGE (build: dataset-distance-worker:latest, smoke: dataset-distance-worker:smoke),
# BASE_IMAGE, TORCH_SPEC, TORCH_INDEX, BAKE_MODELS, DOCKER_BUILD_ARGS (extra flags),
# TORCH_WHEEL (smoke: the CPU torch wheel; found in pip's find-links folders if unset),
# KEEP_OUT=1 (smoke: keep the output folder).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

log() { printf 'smoke: %s\n' "$*" >&2; }
die() {
    log "FAIL: $*"
    exit 1
}
now() { date +%s; }

# The Debian docker.io client has no buildx plugin: use the classic builder then.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

torch_pin() {
    # torch==X from pyproject.toml (the Makefile and the Dockerfile use the same pin).
    sed -n 's/^ *"\(torch==[0-9][0-9.]*\)".*/\1/p' pyproject.toml | head -n1
}

ca_bundle() {
    # The CA bundle pip uses on this host (behind a TLS-inspecting proxy pip needs it in the
    # build too): BUILD_CA_BUNDLE, else PIP_CERT, else pip's `cert` setting; "" = none.
    local f="${BUILD_CA_BUNDLE-${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}}"
    if [ -n "$f" ] && [ -s "$f" ]; then echo "$f"; fi
}

make_context() { # make_context OUT.tar [WHEEL]
    local out="$1" wheel="${2:-}" list ca
    list="$(mktemp)"
    git ls-files -co --exclude-standard -z |
        while IFS= read -r -d '' f; do
            [ -f "$f" ] && printf '%s\0' "$f"
        done >"$list"
    tar --null -T "$list" -cf "$out"
    rm -f "$list"
    ca="$(ca_bundle)"
    if [ -n "$wheel" ] || [ -n "$ca" ]; then
        local stage
        stage="$(mktemp -d)"
        mkdir -p "$stage/docker"
        if [ -n "$wheel" ]; then
            mkdir -p "$stage/docker/wheels"
            ln -s "$wheel" "$stage/docker/wheels/$(basename "$wheel")"
        fi
        if [ -n "$ca" ]; then
            mkdir -p "$stage/docker/certs"
            cp "$ca" "$stage/docker/certs/ca-bundle.pem"
        fi
        tar -C "$stage" --dereference -rf "$out" docker
        rm -rf "$stage"
    fi
}

build_image() { # build_image IMAGE CONTEXT.tar [--build-arg ...]
    local image="$1" ctx="$2"
    shift 2
    # shellcheck disable=SC2086
    docker build -f docker/Dockerfile -t "$image" "$@" ${DOCKER_BUILD_ARGS:-} - <"$ctx"
}

find_cpu_wheel() {
    local version="$1" dirs d w
    dirs="${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true) /opt/wheels"
    for d in $dirs; do
        d="${d#file://}"
        [ -d "$d" ] || continue
        for w in "$d"/torch-"$version"+cpu-cp311-cp311-*_"$(uname -m)".whl; do
            [ -f "$w" ] && {
                echo "$w"
                return 0
            }
        done
    done
    return 1
}

cmd_context() {
    make_context "${1:?usage: smoke.sh context OUT.tar}"
}

cmd_build() {
    local image="${IMAGE:-dataset-distance-worker:latest}" ctx args=()
    ctx="$(mktemp --suffix=.tar)"
    trap 'rm -f "$ctx"' RETURN
    make_context "$ctx"
    [ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    [ -n "${TORCH_SPEC:-}" ] && args+=(--build-arg "TORCH_SPEC=$TORCH_SPEC")
    [ -n "${TORCH_INDEX+x}" ] && args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
    [ -n "${BAKE_MODELS:-}" ] && args+=(--build-arg "BAKE_MODELS=$BAKE_MODELS")
    build_image "$image" "$ctx" "${args[@]}"
    log "built $image"
}

cmd_smoke() {
    local image="${IMAGE:-dataset-distance-worker:smoke}" pin version wheel ctx out t0 t1 t2 t3 rc
    command -v docker >/dev/null || die "docker not found (apt-get install -y docker.io)"
    docker info >/dev/null 2>&1 || die "no Docker daemon; start one as root: dockerd &"
    pin="$(torch_pin)"
    [ -n "$pin" ] || die "no torch==X pin found in pyproject.toml"
    version="${pin#torch==}"

    t0="$(now)"
    bash "$here/make_base.sh"
    t1="$(now)"

    wheel="${TORCH_WHEEL:-$(find_cpu_wheel "$version" || true)}"
    local args=(--build-arg BASE_IMAGE=worker-base:bookworm)
    if [ -n "$wheel" ]; then
        log "torch: local CPU wheel $wheel"
        args+=(--build-arg "TORCH_SPEC=torch==$version+cpu" --build-arg TORCH_INDEX=)
    else
        log "torch: no local CPU wheel found; using the PyTorch CPU index"
        args+=(--build-arg "TORCH_SPEC=$pin" --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu)
    fi
    ctx="$(mktemp --suffix=.tar)"
    out="$(mktemp -d "${TMPDIR:-/tmp}/worker-smoke.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -f '$ctx'; [ '${KEEP_OUT:-0}' = 1 ] || rm -rf '$out'" EXIT
    make_context "$ctx" "$wheel"
    log "build context: $(du -h "$ctx" | cut -f1)"
    build_image "$image" "$ctx" "${args[@]}"
    t2="$(now)"

    # The image's user must not be root.
    local uid
    uid="$(docker run --rm --entrypoint id "$image" -u)"
    [ "$uid" != 0 ] || die "the image runs as root"
    log "image user: uid $uid"

    # The output folder on the host is writable by the container's user.
    chmod 0777 "$out"
    set +e
    docker run --rm --network none --read-only --tmpfs /tmp \
        -v "$out:/out" "$image" demo --dir /out/demo --quiet
    rc=$?
    set -e
    t3="$(now)"
    [ "$rc" = 0 ] || [ "$rc" = 1 ] || die "demo job exited $rc (0 = gates passed, 1 = a gate failed)"
    local report="$out/demo/out"
    [ -s "$report/report.json" ] || die "no report.json in $report"
    [ -s "$report/report.pdf" ] || die "no report.pdf in $report"
    head -c 5 "$report/report.pdf" | grep -q '%PDF' || die "report.pdf is not a PDF"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('smoke: report.json schema_version', r.get('schema_version'), 'passed', r.get('passed'))" "$report/report.json" >&2
    [ "$(stat -c %u "$report/report.json")" = "$uid" ] || die "report.json not written by uid $uid"
    log "OK: demo exit $rc; report.json and report.pdf on the host in $report"
    log "timings: base $((t1 - t0)) s, build $((t2 - t1)) s, run $((t3 - t2)) s, total $((t3 - t0)) s"
    log "image size: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
}

case "${1:-smoke}" in
    smoke) cmd_smoke ;;
    build) cmd_build ;;
    context) cmd_context "${2:-}" ;;
    *) die "unknown command ${1}; use smoke, build or context" ;;
esac
