#!/usr/bin/env bash
# Build a minimal Debian bookworm base image locally, without pulling from any registry:
# debootstrap a minbase root filesystem (cached as a tarball), then `docker import` it.
#
#   docker/make_base.sh                 # -> image worker-base:bookworm
#   FORCE=1 docker/make_base.sh         # rebuild the tarball and the image
#
# Settings (environment): BASE_TAG (worker-base:bookworm), SUITE (bookworm),
# DEBIAN_MIRROR (http://deb.debian.org/debian), CACHE_DIR (<repo>/.cache/docker).
# Needs root (debootstrap, chroot) and a running Docker daemon.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
TAG="${BASE_TAG:-worker-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE_DIR="${CACHE_DIR:-$repo/.cache/docker}"
TARBALL="$CACHE_DIR/$SUITE-minbase.tar"
FORCE="${FORCE:-0}"

log() { printf 'make_base: %s\n' "$*" >&2; }

command -v docker >/dev/null || { log "docker not found; install docker.io and start dockerd"; exit 1; }
docker info >/dev/null 2>&1 || { log "cannot reach the Docker daemon; start it (dockerd &) as root"; exit 1; }

if [ "$FORCE" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG already exists (FORCE=1 rebuilds it)"
    exit 0
fi

if [ "$FORCE" = 1 ] || [ ! -s "$TARBALL" ]; then
    [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
    command -v debootstrap >/dev/null || {
        log "debootstrap not found; apt-get install -y debootstrap"
        exit 1
    }
    mkdir -p "$CACHE_DIR"
    rootfs="$(mktemp -d "${TMPDIR:-/tmp}/worker-rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap $SUITE (minbase) from $MIRROR into $rootfs"
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" "$MIRROR" >&2
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
    # Smaller image: no apt lists or caches, no docs.
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
    tar -C "$rootfs" --numeric-owner -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    log "cached root filesystem: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi

log "docker import $TARBALL as $TAG"
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$TARBALL" "$TAG" >/dev/null
log "built $TAG"
