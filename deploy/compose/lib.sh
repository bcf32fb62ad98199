# shellcheck shell=bash
# Shared by up.sh, down.sh and chaos.sh: which Compose to run, and on which project.
# COMPOSE overrides the choice ("docker compose" or "docker-compose"); COMPOSE_PROJECT_NAME the
# project (default chorus), which prefixes every container, network and volume.
compose_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$compose_dir/../.." && pwd)
export repo_root
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-chorus}

if [ -z "${COMPOSE:-}" ]; then
    if docker compose version >/dev/null 2>&1; then
        COMPOSE="docker compose"
    elif command -v docker-compose >/dev/null; then
        COMPOSE="docker-compose"
    else
        echo "neither 'docker compose' nor docker-compose is installed" >&2
        exit 1
    fi
fi

compose() {
    # shellcheck disable=SC2086 # COMPOSE is one or two words
    $COMPOSE --project-name "$COMPOSE_PROJECT_NAME" --file "$compose_dir/docker-compose.yml" "$@"
}
