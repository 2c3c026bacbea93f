#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: system libraries, .venv with the pinned set, the project.
set -euo pipefail
cd "$(dirname "$0")/.."

# libpython3.11: the Python backend stub embeds it. libb64-0d: perf_analyzer from the tritonclient wheel.
APT_PACKAGES="libpython3.11 libb64-0d"
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "[setup] installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "need Python 3.11 (the Python backend stub embeds libpython3.11), got %s" % sys.version.split()[0]'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip==25.3" >/dev/null
echo "[setup] installing pinned Python packages (requirements.txt)"
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
.venv/bin/python -m pip check
./scripts/install_perf_analyzer.sh
touch .venv/.installed
