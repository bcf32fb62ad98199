#!/usr/bin/env bash
# The deployment checks, for CI after the unit and integration tests (and for anyone by hand):
#   1. installs what is missing: debootstrap and kubectl (apt), the ONNX Runtime wheel
#      (scripts/install-deps.sh), kubernetes-validate (deploy/.venv);
#   2. builds the release binary and the images without a registry (deploy/docker/build-images.sh);
#   3. validates the compose file and the Kubernetes overlays offline;
#   4. brings the compose cluster up and down once with the documented commands;
#   5. runs the chaos suite on its own compose project with the secure overlay on
#      (deploy/compose/chaos.sh --secure: gateway TLS, API keys and worker mTLS, throwaway
#      secrets made by deploy/compose/secure/make-secrets.sh), at the light and the real load.
# Every container, network and volume it starts is removed on the way out, pass or fail; the
# images stay, as the cache for the next run (build-images.sh rebuilds them when an input changes).
#
# Usage: deploy/ci.sh [--force-images]
#   --force-images   rebuild all three images from nothing (build-images.sh --force), as on a
#                    fresh CI machine, instead of keeping those whose inputs did not change
#
# Needs root (apt, debootstrap) and a running Docker engine. CARGO_BUILD_JOBS defaults to 2;
# CHAOS_ARGS goes to deploy/compose/chaos.sh (e.g. "--only worker-kill,rolling-restart");
# CHAOS_SECURE=0 runs the suite on the plain cluster instead.
set -euo pipefail
cd "$(dirname "$0")/.."

image_args=()
for arg in "$@"; do
    case "$arg" in
        --force-images) image_args=(--force) ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "deploy/ci.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

started=$SECONDS
step() { echo; echo "=== deploy/ci.sh: $* ($((SECONDS - started)) s)"; }

smoke_project=chorus-ci-smoke
cleanup() {
    local rc=$?
    COMPOSE_PROJECT_NAME=$smoke_project deploy/compose/down.sh >/dev/null 2>&1 || true
    echo "=== deploy/ci.sh: finished with status $rc after $((SECONDS - started)) s"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "installing what is missing"
docker info >/dev/null 2>&1 || { echo "deploy/ci.sh: the Docker engine is not running" >&2; exit 1; }
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 ||
    { echo "deploy/ci.sh: neither docker-compose nor 'docker compose' is installed" >&2; exit 1; }
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v kubectl >/dev/null || missing+=(kubectl)
command -v objcopy >/dev/null || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
    echo "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
scripts/install-deps.sh

step "release build"
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} cargo build --release --locked -p chorus

step "images (no registry)"
deploy/docker/build-images.sh "${image_args[@]}"
docker run --rm chorus:local --help >/dev/null

step "compose file and Kubernetes manifests (offline)"
deploy/k8s/validate.sh
deploy/compose/validate.sh

step "compose up/down smoke test"
COMPOSE_PROJECT_NAME=$smoke_project CHORUS_HTTP_PORT_1=18100 CHORUS_HTTP_PORT_2=18110 \
    CHORUS_GRPC_PORT_1=18101 CHORUS_GRPC_PORT_2=18111 \
    CHORUS_ADMIN_PORT_1=18102 CHORUS_ADMIN_PORT_2=18112 deploy/compose/up.sh
COMPOSE_PROJECT_NAME=$smoke_project deploy/compose/down.sh
left=$(docker ps -aq --filter "label=com.docker.compose.project=$smoke_project")
[ -z "$left" ] || { echo "deploy/ci.sh: down.sh left containers behind: $left" >&2; exit 1; }

step "chaos suite"
chaos_args=()
[ "${CHAOS_SECURE:-1}" = 0 ] || chaos_args=(--secure)
# shellcheck disable=SC2086 # CHAOS_ARGS is a list of arguments, e.g. "--only worker-kill"
deploy/compose/chaos.sh "${chaos_args[@]}" ${CHAOS_ARGS:-}
