#!/usr/bin/env bash
# Installs everything Chorus needs to build, run and test, and nothing that is already there:
#   - Debian packages: protobuf-compiler (etcd-client compiles etcd's protos at build time),
#     etcd-server and etcd-client (the failover tests start a real etcd and read it with
#     etcdctl), python3-venv (if venv is missing), chromium (the dashboard's browser test loads
#     the page headless) and prometheus (its promtool checks deploy/monitoring's alert rules);
#   - .venv at the repository root with the pinned onnxruntime wheel (the ONNX Runtime library
#     workers load) and tritonclient for the client-compatibility tests.
# Safe to run repeatedly; it only prints what it changes.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "install-deps: apt-get install $*"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
command -v chromium >/dev/null || missing+=(chromium)
command -v promtool >/dev/null || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

if [ ! -x .venv/bin/python ]; then
    echo "install-deps: creating .venv"
    python3 -m venv .venv
fi
# pip is quick when everything is already satisfied, so always ask it.
.venv/bin/python -m pip install -q --disable-pip-version-check -r scripts/requirements.txt

lib=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.* 2>/dev/null | head -n 1)
if [ -z "$lib" ]; then
    echo "install-deps: onnxruntime installed but libonnxruntime.so.1.* not found in .venv" >&2
    exit 1
fi
echo "install-deps: ONNX Runtime library at $lib"
