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
    onnxruntime) wheels="--no-deps onnxruntime==$ORT_VERSION" ;;
    # The [cuda,cudnn] extras pull NVIDIA's CUDA 13 runtime, cuBLAS, cuFFT, cuRAND, NVRTC and
    # cuDNN 9 wheels (and the Python-only dependencies, which are not copied).
    onnxruntime-gpu) wheels="onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION" ;;
    *) echo "build-stage: ORT_PACKAGE must be onnxruntime or onnxruntime-gpu, not $ORT_PACKAGE" >&2; exit 1 ;;
esac
# $wheels is deliberately split into arguments.
# shellcheck disable=SC2086
# Pin the interpreter and platform tags so the same wheel is picked as in the project's .venv
# (NVIDIA's wheels carry older manylinux tags, hence the list).
python3 -m pip download --quiet --dest /tmp/wheels --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux_2_5_x86_64 $wheels
for wheel in /tmp/wheels/*.whl; do python3 -m zipfile -e "$wheel" /tmp/site; done
cp /tmp/site/onnxruntime/capi/libonnxruntime.so.* /tmp/site/onnxruntime/capi/libonnxruntime_providers_*.so /dist/lib/
# The pinned CPU library is the very file scripts/install-deps.sh puts in .venv (and that
# build-images.sh copies from there): check it, so both ways give the same bytes.
if [ "$ORT_PACKAGE==$ORT_VERSION" = "onnxruntime==1.31.1" ]; then
    echo "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3  /dist/lib/libonnxruntime.so.1.31.1" | sha256sum -c -
fi
if [ -d /tmp/site/nvidia ]; then
    mkdir -p /dist/lib/cuda
    find /tmp/site/nvidia -name 'lib*.so*' -type f -exec cp {} /dist/lib/cuda/ \;
fi
