#!/usr/bin/env bash
# The test suite, from a fresh machine: installs what is missing, then runs every test
# against real PostgreSQL processes. Run as root (the entrypoint's privilege drop is tested).
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: run as root: the tests start the entrypoint as a container would, as root" >&2
    exit 1
fi

scripts/ensure-deps.sh

cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast
else
    cargo test --no-fail-fast
fi
