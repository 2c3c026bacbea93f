#!/usr/bin/env bash
# On the lent GPU machine (Python 3.12, no network): a venv from carried cp312 wheels, then COMMAND in it.
#   scripts/gpu_host.sh WHEEL_DIR... -- COMMAND...      e.g.  -- python bench/gpu.py --repo R --photos P --out O
set -euo pipefail
cd "$(dirname "$0")/.."
dirs=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do dirs+=("$1"); shift; done; shift || true
BASE_PY=${BASE_PY:-/opt/torch/.venv/bin/python3}
[ -x .venv-gpu/bin/python ] || "$BASE_PY" -m venv --without-pip .venv-gpu
whl=(); for d in "${dirs[@]}"; do whl+=("$d"/*.whl); done
# The base environment's pip installs into our venv (--python); numpy 1.26 there keeps the stub's outputs non-empty.
"$BASE_PY" -m pip --python .venv-gpu/bin/python install -q --no-index --no-deps "${whl[@]}"
# The torch engine's torch (and its triton, sympy, ...) is the base environment's: appended to the venv's path
# after its own packages, so the venv's numpy 1.26 and onnxruntime-gpu still come first.
BASE_SITE="$("$BASE_PY" -c 'import site; print(site.getsitepackages()[0])')"
echo "$BASE_SITE" > "$(.venv-gpu/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz-base-torch.pth"
# ONNX Runtime's CUDA provider needs CUDA 13 / cuDNN 9: the image has them as torch's nvidia wheels.
export LD_LIBRARY_PATH="$(ls -d "$BASE_SITE"/nvidia/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}"
export PATH="$PWD/.venv-gpu/bin:$PATH" PYTHONPATH="$PWD"
python -c 'import numpy, onnxruntime as o, torch; print("numpy", numpy.__version__, "ort", o.__version__, o.get_available_providers(), "torch", torch.__version__)'
exec "$@"
