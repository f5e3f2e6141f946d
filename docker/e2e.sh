#!/usr/bin/env bash
# The Docker suite: builds the PostgreSQL 15 and 17 images offline (docker/build-offline.sh)
# (and the HAProxy, etcd, Prometheus and S3 images of the stacks)
# and runs tests/docker.rs and tests/docker_dropin.rs against each on this machine's Docker
# engine, then tests/docker_upgrade.rs from the 15 image to the 17 upgrade image, and ends
# with the Docker-level figures of docker/bench.sh (3 rounds) on the 17 image. Starts
# dockerd if it is not running; only if that fails too are the tests skipped, said on the
# last line.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
    echo "e2e.sh: no Docker engine answering; starting dockerd" >&2
    (dockerd >/tmp/pg-entrypoint-dockerd.log 2>&1 &)
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    if ! docker info >/dev/null 2>&1; then
        tail -n 20 /tmp/pg-entrypoint-dockerd.log >&2 || true
        echo "DOCKER SUITE SKIPPED: no Docker engine could be started (see above); the image was NOT tested"
        exit 0
    fi
fi
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    scripts/apt-install.sh docker-compose
fi

PGEP_HAPROXY_IMAGE=$(docker/build-offline.sh haproxy | tail -n 1)
PGEP_ETCD_IMAGE=$(docker/build-offline.sh etcd | tail -n 1)
PGEP_PROMETHEUS_IMAGE=$(docker/build-offline.sh prometheus | tail -n 1)
PGEP_S3_IMAGE=$(docker/build-offline.sh s3 | tail -n 1)
export PGEP_HAPROXY_IMAGE PGEP_ETCD_IMAGE PGEP_PROMETHEUS_IMAGE PGEP_S3_IMAGE
# The Docker tests of `binaries` (a nextest filter, or the cargo test --test names).
suite() {
    local filter="$1"; shift
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --run-ignored only -E "$filter" --no-fail-fast --no-capture
    else
        cargo test "$@" -- --ignored --test-threads 1 --nocapture
    fi
}
for pg in ${PG_VERSIONS:-15 17}; do
    image=$(docker/build-offline.sh "$pg" | tail -n 1)
    base=$(docker inspect -f '{{index .Config.Labels "org.opencontainers.image.base.name"}}' "$image")
    echo "=== Docker suite on $image (base $base) ==="
    PGEP_IMAGE="$image" PGEP_BASE_IMAGE="$base" suite 'binary(docker) | binary(docker_dropin)' --test docker --test docker_dropin
done
PGEP_OLD_IMAGE=$(docker/build-offline.sh 15 | tail -n 1)
PGEP_UPGRADE_IMAGE=$(docker/build-offline.sh 17-upgrade | tail -n 1)
export PGEP_OLD_IMAGE PGEP_UPGRADE_IMAGE
echo "=== Upgrade suite: $PGEP_OLD_IMAGE to $PGEP_UPGRADE_IMAGE ==="
PGEP_IMAGE="$PGEP_UPGRADE_IMAGE" suite 'binary(docker_upgrade)' --test docker_upgrade
echo "=== Docker-level figures (docker/bench.sh) ==="
ROUNDS="${BENCH_ROUNDS:-3}" IMAGE=$(docker/build-offline.sh 17 | tail -n 1) docker/bench.sh
