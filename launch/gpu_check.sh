#!/usr/bin/env bash
# The GPU check on a borrowed GPU machine (CUDA + PyTorch, no network):
#   bash launch/gpu_check.sh [--dry-run] [--seconds S]
# 1. joins the parts `make gpu-wheels` split (wheels/NAME.part-aa, -ab ... -> wheels/NAME);
# 2. installs wheels/*.whl (and DeepSpeed's sdist, with no ops built) with --no-deps --no-index
#    into a scratch folder $PREFIX put on PYTHONPATH: the machine's own Python is left untouched;
# 3. runs `python -m pipeline.cli bench gpu`, writing $OUT_DIR/gpu_check.json and .log.
# A failed install is reported and the check still runs: its environment step says what imports.
# Settings (environment): PYTHON (python3), WHEELS (wheels), PREFIX (/tmp/sonostream-gpu-site),
# OUT_DIR ($OUT when set, else runs).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
PREFIX=${PREFIX:-/tmp/sonostream-gpu-site}
OUT_DIR=${OUT_DIR:-${OUT:-runs}}
mkdir -p "$OUT_DIR"
if [ -d "$WHEELS" ]; then
  for first in "$WHEELS"/*.part-aa; do
    [ -e "$first" ] || continue
    whole=${first%.part-aa}
    [ -e "$whole" ] || cat "$whole".part-* > "$whole"
  done
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  sdists=("$WHEELS"/deepspeed-*.tar.gz)
  if [ ${#wheels[@]} -gt 0 ]; then
    "$PY" -m pip install --quiet --no-deps --no-index --target "$PREFIX" "${wheels[@]}" \
      || echo "gpu_check: installing the wheels failed (the check runs anyway)" >&2
  fi
  if [ ${#sdists[@]} -gt 0 ]; then
    DS_BUILD_OPS=0 "$PY" -m pip install --quiet --no-deps --no-index --no-build-isolation \
      --target "$PREFIX" "${sdists[@]}" \
      || echo "gpu_check: installing DeepSpeed failed (the check runs anyway)" >&2
  fi
else
  echo "gpu_check: no $WHEELS/ folder: using what this Python already has" >&2
fi
export PYTHONPATH="$PWD:$PREFIX${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m pipeline.cli bench gpu --json "$OUT_DIR/gpu_check.json" \
  --log "$OUT_DIR/gpu_check.log" "$@"
