#!/usr/bin/env bash
# Builds Chorus's images on a Docker engine that cannot pull anything (no registry):
#   chorus-base:bookworm   Debian bookworm minbase made with debootstrap (make-base.sh)
#   chorus:local           deploy/docker/Dockerfile on that base, binary built on this host
#   chorus-etcd:local      deploy/docker/etcd.Dockerfile on that base (Debian's etcd-server)
#
# Idempotent: an image whose inputs (binary, ONNX Runtime library, models, configs, Dockerfile,
# base) have not changed since it was built is kept; --force rebuilds all three.
# target/release/chorus is built first if it is missing (CARGO_BUILD_JOBS defaults to 1);
# --build runs cargo build --release again in any case, to pick up source changes.
#
# Usage: deploy/docker/build-images.sh [--force] [--build]
# Env:   CHORUS_IMAGE, ETCD_IMAGE, BASE_IMAGE (tags), CHORUS_BINARY (a prebuilt binary to use),
#        ORT_LIBRARY (libonnxruntime.so.X to use), DEBIAN_MIRROR (see make-base.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

CHORUS_IMAGE=${CHORUS_IMAGE:-chorus:local}
ETCD_IMAGE=${ETCD_IMAGE:-chorus-etcd:local}
BASE_IMAGE=${BASE_IMAGE:-chorus-base:bookworm}
ORT_VERSION=1.31.1
force=0 build=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --build) build=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "build-images: unknown argument $arg" >&2; exit 2 ;;
    esac
done

log() { echo "build-images: $*"; }
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_label() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }
# The classic builder is what a bare engine has (no buildx): BuildKit would need it. --force-rm:
# a failed step leaves no container behind.
docker_build() {
    local out
    if ! out=$(DOCKER_BUILDKIT=0 docker build --force-rm "$@" 2>&1); then
        echo "$out" | tail -n 30 >&2
        echo "build-images: docker build $* failed" >&2
        return 1
    fi
}

# Removes the image a tag pointed at before a rebuild, unless something else still uses it.
drop_replaced() {
    local old=$1 tag=$2
    if [ -n "$old" ] && [ "$old" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]; then
        docker rmi "$old" >/dev/null 2>&1 || true
    fi
}

# 1. Base image.
old_base=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
if [ "$force" = 1 ] || [ -z "$old_base" ]; then
    deploy/docker/make-base.sh "$BASE_IMAGE"
else
    log "$BASE_IMAGE exists"
fi
base_id=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")

# 2. chorus: binary and ONNX Runtime library from this host, staged into a small context.
binary=${CHORUS_BINARY:-target/release/chorus}
if [ -z "${CHORUS_BINARY:-}" ] && { [ "$build" = 1 ] || [ ! -x "$binary" ]; }; then
    log "cargo build --release -p chorus (CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1})"
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --locked -p chorus
fi
[ -x "$binary" ] || { echo "build-images: no chorus binary at $binary" >&2; exit 1; }
ort=${ORT_LIBRARY:-.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION}
if [ ! -f "$ort" ]; then
    log "ONNX Runtime library missing; running scripts/install-deps.sh"
    scripts/install-deps.sh
fi

work=deploy/docker/.stage
rm -rf "$work"
stage=$work/chorus
mkdir -p "$stage/dist/lib" "$stage/deploy/docker" "$stage/fixtures/digits"
trap 'rm -rf "$work"' EXIT
objcopy --strip-debug "$binary" "$stage/dist/chorus"
cp "$ort" "$stage/dist/lib/libonnxruntime.so.$ORT_VERSION"
cp "$(dirname "$ort")/libonnxruntime_providers_shared.so" "$stage/dist/lib/" 2>/dev/null || true
cp -r models config "$stage/"
cp fixtures/digits/sample-request.json "$stage/fixtures/digits/"
cp deploy/docker/build-stage.sh "$stage/deploy/docker/"
find "$stage" -name '__pycache__' -prune -exec rm -rf {} +
inputs=$( { (cd "$stage" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
           sha256sum <deploy/docker/Dockerfile; echo "$base_id"; } | sha256sum | cut -c1-32)

if [ "$force" = 0 ] && [ "$(image_label "$CHORUS_IMAGE" io.chorus.inputs)" = "$inputs" ]; then
    log "$CHORUS_IMAGE is up to date"
else
    log "building $CHORUS_IMAGE"
    old=$(docker image inspect --format '{{.Id}}' "$CHORUS_IMAGE" 2>/dev/null || true)
    docker_build -f deploy/docker/Dockerfile \
        --build-arg BUILDER_IMAGE="$BASE_IMAGE" --build-arg RUNTIME_IMAGE="$BASE_IMAGE" \
        --build-arg PREBUILT=1 --build-arg ORT_VERSION="$ORT_VERSION" \
        --label io.chorus.inputs="$inputs" -t "$CHORUS_IMAGE" "$stage"
    docker image prune --force --filter label=io.chorus.stage=build >/dev/null
    drop_replaced "$old" "$CHORUS_IMAGE"
    # Every library the binary and ONNX Runtime need must resolve inside the image.
    missing=$(docker run --rm --entrypoint sh "$CHORUS_IMAGE" -c \
        'ldd /usr/local/bin/chorus "$ORT_DYLIB_PATH" | grep "not found" || true')
    [ -z "$missing" ] || { echo "build-images: unresolved libraries in $CHORUS_IMAGE: $missing" >&2; exit 1; }
    docker run --rm "$CHORUS_IMAGE" --help >/dev/null
fi

# 3. etcd from Debian's packages on the same base.
etcd_inputs=$( (sha256sum deploy/docker/etcd.Dockerfile | cut -d' ' -f1; echo "$base_id") | sha256sum | cut -c1-32)
if [ "$force" = 0 ] && [ "$(image_label "$ETCD_IMAGE" io.chorus.inputs)" = "$etcd_inputs" ]; then
    log "$ETCD_IMAGE is up to date"
else
    log "building $ETCD_IMAGE"
    old=$(docker image inspect --format '{{.Id}}' "$ETCD_IMAGE" 2>/dev/null || true)
    docker_build --build-arg BASE_IMAGE="$BASE_IMAGE" --label io.chorus.inputs="$etcd_inputs" \
        -t "$ETCD_IMAGE" - <deploy/docker/etcd.Dockerfile
    drop_replaced "$old" "$ETCD_IMAGE"
    # sed reads to the end: `head -n 1` would close the pipe under docker's later lines, and
    # docker's "broken pipe" fails the script under pipefail (it did, in CI, by a race).
    docker run --rm "$ETCD_IMAGE" --version | sed -n 1p
fi

drop_replaced "$old_base" "$BASE_IMAGE"

docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(${CHORUS_IMAGE}|${ETCD_IMAGE}|${BASE_IMAGE})  " || true
