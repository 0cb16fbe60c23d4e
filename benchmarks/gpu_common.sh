# Shared by benchmarks/gpu.sh, gpu_recipes.sh and gpu_frontier.sh (sourced): the flags
# --device cuda|cpu and --tiny, the repository root as working folder, $OUT, $RUN and $PY, and
# install / prepare_data (what the GPU machine lacks, from .device/; the CIFAR-10 JPEG folders
# in $DATA_DIR, or 10 images per class and split with --tiny).
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

# What the machine lacks, from .device/ (no network).
install() {
  if ! "$PY" -c "import torch_pruning, fvcore" 2>/dev/null; then
    [ -d .device/wheels ] || { echo "torch-pruning/fvcore missing and no .device/wheels: run ../shared/device-prep.sh here first"; return 1; }
    "$PY" -m pip install -q --no-index --no-deps .device/wheels/*.whl ||
      "$PY" -m pip install -q --no-index --no-deps --break-system-packages .device/wheels/*.whl || return 1
  fi
  "$PY" -c "import tp_vgg, torch_pruning, fvcore, torchvision; print('tp_vgg', tp_vgg.__version__, 'torch-pruning', torch_pruning.__version__)"
}
prepare_data() {
  if [ "$TINY" = 1 ]; then  # 10 images per class and split from the archive or a local copy
    local src="$DATA_DIR"
    if [ ! -d "$src" ]; then
      local arc=".device/cifar10-jpeg.tar.gz"; [ -f "$arc" ] || arc="../shared/data/cifar10-jpeg.tar.gz"
      mkdir -p "$RUN/full" && tar xzf "$arc" -C "$RUN/full" && src="$RUN/full/cifar10-jpeg"
    fi
    rm -rf "$RUN/tiny-data"
    for split in train test; do
      for d in "$src/$split"/*/; do
        c=$(basename "$d"); mkdir -p "$RUN/tiny-data/$split/$c"
        ls "$d" | head -n 10 | while read -r f; do cp "$d/$f" "$RUN/tiny-data/$split/$c/"; done
      done
    done
    DATA_DIR="$RUN/tiny-data"
  elif [ ! -d "$DATA_DIR" ]; then
    mkdir -p "$(dirname "$DATA_DIR")" && tar xzf .device/cifar10-jpeg.tar.gz -C "$(dirname "$DATA_DIR")"
  fi
  ls "$DATA_DIR"
}
