# shellcheck shell=bash
# Shared by up.sh, down.sh and chaos.sh: which Compose to run, and on which project.
# COMPOSE overrides the choice ("docker compose" or "docker-compose"); COMPOSE_PROJECT_NAME the
# project (default chorus), which prefixes every container, network and volume.
# CHORUS_SECURE=1 adds secure/docker-compose.secure.yml (TLS, API keys, worker mTLS) on top of
# docker-compose.yml, with the secrets in CHORUS_SECRETS_DIR (default secure/secrets, made by
# secure/make-secrets.sh).
compose_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$compose_dir/../.." && pwd)
export repo_root
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-chorus}
export CHORUS_SECRETS_DIR=${CHORUS_SECRETS_DIR:-$compose_dir/secure/secrets}
# Absolute: compose resolves a relative path against docker-compose.yml's folder, not ours.
case $CHORUS_SECRETS_DIR in /*) ;; *) CHORUS_SECRETS_DIR=$PWD/$CHORUS_SECRETS_DIR ;; esac
compose_files=(--file "$compose_dir/docker-compose.yml")
if [ "${CHORUS_SECURE:-0}" = 1 ]; then
    compose_files+=(--file "$compose_dir/secure/docker-compose.secure.yml")
fi

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
    $COMPOSE --project-name "$COMPOSE_PROJECT_NAME" "${compose_files[@]}" "$@"
}

# With CHORUS_SECURE=1: makes the secrets if CHORUS_SECRETS_DIR has none yet (never replaces them).
ensure_secrets() {
    if [ "${CHORUS_SECURE:-0}" = 1 ] && [ ! -f "$CHORUS_SECRETS_DIR/api-keys.toml" ]; then
        "$compose_dir/secure/make-secrets.sh" "$CHORUS_SECRETS_DIR"
    fi
}
