#!/usr/bin/env bash
# Starts the compose stack (primary + two replicas, HAProxy in front) and waits until all
# three are healthy.
# Creates random passwords in docker/secrets/ on first use. Extra arguments go to compose
# (e.g. `-f docker/compose.sync.yaml` is added by SYNC=1; TLS=1 adds compose.tls.yaml with
# certificates made by docker/tls-certs.sh in docker/tls). IMAGE selects the image.
# PATRONI=1 starts docker/compose.patroni.yaml instead: pg-1..pg-3 under Patroni on three etcd
# members, HAProxy always in front (HAPROXY is ignored); it is synchronous by default
# (REPLICATION_SYNCHRONOUS_MODE=on), SYNC=0 there means off. MONITORING=1 adds Prometheus
# with the alert rules (compose.monitoring.yaml, docs/metrics.md) on 127.0.0.1:9090.
# BACKUP=1 adds archiving and scheduled backups with pgBackRest to a repository volume every
# member mounts (compose.backup.yaml, or compose.patroni.backup.yaml; docs/backup.md);
# BACKUP=s3 to a bucket of a local S3-compatible server instead (compose.backup-s3.yaml,
# native stack; S3_IMAGE, when not given, is built offline).
# POOLER=1 adds PgBouncer on every member (compose.pooler.yaml, native stack; the primary's on
# 127.0.0.1:6432) and sends HAProxy's ports to the poolers.
# ETCD_IMAGE / HAPROXY_IMAGE / PROMETHEUS_IMAGE, when not given, are built offline.
set -euo pipefail
cd "$(dirname "$0")"
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
mkdir -p secrets
for s in postgres_password replication_password patroni_restapi_password s3_key_secret; do
    [ -s "secrets/$s" ] || (umask 077 && head -c 18 /dev/urandom | base64 > "secrets/$s")
done
export SECRETS_DIR="${SECRETS_DIR:-$PWD/secrets}"
if [ "${PATRONI:-0}" = 1 ]; then
    files=(-f compose.patroni.yaml)
    members=(pg-1 pg-2 pg-3)
    haproxy=1
    [ "${SYNC:-1}" = 0 ] && export REPLICATION_SYNCHRONOUS_MODE="${REPLICATION_SYNCHRONOUS_MODE:-off}"
    [ -n "${ETCD_IMAGE:-}" ] || export ETCD_IMAGE="$(./build-offline.sh etcd | tail -n 1)"
    [ -n "${HAPROXY_IMAGE:-}" ] || export HAPROXY_IMAGE="$(./build-offline.sh haproxy | tail -n 1)"
else
    files=(-f compose.yaml)
    members=(primary replica-1 replica-2)
    haproxy="${HAPROXY:-1}"
    [ "${SYNC:-0}" = 1 ] && files+=(-f compose.sync.yaml)
    # TLS=1: TLS required everywhere, replicas verifying their primary (compose.tls.yaml).
    if [ "${TLS:-0}" = 1 ]; then
        files+=(-f compose.tls.yaml)
        export TLS_DIR="${TLS_DIR:-$(./tls-certs.sh "$PWD/tls" | tail -n 1)}"
    fi
    if [ "${POOLER:-0}" = 1 ]; then
        files+=(-f compose.pooler.yaml)
        export PG_BACKEND_PORT="${PG_BACKEND_PORT:-6432}"
    fi
    # HAProxy in front (5000 writes, 5001 reads) unless HAPROXY=0; its image is built offline
    # when no HAPROXY_IMAGE is named.
    if [ "$haproxy" = 1 ]; then
        files+=(-f compose.haproxy.yaml)
        [ -n "${HAPROXY_IMAGE:-}" ] || export HAPROXY_IMAGE="$(./build-offline.sh haproxy | tail -n 1)"
    fi
fi
case "${BACKUP:-0}" in
    0) ;;
    1) if [ "${PATRONI:-0}" = 1 ]; then files+=(-f compose.patroni.backup.yaml); else files+=(-f compose.backup.yaml); fi ;;
    s3)
        [ "${PATRONI:-0}" = 1 ] && { echo "up.sh: BACKUP=s3 is for the native stack; use BACKUP=1 with PATRONI=1" >&2; exit 2; }
        files+=(-f compose.backup-s3.yaml)
        [ -n "${S3_IMAGE:-}" ] || export S3_IMAGE="$(./build-offline.sh s3 | tail -n 1)" ;;
    *) echo "up.sh: BACKUP=$BACKUP is not offered; accepted: 1 (a shared volume), s3" >&2; exit 2 ;;
esac
if [ "${MONITORING:-0}" = 1 ]; then
    files+=(-f compose.monitoring.yaml)
    [ "${PATRONI:-0}" = 1 ] && export PROMETHEUS_CONFIG="${PROMETHEUS_CONFIG:-prometheus.patroni.yml}"
    [ -n "${PROMETHEUS_IMAGE:-}" ] || export PROMETHEUS_IMAGE="$(./build-offline.sh prometheus | tail -n 1)"
fi
project="${PROJECT:-pg}"
"${compose[@]}" "${files[@]}" -p "$project" up -d "$@"
for service in "${members[@]}"; do
    id=$("${compose[@]}" "${files[@]}" -p "$project" ps -q "$service")
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]; do
        [ "$(docker inspect -f '{{.State.Running}}' "$id")" = true ] || { docker logs --tail 30 "$id"; exit 1; }
        sleep 1
    done
    echo "$service: $(docker exec "$id" pg-entrypoint health)"
done
if [ "${PATRONI:-0}" = 1 ]; then
    echo "connect: PGPASSWORD=\$(cat docker/secrets/postgres_password) psql -h 127.0.0.1 -p 5000 -U postgres   (the leader; -p 5001 a replica)"
    echo "members: docker exec ${id:0:12} patronictl list"
else
    echo "connect: PGPASSWORD=\$(cat docker/secrets/postgres_password) psql -h 127.0.0.1 -p 5432 -U postgres"
    if [ "${TLS:-0}" = 1 ]; then
        echo "TLS is required: add \"sslmode=verify-full sslrootcert=$TLS_DIR/ca.crt host=localhost\""
    fi
    if [ "$haproxy" = 1 ]; then
        echo "through HAProxy: -p 5000 reaches the primary, -p 5001 a replica"
    fi
    if [ "${POOLER:-0}" = 1 ]; then
        echo "PgBouncer: -p 6432 (the primary's); switchover: docker exec ${id:0:12} pg-entrypoint switchover"
    fi
fi
if [ "${BACKUP:-0}" != 0 ]; then
    echo "backups: docker exec ${id:0:12} pg-entrypoint backup list   (on the primary: backup [full|diff|incr], backup verify)"
fi
if [ "${MONITORING:-0}" = 1 ]; then
    echo "Prometheus: http://127.0.0.1:9090/alerts (rules: deploy/prometheus/alerts.yml)"
fi
