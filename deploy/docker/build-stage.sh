#!/bin/sh
# Runs inside the Dockerfile's build stage and leaves what the runtime image needs in /dist:
#   /dist/chorus                         the binary, debug info stripped (symbols kept)
#   /dist/lib/libonnxruntime.so.<ver>    the ONNX Runtime library from the pinned wheel
#   /dist/lib/cuda/                      CUDA and cuDNN libraries (gpu flavour only)
#
# PREBUILT=1 (deploy/docker/build-images.sh, no registry): the context already holds dist/ made
# on the host, so nothing is compiled or downloaded. Otherwise: cargo build, and pip download
# of the wheel(s) named by ORT_PACKAGE and ORT_VERSION.
set -eu
mkdir -p /dist/lib

if [ "${PREBUILT:-0}" = 1 ]; then
    cp -a dist/. /dist/
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# protoc: etcd-client compiles etcd's protos at build time; pip fetches the ONNX Runtime wheel.
apt-get install -y -qq --no-install-recommends protobuf-compiler python3-pip >/dev/null

cargo build --release --locked -p chorus
objcopy --strip-debug target/release/chorus /dist/chorus

case "$ORT_PACKAGE" in
    onnxruntime) wheels="onnxruntime==$ORT_VERSION" ;;
    # The [cuda,cudnn] extras pull NVIDIA's CUDA 13 runtime, cuBLAS, cuFFT, cuRAND and cuDNN 9 wheels.
    onnxruntime-gpu) wheels="onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION" ;;
    *) echo "build-stage: ORT_PACKAGE must be onnxruntime or onnxruntime-gpu, not $ORT_PACKAGE" >&2; exit 1 ;;
esac
# Pin the interpreter and platform tags so the same wheel is picked as in the project's .venv.
python3 -m pip download --quiet --dest /tmp/wheels --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 $wheels
for wheel in /tmp/wheels/*.whl; do python3 -m zipfile -e "$wheel" /tmp/site; done
cp /tmp/site/onnxruntime/capi/libonnxruntime.so.* /tmp/site/onnxruntime/capi/libonnxruntime_providers_*.so /dist/lib/
if [ -d /tmp/site/nvidia ]; then
    mkdir -p /dist/lib/cuda
    cp -L /tmp/site/nvidia/*/lib/lib*.so* /dist/lib/cuda/
fi
