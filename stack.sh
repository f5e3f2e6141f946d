#!/usr/bin/env bash
# A primary and a replica on this machine, run by pg-entrypoint exactly as in containers
# (as root, dropping to `postgres`): primary on 127.0.0.1:55432, replica on 127.0.0.1:55433,
# their HTTP endpoints on 58008 and 58009.
# Passwords come from files (POSTGRES_PASSWORD_FILE, REPLICATION_PASSWORD_FILE).
# Ctrl-C (or SIGTERM) stops both with a clean shutdown. STACK_DIR sets where data lives.
set -euo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" -ne 0 ]; then
    echo "stack.sh: run as root, as a container entrypoint is" >&2
    exit 1
fi
scripts/ensure-deps.sh
cargo build --release --quiet
bin="$PWD/target/x86_64-unknown-linux-gnu/release/pg-entrypoint"
dir="${STACK_DIR:-/tmp/pg-entrypoint-stack}"
mkdir -p "$dir"
chmod 755 "$dir"
for secret in postgres-password replication-password; do
    [ -s "$dir/$secret" ] || (umask 077 && head -c 18 /dev/urandom | base64 > "$dir/$secret")
done
bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"

node() { # name port extra-env...
    local name=$1 port=$2
    shift 2
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PGDATA="$dir/$name" HA_MODE=native \
        POSTGRES_PASSWORD_FILE="$dir/postgres-password" REPLICATION_PASSWORD_FILE="$dir/replication-password" \
        POSTGRESQL_CONFIG_PORT="$port" POSTGRESQL_CONFIG_UNIX_SOCKET_DIRECTORIES="$dir/run" \
        "$@" "$bin" >"$dir/$name.log" 2>&1 &
}

node primary 55432 ROLE=primary HTTP_PORT=58008
primary=$!
# The replica may start first: it waits for the primary by itself.
node replica 55433 ROLE=replica PRIMARY_HOST=127.0.0.1 PRIMARY_PORT=55432 REPLICA_NAME=replica-1 HTTP_PORT=58009
replica=$!

stop() {
    echo "stopping (SIGTERM)..."
    kill -TERM "$replica" "$primary" 2>/dev/null || true
    wait "$replica"; r=$?
    wait "$primary"; p=$?
    echo "exit codes: primary $p, replica $r (logs in $dir)"
    exit 0
}
trap stop INT TERM

export PGPASSWORD
PGPASSWORD="$(cat "$dir/postgres-password")"
sql() { "$bindir/psql" -X -A -t -h 127.0.0.1 -p "$1" -U postgres -c "$2"; }
for port in 55432 55433; do
    until "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; do
        kill -0 "$primary" "$replica" 2>/dev/null || { echo "a node exited; see $dir/*.log" >&2; tail -n 20 "$dir"/*.log; exit 1; }
        sleep 0.2
    done
done
sql 55432 "CREATE TABLE IF NOT EXISTS hello (at timestamptz DEFAULT now()); INSERT INTO hello DEFAULT VALUES;" >/dev/null
until [ "$(sql 55433 "SELECT count(*) FROM hello" 2>/dev/null)" = "$(sql 55432 "SELECT count(*) FROM hello")" ]; do sleep 0.1; done
echo "primary 127.0.0.1:55432 and replica 127.0.0.1:55433 are up; a row written on the primary is on the replica."
sql 55432 "SELECT 'streaming to ' || application_name || ' (' || state || ', slot ' || coalesce((SELECT slot_name FROM pg_replication_slots WHERE active_pid = pid), '-') || ')' FROM pg_stat_replication"
echo "connect: PGPASSWORD=\$(cat $dir/postgres-password) psql -h 127.0.0.1 -p 55432 -U postgres"
echo "Ctrl-C stops both."
wait
