#!/usr/bin/env bash
# Create .venv and install simple-rlhf on the CPU build of torch, at the pinned versions.
#   bash scripts/setup.sh        what the commands need (the main job, chat, eval, ...)
#   bash scripts/setup.sh --dev  + the test tools and the scale-out extras (pytest, ruff, scipy,
#                                deepspeed, bitsandbytes): what scripts/test.sh and CI use
# torch is pinned first so pip takes the local CPU wheel instead of a multi-GB CUDA build; every
# other package is held to constraints.txt (the versions the suite and the README were measured
# with). SIMPLE_RLHF_UNPINNED=1 drops the constraints (used by scripts/refresh_constraints.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SIMPLE_RLHF_VENV:-.venv}
extras=""
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev]" ;;
    *) echo "setup.sh: unknown option '$arg' (valid: --dev)" >&2; exit 2 ;;
  esac
done
pins=(-c constraints.txt)
[ -n "${SIMPLE_RLHF_UNPINNED:-}" ] && pins=()
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/pip" install -q --disable-pip-version-check)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" "${pins[@]}" -e ".$extras"
"$VENV/bin/python" -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
