#!/usr/bin/env bash
# apt-get install of the named packages, as every script here does it: non-interactive, a
# fresh package list first, and up to three tries 20 s apart. A mirror that is mid-sync or a
# dpkg lock held by another apt (exit code 100 either way) should not fail a whole CI run.
# Usage: scripts/apt-install.sh PACKAGE...
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
for try in 1 2 3; do
    if apt-get -o DPkg::Lock::Timeout=300 update -qq &&
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@" >/dev/null; then
        exit 0
    fi
    [ "$try" -lt 3 ] || break
    echo "apt-install.sh: installing $* failed (try $try of 3); trying again in 20 s" >&2
    sleep 20
done
echo "apt-install.sh: could not install $* (apt-get failed three times, see above)" >&2
exit 100
