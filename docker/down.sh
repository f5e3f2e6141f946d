#!/usr/bin/env bash
# Stops and removes what docker/up.sh started: the same compose project (PROJECT, default pg)
# and compose files, chosen from the same variables (PATRONI=1, SYNC, TLS, HAPROXY). Without
# PATRONI, the Patroni stack is recognised by its pg-1 container. Containers of the project
# that the chosen files do not name are removed too (--remove-orphans).
# The named volumes (the data) are kept; VOLUMES=1 removes them too (down -v).
# docker/secrets and docker/tls are left in place. Extra arguments go to `compose down`.
set -euo pipefail
cd "$(dirname "$0")"
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
# compose refuses to read the files without these (${SECRETS_DIR:?...}, ${TLS_DIR:?...});
# down reads neither the passwords nor the certificates.
export SECRETS_DIR="${SECRETS_DIR:-$PWD/secrets}"
project="${PROJECT:-pg}"
patroni="${PATRONI:-}"
if [ -z "$patroni" ]; then
    patroni=0
    if [ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=pg-1")" ]; then
        patroni=1
    fi
fi
if [ "$patroni" = 1 ]; then
    files=(-f compose.patroni.yaml)
else
    files=(-f compose.yaml)
    [ "${SYNC:-0}" = 1 ] && files+=(-f compose.sync.yaml)
    if [ "${TLS:-0}" = 1 ]; then
        files+=(-f compose.tls.yaml)
        export TLS_DIR="${TLS_DIR:-$PWD/tls}"
    fi
    [ "${HAPROXY:-1}" = 1 ] && files+=(-f compose.haproxy.yaml)
fi
# The backup repository volume (BACKUP=1) is named by the backup file: always read, so
# VOLUMES=1 removes it too.
if [ "$patroni" = 1 ]; then files+=(-f compose.patroni.backup.yaml); else files+=(-f compose.backup.yaml); fi
# Prometheus (MONITORING=1) is a service of the project that no other file names:
# --remove-orphans removes it.
args=(--remove-orphans)
[ "${VOLUMES:-0}" = 1 ] && args+=(-v)
"${compose[@]}" "${files[@]}" -p "$project" down "${args[@]}" "$@"
