#!/usr/bin/env bash
# Brings the compose cluster up from nothing and answers a sample request:
#   1. builds chorus:local and chorus-etcd:local if they are missing (deploy/docker/build-images.sh),
#   2. starts 3 etcd members, 4 workers and 2 coordinators (deploy/compose/docker-compose.yml),
#   3. waits until a coordinator is ready, sends fixtures/digits/sample-request.json to
#      digits_soft and prints the answer.
# The cluster keeps running; deploy/compose/down.sh removes it.
#
# Env: CHORUS_HTTP_PORT_1/2 (published REST ports, default 8000 and 8010), CHORUS_GRPC_PORT_1/2
#      (published gRPC ports, default 8001 and 8011), CHORUS_ADMIN_PORT_1/2 (published admin
#      ports: /metrics, /chorus/workers, /v2/health/*; default 8002 and 8012), READY_TIMEOUT_S
#      (180), CHORUS_SECURE=1 (add secure/docker-compose.secure.yml: TLS, API keys, worker mTLS;
#      runs secure/make-secrets.sh first if CHORUS_SECRETS_DIR holds no secrets yet),
#      COMPOSE, COMPOSE_PROJECT_NAME, CHORUS_LEASE_TTL_SECS and the rest in docker-compose.yml.
set -euo pipefail
# shellcheck source=deploy/compose/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

port1=${CHORUS_HTTP_PORT_1:-8000}
port2=${CHORUS_HTTP_PORT_2:-8010}
grpc_port1=${CHORUS_GRPC_PORT_1:-8001}
grpc_port2=${CHORUS_GRPC_PORT_2:-8011}
admin_port1=${CHORUS_ADMIN_PORT_1:-8002}
admin_port2=${CHORUS_ADMIN_PORT_2:-8012}
timeout_s=${READY_TIMEOUT_S:-180}

if ! docker image inspect "${CHORUS_IMAGE:-chorus:local}" "${ETCD_IMAGE:-chorus-etcd:local}" >/dev/null 2>&1; then
    deploy/docker/build-images.sh
fi

# Secure: https with the generated CA, and the generated API key on every inference call.
scheme=http
client=()
if [ "${CHORUS_SECURE:-0}" = 1 ]; then
    ensure_secrets
    scheme=https
    client=(--cacert "$CHORUS_SECRETS_DIR/ca.crt" -H "Authorization: Bearer $(cat "$CHORUS_SECRETS_DIR/api-key.secret")")
fi

echo "up: starting project $COMPOSE_PROJECT_NAME with $COMPOSE${CHORUS_SECURE:+ (CHORUS_SECURE=$CHORUS_SECURE)}"
compose up --detach --remove-orphans

echo "up: waiting for a coordinator to be ready (GET /v2/health/ready on the admin ports 127.0.0.1:$admin_port1 or :$admin_port2)"
deadline=$((SECONDS + timeout_s))
ready=""
while [ -z "$ready" ]; do
    for i in 1 2; do
        admin=$admin_port1 port=$port1
        [ "$i" = 1 ] || { admin=$admin_port2 port=$port2; }
        if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$admin/v2/health/ready" 2>/dev/null; then
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
echo "Chorus is up: Open Inference Protocol v2 at $scheme://127.0.0.1:$port1 and $scheme://127.0.0.1:$port2 (REST), 127.0.0.1:$grpc_port1 and 127.0.0.1:$grpc_port2 (gRPC$([ "$scheme" = https ] && echo ", TLS"))"
echo "  admin (plain HTTP, no key): http://127.0.0.1:$admin_port1 and http://127.0.0.1:$admin_port2"
echo "  curl -s http://127.0.0.1:$admin_port1/chorus/workers"
echo "  curl -s http://127.0.0.1:$admin_port1/metrics"
if [ "$scheme" = https ]; then
    echo "  curl -s --cacert $CHORUS_SECRETS_DIR/ca.crt -H \"Authorization: Bearer \$(cat $CHORUS_SECRETS_DIR/api-key.secret)\" \\"
    echo "      https://127.0.0.1:$port1/v2/models/digits_soft/infer -d @fixtures/digits/sample-request.json"
    echo "  CHORUS_SECURE=1 deploy/compose/down.sh    # remove it"
else
    echo "  curl -s http://127.0.0.1:$port1/v2/models/digits_soft/infer -d @fixtures/digits/sample-request.json"
    echo "  deploy/compose/down.sh    # remove it"
fi
echo
echo "sample request to digits_soft on :$ready ->"
curl -fsS --max-time 10 "${client[@]}" "$scheme://127.0.0.1:$ready/v2/models/digits_soft/infer" \
    -H 'Content-Type: application/json' -d @fixtures/digits/sample-request.json
echo
