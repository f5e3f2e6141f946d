#!/usr/bin/env bash
# Installs what the stack and the tests need on a fresh Debian machine, if missing.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v bash >/dev/null 2>&1 || need+=(bash)
# An arbitrary uid without a passwd entry (docker --user 12345) is tested through it.
ls /usr/lib/*/libnss_wrapper.so /usr/lib/libnss_wrapper.so >/dev/null 2>&1 || need+=(libnss-wrapper)
# HA_MODE=patroni is tested with Debian's Patroni on a real etcd; Patroni's etcd3 store needs
# python3-etcd, which the patroni package does not pull in.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v patroni >/dev/null 2>&1 || need+=(patroni)
python3 -c 'import etcd' >/dev/null 2>&1 || need+=(python3-etcd)
# PGBACKREST_ENABLE archives and backs up with Debian's pgBackRest.
command -v pgbackrest >/dev/null 2>&1 || need+=(pgbackrest)
# PGBOUNCER_ENABLE runs Debian's PgBouncer (in /usr/sbin); the package's own service is not used.
[ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
# /metrics is checked with promtool (check metrics, test rules), from Debian's prometheus.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# tests/kubernetes.rs validates deploy/kubernetes offline against Kubernetes' schemas; the
# S3 repository of tests/backup.rs is moto's server behind HAProxy for TLS (curl makes its
# bucket).
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
pip=()
python3 -c 'import kubernetes_validate, yaml' >/dev/null 2>&1 || pip+=(kubernetes-validate)
python3 -c 'import moto.server, flask, cryptography' >/dev/null 2>&1 || pip+=('moto[server]')
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    "$(dirname "$0")/apt-install.sh" "${need[@]}"
fi
if [ "${#pip[@]}" -gt 0 ]; then
    echo "installing ${pip[*]} (PyPI)" >&2
    python3 -m pip install --quiet --root-user-action=ignore "${pip[@]}" ||
        python3 -m pip install --quiet --root-user-action=ignore --break-system-packages "${pip[@]}"
fi
