#!/usr/bin/env bash
# The popular TF2 YOLOv4 packages, installed as their users install them, for tests/test_tf2_packages.py.
# They pin an older TensorFlow than the project, so they get an environment of their own (idempotent):
#   .cache/tf2-packages/venv      tensorflow 2.15.1, tensorflow-addons 0.23.0, tf2-yolov4 0.1.0 (sicara),
#                                 tf-yolov4 1.0.4 (Licht-T), numpy 1.23.5
#   .cache/tf2-packages/hhk7734   yolov4 3.2.0 (hhk7734) and OpenCV, apart: tf-yolov4 also installs a module
#                                 named `yolov4`; the test puts this folder first on PYTHONPATH for hhk7734 alone
#   .cache/tf2-packages/hhk7734-2 yolov4 2.1.0 (hhk7734's 2.x: head-shaped outputs with decoded values), likewise
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.cache/tf2-packages
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -f "$DIR/.installed" ]; then
  rm -rf "$DIR"
  "$PYTHON" -m venv "$DIR/venv"
  "$DIR/venv/bin/python" -m pip install -q "pip==25.3"
  "$DIR/venv/bin/python" -m pip install -q tensorflow==2.15.1 tensorflow-addons==0.23.0 tf2-yolov4==0.1.0 \
    tf-yolov4==1.0.4 numpy==1.23.5
  "$DIR/venv/bin/python" -m pip install -q --no-deps --target "$DIR/hhk7734" yolov4==3.2.0 \
    opencv-python-headless==4.8.1.78
  touch "$DIR/.installed"
fi
if [ ! -f "$DIR/hhk7734-2/.installed" ]; then
  rm -rf "$DIR/hhk7734-2"
  "$DIR/venv/bin/python" -m pip install -q --no-deps --target "$DIR/hhk7734-2" yolov4==2.1.0 \
    opencv-python-headless==4.8.1.78
  touch "$DIR/hhk7734-2/.installed"
fi
echo "$DIR"
