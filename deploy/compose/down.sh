#!/usr/bin/env bash
# Removes what deploy/compose/up.sh made: every container, network and volume of the project.
# The images stay (they are the build cache); --images removes them too.
#
# Usage: deploy/compose/down.sh [--images]
set -euo pipefail
# shellcheck source=deploy/compose/lib.sh
source "$(dirname "$0")/lib.sh"

compose down --volumes --remove-orphans --timeout 20
if [ "${1:-}" = "--images" ]; then
    docker rmi "${CHORUS_IMAGE:-chorus:local}" "${ETCD_IMAGE:-chorus-etcd:local}" "${BASE_IMAGE:-chorus-base:bookworm}" 2>/dev/null || true
fi
