#!/usr/bin/env bash
# On the lent GPU machine, after the wheels and prebuilt repositories were carried into STASH (see
# docs/gpu-host.md): the GPU tests, the end-to-end tests against the GPU repository, then bench/gpu.py.
#   scripts/gpu_host_run.sh STASH OUT [tests|bench-tiny|bench-608|tune|all]
# STASH holds: *.whl (onnxruntime-gpu may be in parts ort.part.N), tiny/repo, y608/repo (model.onnx
# in parts y608.onnx.N), darknet/ (../shared/darknet) and yolov4-tiny/ (.cache/yolov4-tiny).
set -uo pipefail
cd "$(dirname "$0")/.."
STASH=$1 OUT=$2 WHAT=${3:-all}
if ls "$STASH"/ort.part.* >/dev/null 2>&1; then
  cat "$STASH"/ort.part.* > "$STASH/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl" && rm "$STASH"/ort.part.*
fi
if ls "$STASH"/y608.onnx.* >/dev/null 2>&1; then
  cat "$STASH"/y608.onnx.* > "$STASH/y608/repo/yolov4_detector/1/model.onnx" && rm "$STASH"/y608.onnx.*
fi
mkdir -p ../shared .cache
[ -d ../shared/darknet ] || cp -r "$STASH/darknet" ../shared/
[ -d .cache/yolov4-tiny ] || cp -r "$STASH/yolov4-tiny" .cache/
export PYTHONUNBUFFERED=1
run() { scripts/gpu_host.sh "$STASH" -- "$@"; }
if [ "$WHAT" = tests ] || [ "$WHAT" = all ]; then
  YOLOTRITON_TEST_REPO="$STASH/tiny/repo" run python -m pytest -q -rs -p no:cacheprovider tests/test_gpu_preprocess.py tests/test_ort_detector.py 2>&1 | tee "$OUT/tests-gpu.log"
  YOLOTRITON_TEST_REPO="$STASH/tiny/repo" run python -m pytest -q -rs -p no:cacheprovider \
    tests/test_serving.py tests/test_client.py tests/test_reliability.py tests/test_decode_in_detector.py tests/test_nms_in_detector.py \
    tests/test_preprocess_in_detector.py \
    -k "not numpy_2 and not without_the_venv and not interrupted_build" 2>&1 | tee "$OUT/tests-e2e.log"
fi
if [ "$WHAT" = bench-tiny ] || [ "$WHAT" = all ]; then
  run python bench/gpu.py --repo "$STASH/tiny/repo" --photos ../shared/darknet --out "$OUT/tiny" \
    --concurrency 1,8,64,128 --images-per-request 4 --also nms=postprocess ${MPS:+--mps} 2>&1 \
    | tee "$OUT/bench-tiny.log"
fi
if [ "$WHAT" = bench-608 ] || [ "$WHAT" = all ]; then
  run python bench/gpu.py --repo "$STASH/y608/repo" --photos ../shared/darknet --out "$OUT/y608" \
    --concurrency 1,8,32,64 --images-per-request 4 --also nms=postprocess ${MPS:+--mps} 2>&1 \
    | tee "$OUT/bench-608.log"
fi
if [ "$WHAT" = tune ]; then  # make tune's search on the GPU repository (writes the best back into STASH/tiny/repo)
  run python bench/tune.py --repository "$STASH/tiny/repo" --budget-s "${BUDGET_S:-420}" 2>&1 | tee "$OUT/tune.log"
  cp "$STASH/tiny/repo/tuning.md" "$OUT/" 2>/dev/null || true
fi
