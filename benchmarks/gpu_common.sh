# Shared by benchmarks/gpu.sh and benchmarks/gpu_recipes.sh (sourced): the flags
# --device cuda|cpu and --tiny, the repository root as working folder, $OUT, $RUN and $PY.
cd "$(dirname "${BASH_SOURCE[1]}")/.."
DEVICE=cuda
TINY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    *) echo "usage: bash $(basename "${BASH_SOURCE[1]}") [--device cuda|cpu] [--tiny]" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-runs/gpu}"
RUN="${RUN:-runs/gpu-run}"
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
