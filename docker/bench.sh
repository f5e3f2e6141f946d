#!/usr/bin/env bash
# Docker-level figures (README "The two commands"), part of the Docker suite's report: the
# image's size next to its base; `docker run` to healthy (`pg-entrypoint health`) on an empty
# volume for a standalone server, a primary and a replica of it; `docker stop` of the primary
# while pgbench writes (8 clients), to its exit, with its exit code. ROUNDS rounds (default
# 5), median and range. Usage: IMAGE=<tag> docker/bench.sh (default: the 17 image, built
# offline).
set -euo pipefail
cd "$(dirname "$0")/.."
. docker/bench-lib.sh
rounds="${ROUNDS:-5}"
image="${IMAGE:-$(docker/build-offline.sh 17 | tail -n 1)}"
tag="pgep-bench-$$"
docker network create "$tag" >/dev/null

cleanup() {
    docker rm -f -v "$tag-s" "$tag-p" "$tag-r" >/dev/null 2>&1 || true
    docker network rm "$tag" >/dev/null 2>&1 || true
}
trap cleanup EXIT

common=(--network "$tag" -e POSTGRES_PASSWORD=x -e REPLICATION_PASSWORD=r)
declare -A times
stops_clean=0
for round in $(seq "$rounds"); do
    start=$(now)
    docker run -d --name "$tag-s" "${common[@]}" "$image" >/dev/null
    healthy "$tag-s"
    times[standalone]="${times[standalone]:-} $(since "$start")"
    docker rm -f -v "$tag-s" >/dev/null

    start=$(now)
    docker run -d --name "$tag-p" "${common[@]}" -e HA_MODE=native -e REPLICATION_ROLE=primary "$image" >/dev/null
    healthy "$tag-p"
    times[primary]="${times[primary]:-} $(since "$start")"

    start=$(now)
    docker run -d --name "$tag-r" "${common[@]}" -e HA_MODE=native -e REPLICATION_ROLE=replica \
        -e PRIMARY_HOST="$tag-p" "$image" >/dev/null
    healthy "$tag-r"
    times[replica]="${times[replica]:-} $(since "$start")"

    docker exec "$tag-p" pgbench -i -q -s 5 -U postgres postgres >/dev/null 2>&1
    docker exec -d "$tag-p" pgbench -c 8 -T 300 -U postgres postgres
    # Under load: a few hundred commits before the stop.
    deadline=$((SECONDS + 60))
    until [ "$(docker exec "$tag-p" psql -X -A -t -U postgres -c 'SELECT count(*) >= 500 FROM pgbench_history')" = t ]; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "bench.sh: pgbench wrote too little within 60 s" >&2; exit 1; }
        sleep 0.1
    done
    start=$(now)
    docker stop "$tag-p" >/dev/null
    times[stop]="${times[stop]:-} $(since "$start")"
    [ "$(docker wait "$tag-p")" = 0 ] && stops_clean=$((stops_clean + 1))
    docker rm -f -v "$tag-p" "$tag-r" >/dev/null
    echo "round $round done" >&2
done

base=$(docker inspect -f '{{index .Config.Labels "org.opencontainers.image.base.name"}}' "$image")
mib() { docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.0f MiB", $1 / 1048576 }'; }
echo
echo "Docker figures for $image, $rounds rounds, $(nproc) cores, $(date -u +%Y-%m-%d): median (range)"
echo "| case | time |"
echo "|---|---|"
# shellcheck disable=SC2086
{
    echo "| docker run to healthy, standalone (empty volume) | $(stats ${times[standalone]}) |"
    echo "| docker run to healthy, primary (empty volume) | $(stats ${times[primary]}) |"
    echo "| docker run to healthy, replica (clone of a fresh primary) | $(stats ${times[replica]}) |"
    echo "| docker stop of the primary under pgbench (8 clients) | $(stats ${times[stop]}), exit 0 in $stops_clean/$rounds |"
}
echo "| image size | $(mib "$image") (base $base: $(mib "$base")) |"
