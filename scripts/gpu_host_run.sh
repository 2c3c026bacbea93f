#!/usr/bin/env bash
# On the lent GPU machine, after scripts/gpu_wheels.sh's parts and the prebuilt repositories were carried
# into STASH (docs/gpu-host.md, "How to run it there"): the GPU tests, the end-to-end tests against the GPU
# repository, then bench/gpu.py.
#   scripts/gpu_host_run.sh STASH OUT [tests|bench-tiny|bench-608|engines|engines-tiny|tune|all]
# Environment: TINY_LEVELS / LEVELS_608 (served concurrency), TINY_BATCHES / BATCHES_608 (network batches), ALSO=engine=ort (a
# served variant beside the default), ENGINES / ENGINES_608 (bench/engines.py --engines for tiny / YOLOv4 608).
# GPU_TESTS / E2E_TESTS: the test files of `tests` (default: all below; with 12 torch instances each server start and
# stop costs ~80 s, so the whole list does not fit one 600 s call: run it in parts, e.g. GPU_TESTS= E2E_TESTS=tests/test_client.py).
# STASH holds scripts/gpu_carry.sh's carry.tar.part.* (joined and unpacked on the first call), or by hand:
# wheels.tar.part.* (joined and unpacked into STASH/wheels on the first call), tiny/repo (a
# default --detector-device gpu build), y608/repo (its model*.onnx may travel without weights: bench/onnx_weights.py
# strip; drawn again here), darknet/ (../shared/darknet) and yolov4-tiny/ (.cache/yolov4-tiny).
set -uo pipefail
cd "$(dirname "$0")/.."
STASH=$1 OUT=$2 WHAT=${3:-all}
if ls "$STASH"/carry.tar.part.* >/dev/null 2>&1; then  # scripts/gpu_carry.sh's parts: everything below in one tarball
  cat "$STASH"/carry.tar.part.* | tar -C "$STASH" -xf - && rm "$STASH"/carry.tar.part.*
fi
if ls "$STASH"/wheels.tar.part.* >/dev/null 2>&1; then
  cat "$STASH"/wheels.tar.part.* | tar -C "$STASH" -xf - && rm "$STASH"/wheels.tar.part.*
fi
mkdir -p ../shared .cache
[ -d ../shared/darknet ] || cp -r "$STASH/darknet" ../shared/
[ -d .cache/yolov4-tiny ] || { [ -d "$STASH/yolov4-tiny" ] && cp -r "$STASH/yolov4-tiny" .cache/; }
export PYTHONUNBUFFERED=1
run() { scripts/gpu_host.sh "$STASH/wheels" -- "$@"; }
[ -d "$STASH/y608/repo" ] && run python bench/onnx_weights.py fill "$STASH/y608/repo/yolov4_detector/1"
if [ "$WHAT" = tests ] || [ "$WHAT" = all ]; then
  GPU_TESTS=${GPU_TESTS-tests/test_gpu_preprocess.py tests/test_ort_engine.py tests/test_torch_engine.py}
  E2E_TESTS=${E2E_TESTS-tests/test_serving.py tests/test_client.py tests/test_reliability.py tests/test_decode_in_detector.py \
    tests/test_nms_in_detector.py tests/test_preprocess_in_detector.py tests/test_gpu_load.py}
  [ -z "$GPU_TESTS" ] || YOLOTRITON_TEST_REPO="$STASH/tiny/repo" run python -m pytest -q -rs -p no:cacheprovider $GPU_TESTS 2>&1 | tee "$OUT/tests-gpu.log"
  [ -z "$E2E_TESTS" ] || YOLOTRITON_TEST_REPO="$STASH/tiny/repo" run python -m pytest -q -rs -p no:cacheprovider --durations=10 \
    $E2E_TESTS -k "not numpy_2 and not without_the_venv and not interrupted_build" 2>&1 | tee "$OUT/tests-e2e.log"
fi
if [ "$WHAT" = bench-tiny ] || [ "$WHAT" = all ]; then
  run python bench/gpu.py --repo "$STASH/tiny/repo" --photos ../shared/darknet --out "$OUT/tiny" \
    --concurrency ${TINY_LEVELS:-64,128,256} --network-batches ${TINY_BATCHES:-32,128} --decode-batches 8,64 \
    ${ALSO:+--also $ALSO --also-concurrency 256} 2>&1 | tee "$OUT/bench-tiny.log"
fi
if [ "$WHAT" = bench-608 ] || [ "$WHAT" = all ]; then
  run python bench/gpu.py --repo "$STASH/y608/repo" --photos ../shared/darknet --out "$OUT/y608" \
    --concurrency ${LEVELS_608:-64,128,256} --network-batches ${BATCHES_608:-8,32} --decode-batches 8 \
    ${ALSO:+--also $ALSO --also-concurrency 128} 2>&1 | tee "$OUT/bench-608.log"
fi
if [ "$WHAT" = engines ] || [ "$WHAT" = engines-tiny ] || [ "$WHAT" = all ]; then  # the candidate engines side by side, network alone
  run python bench/engines.py --model-dir "$STASH/tiny/repo/yolov4_detector/1" --photos ../shared/darknet \
    --batches ${TINY_BATCHES:-32,128} ${ENGINES:+--engines $ENGINES} --out "$OUT/engines-tiny.json" 2>&1 | tee "$OUT/engines-tiny.log"
  [ "$WHAT" = engines-tiny ] || run python bench/engines.py --model-dir "$STASH/y608/repo/yolov4_detector/1" --batches ${BATCHES_608:-32} \
    ${ENGINES_608:+--engines $ENGINES_608} --out "$OUT/engines-608.json" 2>&1 | tee "$OUT/engines-608.log"
fi
if [ "$WHAT" = tune ]; then  # make tune's search on the GPU repository (writes the best back into STASH/tiny/repo)
  run python bench/tune.py --repository "$STASH/tiny/repo" --budget-s "${BUDGET_S:-420}" 2>&1 | tee "$OUT/tune.log"
  cp "$STASH/tiny/repo/tuning.md" "$OUT/" 2>/dev/null || true
fi
