#!/usr/bin/env bash
# Builds the pg-entrypoint image on a machine that cannot pull images: the binary with
# cargo, a Debian base with Debian's PostgreSQL made locally with mmdebstrap + docker import
# (bookworm gives PostgreSQL 15, trixie 17; the mirror is read from this machine's apt
# sources), then the final image from docker/Dockerfile. An existing base image is reused.
# `17-upgrade` is the upgrade image (docs/upgrade.md): trixie's PostgreSQL 17
# with bookworm's postgresql-15 beside it (both suites in the sources; apt takes 15 and the
# libraries only bookworm has, e.g. libicu72, from bookworm).
# `haproxy` builds the HAProxy image of docker/compose.haproxy.yaml and compose.patroni.yaml,
# `etcd` the etcd image of docker/compose.patroni.yaml, `prometheus` the Prometheus image of
# docker/compose.monitoring.yaml (Debian's packages, bookworm) instead. `s3` builds the
# S3-compatible server of docker/compose.backup-s3.yaml (docker/s3/): bookworm's python3 and
# HAProxy with moto's server, which pip installs on this machine from PyPI.
# Usage: docker/build-offline.sh [15|17|17-upgrade|haproxy|etcd|prometheus|s3]. The last line printed is the image tag.
set -euo pipefail
cd "$(dirname "$0")/.."
pg="${1:-15}"
old_major=
case "$pg" in
    15) suite=bookworm ;;
    17) suite=trixie ;;
    17-upgrade) suite=trixie; old_major=15 ;;
    haproxy|etcd|prometheus|s3) suite=bookworm ;;
    *) echo "build-offline.sh: $pg is not offered; accepted: 15 (bookworm), 17 (trixie), 17-upgrade, haproxy, etcd, prometheus, s3" >&2; exit 2 ;;
esac
major="${pg%-upgrade}"
# The tag names the recipe: a base built by an older recipe is not reused.
base="pg-entrypoint-base:$suite-pg$pg-v5"
image="pg-entrypoint:pg$pg"

# The Debian mirror this machine uses (deb822 or one-line sources).
mirror() {
    local uri
    uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n 1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n 1 || true)
    fi
    [ -n "$uri" ] || { echo "build-offline.sh: no Debian mirror found in /etc/apt sources" >&2; exit 1; }
    echo "$uri"
}

ensure_mmdebstrap() {
    command -v mmdebstrap >/dev/null 2>&1 || scripts/apt-install.sh mmdebstrap
}

# A plain Debian with the given packages, for the images beside PostgreSQL.
tool_image() {
    local image="$1" packages="$2" tar
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        ensure_mmdebstrap
        tar="$(mktemp -d)/tool.tar"
        echo "building $image with mmdebstrap from $(mirror)" >&2
        mmdebstrap --variant=apt --quiet --include="$packages" \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
            "$suite" "$tar" "deb $(mirror) $suite main" >&2
        docker import "$tar" "$image" >&2
        rm -rf "$(dirname "$tar")"
    fi
    echo "$image"
}
case "$pg" in
    haproxy) tool_image pg-entrypoint-haproxy:local haproxy; exit 0 ;;
    # etcdctl (etcd-client) for `docker exec ... etcdctl endpoint health --cluster`.
    etcd) tool_image pg-entrypoint-etcd:local etcd-server,etcd-client; exit 0 ;;
    prometheus) tool_image pg-entrypoint-prometheus:local prometheus; exit 0 ;;
    s3)
        if ! docker image inspect pg-entrypoint-s3:local >/dev/null 2>&1; then
            s3_base=$(tool_image pg-entrypoint-s3-base:local python3,haproxy,openssl,curl)
            context=$(mktemp -d)
            cp docker/s3/Dockerfile docker/s3/entrypoint.sh "$context/"
            # Wheels for bookworm's Python (3.11), as pure Python or manylinux builds.
            python3 -m pip install --quiet --root-user-action=ignore --target "$context/site" \
                --python-version 3.11 --only-binary=:all: --platform manylinux2014_x86_64 'moto[server]' >&2
            docker build --quiet --build-arg BASE_IMAGE="$s3_base" -t pg-entrypoint-s3:local "$context" >&2
            rm -rf "$context"
        fi
        echo pg-entrypoint-s3:local
        exit 0 ;;
esac

if ! docker image inspect "$base" >/dev/null 2>&1; then
    ensure_mmdebstrap
    packages="postgresql-$major,xz-utils,zstd,locales,libnss-wrapper,patroni,python3-etcd,pgbackrest,pgbouncer"
    sources=("deb $(mirror) $suite main")
    if [ -n "$old_major" ]; then
        packages="$packages,postgresql-$old_major/bookworm"
        sources+=("deb $(mirror) bookworm main")
    fi
    tar="$(mktemp -d)/base.tar"
    echo "building $base with mmdebstrap from $(mirror)" >&2
    # As the official image: the postgres account is 999:999, made before the package would
    # pick another uid (volumes made by the official image keep their owner), the en_US.UTF-8
    # locale exists (their clusters name it in postgresql.conf), and libnss_wrapper is there
    # for uids without a passwd entry. No cluster created by the package (we make our own),
    # no docs or man pages. Patroni for HA_MODE=patroni, with python3-etcd named because
    # patroni only depends on one DCS client of several; pgBackRest and PgBouncer.
    mmdebstrap --variant=apt --quiet \
        --include="$packages" \
        --essential-hook='mkdir -p "$1/etc/postgresql-common" && echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.conf"' \
        --essential-hook='echo "postgres:x:999:" >> "$1/etc/group" && echo "postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash" >> "$1/etc/passwd"' \
        --essential-hook='if [ -e "$1/etc/shadow" ]; then echo "postgres:*:19000:0:99999:7:::" >> "$1/etc/shadow"; fi; if [ -e "$1/etc/gshadow" ]; then echo "postgres:!::" >> "$1/etc/gshadow"; fi' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --customize-hook='chroot "$1" localedef -i en_US -c -f UTF-8 -A /usr/share/locale/locale.alias en_US.UTF-8' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        "$suite" "$tar" "${sources[@]}" >&2
    docker import "$tar" "$base" >&2
    rm -rf "$(dirname "$tar")"
fi

cargo build --release --quiet
docker build --quiet -f docker/Dockerfile --build-arg PG_MAJOR="$major" --build-arg UPGRADE_FROM="$old_major" \
    --build-arg BUILDER_IMAGE="$base" --build-arg BASE_IMAGE="$base" \
    --build-arg PREBUILT=target/x86_64-unknown-linux-gnu/release/pg-entrypoint \
    -t "$image" . >&2
echo "$image"
