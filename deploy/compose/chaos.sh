#!/usr/bin/env bash
# The chaos suite on the compose cluster (deploy/compose/chaos/chaos.py): brings up its own
# project (chorus-chaos, coordinators on 127.0.0.1:18000 and :18010, their gRPC on :18001 and
# :18011, their admin ports on :18002 and :18012, worker lease TTL 3 s), runs every scenario
# under load, prints the figures, and removes every container, network and volume of the project
# on the way out, whether the suite passed, failed or was interrupted.
# Exits non-zero when a scenario misses its pass criteria.
#
# Usage: deploy/compose/chaos.sh [--secure] [--loads light,real,near] [--only worker-kill,gray-failure,...] [--rate N]
#        (default: every scenario at the light and the real load; --rate runs one custom load)
#        --secure   the secure overlay (secure/docker-compose.secure.yml): fresh throwaway
#                   secrets from secure/make-secrets.sh in $CHAOS_ARTIFACTS/secrets; the load
#                   then speaks https trusting that CA and sends the API key on every request
#                   (TLS on the gateway, API keys and worker mTLS all on)
# Env:   CHAOS_ARTIFACTS (default target/chaos: results.json and the containers' logs),
#        KEEP=1 (leave the cluster up afterwards), COMPOSE.
set -euo pipefail
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-chorus-chaos}
export CHORUS_HTTP_PORT_1=${CHORUS_HTTP_PORT_1:-18000}
export CHORUS_HTTP_PORT_2=${CHORUS_HTTP_PORT_2:-18010}
# The suite does not use gRPC; off the defaults so that it can run beside a `chorus` project.
export CHORUS_GRPC_PORT_1=${CHORUS_GRPC_PORT_1:-18001}
export CHORUS_GRPC_PORT_2=${CHORUS_GRPC_PORT_2:-18011}
# Readiness and /chorus/workers: plain HTTP without a key, with or without --secure.
export CHORUS_ADMIN_PORT_1=${CHORUS_ADMIN_PORT_1:-18002}
export CHORUS_ADMIN_PORT_2=${CHORUS_ADMIN_PORT_2:-18012}
export CHORUS_LEASE_TTL_SECS=${CHORUS_LEASE_TTL_SECS:-3}
args=()
for arg in "$@"; do
    if [ "$arg" = --secure ]; then export CHORUS_SECURE=1; else args+=("$arg"); fi
done
artifacts=${CHAOS_ARTIFACTS:-target/chaos}
cd "$(dirname "$0")/../.."
if [ "${CHORUS_SECURE:-0}" = 1 ]; then
    # Its own secrets, made afresh each run (the suite's cluster is throwaway too).
    export CHORUS_SECRETS_DIR=${CHORUS_SECRETS_DIR:-$artifacts/secrets}
fi
# shellcheck source=deploy/compose/lib.sh
source deploy/compose/lib.sh
mkdir -p "$artifacts"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    compose logs --no-color --timestamps >"$artifacts/compose.log" 2>&1 || true
    if [ "${KEEP:-0}" = 1 ]; then
        echo "chaos: KEEP=1, leaving project $COMPOSE_PROJECT_NAME up (deploy/compose/down.sh with COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME removes it)"
    else
        # A paused container cannot be stopped; compose down would leave it behind.
        for id in $(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --filter status=paused); do
            docker unpause "$id" >/dev/null 2>&1 || true
        done
        compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
        docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" |
            xargs -r docker rm -f >/dev/null 2>&1 || true
        echo "chaos: removed project $COMPOSE_PROJECT_NAME (logs in $artifacts/compose.log)"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! docker image inspect "${CHORUS_IMAGE:-chorus:local}" "${ETCD_IMAGE:-chorus-etcd:local}" >/dev/null 2>&1; then
    deploy/docker/build-images.sh
fi
# Start from nothing: a previous run that was killed outright may have left its project behind.
compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
secure_args=()
if [ "${CHORUS_SECURE:-0}" = 1 ]; then
    deploy/compose/secure/make-secrets.sh --force "$CHORUS_SECRETS_DIR"
    secure_args=(--compose-file deploy/compose/docker-compose.yml
                 --compose-file deploy/compose/secure/docker-compose.secure.yml
                 --cafile "$CHORUS_SECRETS_DIR/ca.crt" --api-key-file "$CHORUS_SECRETS_DIR/api-key.secret")
fi
echo "chaos: starting project $COMPOSE_PROJECT_NAME (lease TTL ${CHORUS_LEASE_TTL_SECS} s$([ "${CHORUS_SECURE:-0}" = 1 ] && echo ", secure: gateway TLS, API keys, worker mTLS")) with $COMPOSE"
if ! compose up --detach >"$artifacts/up.log" 2>&1; then
    cat "$artifacts/up.log" >&2
    exit 1
fi

python3 deploy/compose/chaos/chaos.py --compose "$COMPOSE" --project "$COMPOSE_PROJECT_NAME" \
    --ports "$CHORUS_HTTP_PORT_1,$CHORUS_HTTP_PORT_2" --admin-ports "$CHORUS_ADMIN_PORT_1,$CHORUS_ADMIN_PORT_2" \
    --ttl "$CHORUS_LEASE_TTL_SECS" --results "$artifacts/results.json" "${secure_args[@]}" "${args[@]}"
