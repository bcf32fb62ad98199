#!/usr/bin/env bash
# Brings the compose cluster up from nothing and answers a sample request:
#   1. builds chorus:local and chorus-etcd:local if they are missing (deploy/docker/build-images.sh),
#   2. starts 3 etcd members, 4 workers and 2 coordinators (deploy/compose/docker-compose.yml),
#   3. waits until a coordinator is ready, sends fixtures/digits/sample-request.json to
#      digits_soft and prints the answer.
# The cluster keeps running; deploy/compose/down.sh removes it.
#
# Env: CHORUS_HTTP_PORT_1/2 (published REST ports, default 8000 and 8010), CHORUS_GRPC_PORT_1/2
#      (published gRPC ports, default 8001 and 8011), READY_TIMEOUT_S (180),
#      COMPOSE, COMPOSE_PROJECT_NAME, CHORUS_LEASE_TTL_SECS and the rest in docker-compose.yml.
set -euo pipefail
# shellcheck source=deploy/compose/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

port1=${CHORUS_HTTP_PORT_1:-8000}
port2=${CHORUS_HTTP_PORT_2:-8010}
grpc_port1=${CHORUS_GRPC_PORT_1:-8001}
grpc_port2=${CHORUS_GRPC_PORT_2:-8011}
timeout_s=${READY_TIMEOUT_S:-180}

if ! docker image inspect "${CHORUS_IMAGE:-chorus:local}" "${ETCD_IMAGE:-chorus-etcd:local}" >/dev/null 2>&1; then
    deploy/docker/build-images.sh
fi

echo "up: starting project $COMPOSE_PROJECT_NAME with $COMPOSE"
compose up --detach --remove-orphans

echo "up: waiting for a coordinator to be ready (GET /v2/health/ready on 127.0.0.1:$port1 or :$port2)"
deadline=$((SECONDS + timeout_s))
ready=""
while [ -z "$ready" ]; do
    for port in "$port1" "$port2"; do
        if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/v2/health/ready" 2>/dev/null; then
            ready=$port
            break
        fi
    done
    if [ -z "$ready" ]; then
        if [ $SECONDS -ge $deadline ]; then
            echo "up: no coordinator became ready within ${timeout_s}s" >&2
            compose ps >&2
            compose logs --tail 20 >&2
            exit 1
        fi
        sleep 1
    fi
done

compose ps
echo
echo "Chorus is up: Open Inference Protocol v2 at http://127.0.0.1:$port1 and http://127.0.0.1:$port2 (REST), 127.0.0.1:$grpc_port1 and 127.0.0.1:$grpc_port2 (gRPC)"
echo "  curl -s http://127.0.0.1:$port1/chorus/workers"
echo "  curl -s http://127.0.0.1:$port1/v2/models/digits_soft/infer -d @fixtures/digits/sample-request.json"
echo "  deploy/compose/down.sh    # remove it"
echo
echo "sample request to digits_soft on :$ready ->"
curl -fsS --max-time 10 "http://127.0.0.1:$ready/v2/models/digits_soft/infer" \
    -H 'Content-Type: application/json' -d @fixtures/digits/sample-request.json
echo
