# pg-entrypoint runs a non-executable *.sh init script through this: the official image
# sources such scripts into its bash entrypoint, so they may use bash, its shell options and
# its helpers. The same here. $1 is the script. The temporary server is reached through
# PGHOST and PGPORT; POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD and PGDATA are exported.
set -Eeo pipefail

# usage: file_env VAR [DEFAULT]
# Sets and exports VAR from VAR, or from the file that VAR_FILE names.
file_env() {
	local var="$1" file_var="${1}_FILE" value="${2:-}"
	if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
		printf >&2 'error: both %s and %s are set; set one\n' "$var" "$file_var"
		exit 1
	fi
	if [ -n "${!var:-}" ]; then
		value="${!var}"
	elif [ -n "${!file_var:-}" ]; then
		value="$(< "${!file_var}")"
	fi
	export "$var"="$value"
	unset "$file_var"
}

# usage: docker_process_sql [psql arguments], e.g. -f file.sql, or SQL on stdin.
# psql as POSTGRES_USER on POSTGRES_DB, stopping at the first error.
docker_process_sql() {
	local runner=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
	if [ -n "$POSTGRES_DB" ]; then
		runner+=(--dbname "$POSTGRES_DB")
	fi
	"${runner[@]}" "$@"
}

# Scripts written for older official images call "${psql[@]}".
psql=(docker_process_sql)

# A script may restart the temporary server, e.g. to load shared_preload_libraries. pg_ctl
# restart reuses the server's options (no TCP listener, the private pg_hba.conf), also when
# the server was stopped; pg-entrypoint then follows the new server. The passwords stay out
# of the server's environment.
docker_temp_server_stop() {
	env -u POSTGRES_PASSWORD -u PGPASSWORD pg_ctl -D "$PGDATA" -m fast -w stop
}
docker_temp_server_start() {
	env -u POSTGRES_PASSWORD -u PGPASSWORD pg_ctl -D "$PGDATA" -w restart
}

. "$1"
