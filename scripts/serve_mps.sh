#!/bin/sh
# The serving container's entrypoint on a GPU (templates/deploy: Dockerfile, deployment.yaml): a private NVIDIA
# MPS control daemon for this container, then exec the given command (tritonserver ...). Without MPS each
# Python-backend instance's CUDA context time-slices the GPU (about half the throughput, docs/gpu-host.md).
# The daemon goes with the container. YOLOTRITON_MPS=off skips it; a failure says so in one line and serves on.
if [ "${YOLOTRITON_MPS:-auto}" = off ]; then
  echo "[mps] off (YOLOTRITON_MPS=off)"
elif ! command -v nvidia-cuda-mps-control >/dev/null 2>&1; then
  echo "[mps] not started: nvidia-cuda-mps-control is not in the container (NVIDIA_DRIVER_CAPABILITIES must include compute,utility); serving without MPS"
else
  export CUDA_MPS_PIPE_DIRECTORY="${CUDA_MPS_PIPE_DIRECTORY:-/tmp/yolotriton-mps/pipe}"
  export CUDA_MPS_LOG_DIRECTORY="${CUDA_MPS_LOG_DIRECTORY:-/tmp/yolotriton-mps/log}"
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d; then
    echo "[mps] control daemon started, pipe $CUDA_MPS_PIPE_DIRECTORY"
  else
    echo "[mps] not started: nvidia-cuda-mps-control -d failed (see $CUDA_MPS_LOG_DIRECTORY); serving without MPS"
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi
exec "$@"
