#!/usr/bin/env bash
# Starts the compose stack (primary + two replicas, HAProxy in front) and waits until all
# three are healthy.
# Creates random passwords in docker/secrets/ on first use. Extra arguments go to compose
# (e.g. `-f docker/compose.sync.yaml` is added by SYNC=1). IMAGE selects the image.
set -euo pipefail
cd "$(dirname "$0")"
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
mkdir -p secrets
for s in postgres_password replication_password; do
    [ -s "secrets/$s" ] || (umask 077 && head -c 18 /dev/urandom | base64 > "secrets/$s")
done
export SECRETS_DIR="${SECRETS_DIR:-$PWD/secrets}"
files=(-f compose.yaml)
[ "${SYNC:-0}" = 1 ] && files+=(-f compose.sync.yaml)
# HAProxy in front (5000 writes, 5001 reads) unless HAPROXY=0; its image is built offline
# when no HAPROXY_IMAGE is named.
if [ "${HAPROXY:-1}" = 1 ]; then
    files+=(-f compose.haproxy.yaml)
    [ -n "${HAPROXY_IMAGE:-}" ] || export HAPROXY_IMAGE="$(./build-offline.sh haproxy | tail -n 1)"
fi
project="${PROJECT:-pg}"
"${compose[@]}" "${files[@]}" -p "$project" up -d "$@"
for service in primary replica-1 replica-2; do
    id=$("${compose[@]}" "${files[@]}" -p "$project" ps -q "$service")
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]; do
        [ "$(docker inspect -f '{{.State.Running}}' "$id")" = true ] || { docker logs --tail 30 "$id"; exit 1; }
        sleep 1
    done
    echo "$service: $(docker exec "$id" pg-entrypoint health)"
done
echo "connect: PGPASSWORD=\$(cat docker/secrets/postgres_password) psql -h 127.0.0.1 -p 5432 -U postgres"
if [ "${HAPROXY:-1}" = 1 ]; then
    echo "through HAProxy: -p 5000 reaches the primary, -p 5001 a replica"
fi
