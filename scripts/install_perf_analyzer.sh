#!/usr/bin/env bash
# Put a working perf_analyzer on the venv's PATH without touching the project's tritonclient (2.73).
# The perf-analyzer 2.60 wheel needs glibc >= 2.38 (Debian 12 has 2.36); the binary inside the
# tritonclient 2.41.0 wheel runs here with Debian's libb64-0d and libcudart.so.12 from the
# nvidia-cuda-runtime-cu12 wheel (pinned in requirements.txt). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL=tritonclient-2.41.0-py3-none-manylinux1_x86_64.whl
SHA256=cf4ed5df836fa99937678a9fd852f86ba05c7b83656dd0a540e20afdb9ab4629
DEST=.venv/lib/perf_analyzer-2.41.0
if [ ! -x "$DEST/perf_analyzer" ]; then
  mkdir -p .cache/wheels "$DEST"
  [ -f ".cache/wheels/$WHEEL" ] || .venv/bin/python -m pip download -q --no-deps -d .cache/wheels tritonclient==2.41.0
  echo "$SHA256  .cache/wheels/$WHEEL" | sha256sum -c --quiet
  .venv/bin/python - "$DEST" ".cache/wheels/$WHEEL" <<'PY'
import sys, zipfile, os
dest, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    open(os.path.join(dest, "perf_analyzer"), "wb").write(z.read("tritonclient-2.41.0.data/data/bin/perf_analyzer"))
os.chmod(os.path.join(dest, "perf_analyzer"), 0o755)
PY
fi
CUDART=$(.venv/bin/python -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))')
VENV=$(cd .venv && pwd)
cat > .venv/bin/perf_analyzer <<SH
#!/usr/bin/env bash
# perf_analyzer 2.41.0 from the tritonclient 2.41.0 wheel (see scripts/install_perf_analyzer.sh)
export LD_LIBRARY_PATH="$CUDART\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$VENV/lib/perf_analyzer-2.41.0/perf_analyzer" "\$@"
SH
chmod +x .venv/bin/perf_analyzer
.venv/bin/perf_analyzer --version | head -1
