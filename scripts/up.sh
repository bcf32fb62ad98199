#!/usr/bin/env bash
# The quick start: install what is missing, build Chorus (release), start a local cluster
# (coordinator + workers on the sample models), answer a sample request, serve until Ctrl-C.
# Extra arguments go to `chorus up` (see `chorus up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p chorus
exec target/release/chorus up "$@"
