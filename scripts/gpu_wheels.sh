#!/usr/bin/env bash
# Here (with network): the cp312 wheels the lent GPU machine needs (it has Python 3.12 and no network),
# in one tarball split into 60 MiB parts that each travel in their own device call.
#   scripts/gpu_wheels.sh [DEST]      (default .gpu/carry: wheels.tar.part.aa, .ab, ...; SPLIT=0: .gpu/wheels only)
# There: cat the parts into one tarball, untar it into STASH, then scripts/gpu_host.sh STASH -- COMMAND.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu/carry}
WHEELS=.gpu/wheels
mkdir -p "$WHEELS" "$DEST"
PLAT=(--platform manylinux_2_39_x86_64 --platform manylinux_2_38_x86_64 --platform manylinux_2_35_x86_64
      --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64 --platform linux_x86_64 --platform any)
# The serving stack with the project's pins where they apply; numpy 1.26 keeps the stub's outputs non-empty.
# onnx2torch (pure Python) is the torch engine's converter; torch itself (with its CUDA wheels, ~3 GB) is the
# GPU image's own, in /opt/torch/.venv: scripts/gpu_host.sh lets the venv see it.
"${PYTHON:-python3}" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
  -d "$WHEELS" \
  onnxruntime-gpu==1.31.1 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.2.3.58 cuda-bindings==13.4.4 \
  nvidia-pytriton==0.7.0 numpy==1.26.4 opencv-python-headless==4.11.0.86 simplejpeg==1.9.0 \
  "tritonclient[grpc,http]==2.73.0" perf-analyzer==2.60.0 pytest==9.2.0 pytest-timeout==2.4.0 onnx==1.23.2 \
  jinja2==3.1.6 pyyaml==6.0.3
# without its dependencies: they are torch's, which the GPU image has
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" onnx2torch==1.5.15
# cuDNN's fused convolutions for the torch engine (runtime/cudnn_fusion.py); no dependencies, it loads torch's cuDNN
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
  -d "$WHEELS" nvidia-cudnn-frontend==1.14.0
ls "$WHEELS" | wc -l; du -sh "$WHEELS"
[ "${SPLIT:-1}" = 1 ] || exit 0  # SPLIT=0: the wheels only (scripts/gpu_carry.sh packs them with the rest)
rm -f "$DEST"/wheels.tar.part.*
tar -C .gpu -cf - wheels | split -b 60M - "$DEST/wheels.tar.part."
ls -la "$DEST"
