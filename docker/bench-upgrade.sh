#!/usr/bin/env bash
# The upgrade bench (docs/upgrade.md): a PostgreSQL 15 volume of about 1 GB
# (pgbench scale 60 and a table of 1M words with a text index) is upgraded by the 17 upgrade
# image with POSTGRES_UPGRADE_METHOD=link and =copy; beside each, the bare tools doing the
# same on the same data (initdb + pg_upgrade, by hand in the same image). Every round works
# on fresh copies of one volume, the cases in an order that alternates between rounds;
# medians and ranges over ROUNDS (default 3). Needs Docker; builds the images offline.
set -euo pipefail
cd "$(dirname "$0")/.."
. docker/bench-lib.sh
rounds="${ROUNDS:-3}"
old=$(docker/build-offline.sh 15 | tail -n 1)
new=$(docker/build-offline.sh 17-upgrade | tail -n 1)
tag="pgep-bench-upgrade-$$"
data=/var/lib/postgresql/data

cleanup() {
    docker rm -f "$tag-src" "$tag-run" >/dev/null 2>&1 || true
    docker volume ls -q --filter "name=$tag" | xargs -r docker volume rm >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "making the PostgreSQL 15 volume..." >&2
docker run -d --name "$tag-src" -e POSTGRES_PASSWORD=x -v "$tag-src:$data" "$old" >/dev/null
healthy "$tag-src"
docker exec "$tag-src" pgbench -i -q -s 60 -U postgres postgres >/dev/null 2>&1
docker exec "$tag-src" psql -X -q -U postgres -c "CREATE TABLE words AS SELECT md5(i::text) AS w FROM generate_series(1, 1000000) i" -c "CREATE INDEX ON words (w)"
size=$(docker exec "$tag-src" psql -X -A -t -U postgres -c "SELECT pg_size_pretty(sum(pg_database_size(oid))) FROM pg_database")
docker stop "$tag-src" >/dev/null

# One case on a fresh copy of the volume; prints its seconds.
run_case() {
    local case="$1" vol="$tag-r" took
    docker volume rm "$vol" >/dev/null 2>&1 || true
    docker run --rm -v "$tag-src:/from" -v "$vol:/to" "$old" sh -c 'cp -a /from/. /to/'
    sync
    local start
    start=$(now)
    case "$case" in
        ours-link|ours-copy)
            docker run -d --name "$tag-run" -e POSTGRES_PASSWORD=x -e POSTGRES_UPGRADE=auto \
                -e POSTGRES_UPGRADE_METHOD="${case#ours-}" -v "$vol:$data" "$new" >/dev/null
            healthy "$tag-run"
            took=$(since "$start")
            docker rm -f "$tag-run" >/dev/null ;;
        bare-link|bare-copy)
            # What a user does by hand: a new cluster beside the old one on the same volume,
            # pg_upgrade, then the server started on it.
            docker run --rm --user postgres -e M="--${case#bare-}" -v "$vol:/v" "$new" sh -c '
                set -e; cd /tmp
                /usr/lib/postgresql/17/bin/initdb -D /v/new -U postgres >/dev/null
                /usr/lib/postgresql/17/bin/pg_upgrade -b /usr/lib/postgresql/15/bin -B /usr/lib/postgresql/17/bin \
                    -d /v -D /v/new -U postgres -s /tmp $M >/dev/null
                /usr/lib/postgresql/17/bin/pg_ctl -D /v/new -o "-k /tmp -c listen_addresses=" -w start >/dev/null'
            took=$(since "$start") ;;
    esac
    docker volume rm "$vol" >/dev/null
    echo "$took"
}

declare -A times
cases=(bare-link ours-link bare-copy ours-copy)
for round in $(seq "$rounds"); do
    order=("${cases[@]}")
    if [ $((round % 2)) -eq 0 ]; then order=(ours-link bare-link ours-copy bare-copy); fi
    for c in "${order[@]}"; do
        t=$(run_case "$c")
        times[$c]="${times[$c]:-} $t"
        echo "round $round: $c ${t}s" >&2
    done
done

echo
echo "Upgrade 15 -> 17 of a $size volume, $rounds rounds, $(nproc) cores, $(date -u +%Y-%m-%d)"
echo "| method | pg-entrypoint (docker run to healthy) | bare initdb + pg_upgrade + start | ratio of medians |"
echo "|---|---|---|---|"
for m in link copy; do
    # shellcheck disable=SC2086
    printf '| %s | %s | %s | %s |\n' "$m" "$(stats ${times[ours-$m]})" "$(stats ${times[bare-$m]})" \
        "$(ratio "${times[ours-$m]}" "${times[bare-$m]}")"
done
