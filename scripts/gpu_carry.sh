#!/usr/bin/env bash
# Here (after `make`): everything scripts/gpu_host_run.sh needs on the lent GPU machine, in one tarball split into
# 60 MiB parts, one part per folder so that each device call carries exactly one (`carry: [".gpu/parts/NN"]`):
#   wheels/        scripts/gpu_wheels.sh's cp312 wheels
#   tiny/repo      a default GPU build of the pretrained yolov4-tiny (--host-cores 16 --host-gpus 1)
#   y608/repo      the official YOLOv4 608 cfg, GPU build, random darknet weights with silenced heads; its network
#                  ONNX files travel without weights (bench/onnx_weights.py strip; gpu_host_run.sh draws them again)
#   darknet/       ../shared/darknet (cfgs, photos, coco.names)    yolov4-tiny/   .cache/yolov4-tiny
#   scripts/gpu_carry.sh [DEST]      (default .gpu/parts; SKIP_608=1 leaves YOLOv4 608 out)
# Then, in back-to-back calls (a machine idle for 30 s is given back with what it was carried):
#   for each part NN:  run(command="mkdir -p /tmp/stash && cp .gpu/parts/NN/* /tmp/stash/", carry=[".gpu/parts/NN"])
#   last:              run(command="scripts/gpu_host_run.sh /tmp/stash $OUT all")   (it joins and unpacks the parts)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu/parts}
PY=${PYTHON:-.venv/bin/python}
STAGE=.gpu/stage
rm -rf "$STAGE" "$DEST"
mkdir -p "$STAGE" "$DEST"
SPLIT=0 scripts/gpu_wheels.sh
cp -r .gpu/wheels "$STAGE/wheels"
"$PY" build_repo.py --output "$STAGE/tiny/repo" --detector-device gpu --host-cores 16 --host-gpus 1
if [ "${SKIP_608:-0}" != 1 ]; then
  "$PY" - <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from test_darknet import write_random_weights  # noqa: E402  (the suite's random darknet-format weights)

from yolotriton.build.darknet import build_graph, parse_cfg  # noqa: E402

write_random_weights(build_graph(parse_cfg(Path("../shared/darknet/yolov4.cfg"))), Path(".gpu/y608.weights"),
                     silent_heads=True)
EOF
  "$PY" build_repo.py --cfg ../shared/darknet/yolov4.cfg --weights .gpu/y608.weights --output .gpu/y608-full \
    --detector-device gpu --host-cores 16 --host-gpus 1
  cp -r .gpu/y608-full "$STAGE/y608-repo-tmp"
  for d in "$STAGE"/y608-repo-tmp/*/1; do  # every model folder's network ONNX without its weights
    [ -n "$(ls "$d"/model*.onnx 2>/dev/null)" ] || continue
    "$PY" bench/onnx_weights.py strip ".gpu/y608-full/$(basename "$(dirname "$d")")/1" "$d"
  done
  mkdir -p "$STAGE/y608" && mv "$STAGE/y608-repo-tmp" "$STAGE/y608/repo"
fi
cp -r ../shared/darknet "$STAGE/darknet"
cp -r .cache/yolov4-tiny "$STAGE/yolov4-tiny"
tar -C "$STAGE" -cf - . | split -b 60M - "$STAGE.tar.part."
i=0
for part in "$STAGE".tar.part.*; do
  n=$(printf %02d $i)
  mkdir -p "$DEST/$n" && mv "$part" "$DEST/$n/carry.tar.part.${part##*.}"
  i=$((i + 1))
done
du -sh "$STAGE"/* | sed 's/^/  /'
echo "$i parts in $DEST: carry each in its own call (${DEST}/00 .. ${DEST}/$(printf %02d $((i - 1)))), then gpu_host_run.sh"
