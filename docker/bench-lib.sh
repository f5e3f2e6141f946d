# Helpers of the Docker benches (docker/bench.sh, docker/bench-upgrade.sh), sourced.

now() { date +%s.%N; }

# Seconds from $1 to now.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# Waits until the container's postgres answers as its role should (`pg-entrypoint health`,
# polled every 0.1 s); a container that stops meanwhile, or is not healthy within 300 s, ends
# the bench with its log.
healthy() {
    local deadline=$((SECONDS + 300))
    until docker exec "$1" pg-entrypoint health >/dev/null 2>&1; do
        if [ "$(docker inspect -f '{{.State.Running}}' "$1")" != true ] || [ "$SECONDS" -ge "$deadline" ]; then
            docker logs "$1" 2>&1 | tail -n 20 >&2
            echo "bench: $1 not healthy" >&2
            exit 1
        fi
        sleep 0.1
    done
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }

# "median s (min-max)" of the numbers given.
stats() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f s (%.1f-%.1f)", m, a[1], a[NR]}'
}

# The ratio of the medians of two space-separated lists.
ratio() { awk -v a="$(median $1)" -v b="$(median $2)" 'BEGIN { printf "%.2f", a / b }'; }
