#!/usr/bin/env bash
# The whole test suite: install what is missing, then every unit, component and cross-process
# integration test of the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo test --workspace --locked "$@"
