#!/usr/bin/env bash
# The frontier where users prune, on the GPU: full-width cifar_vgg16_bn (313.5M MACs) on the
# CIFAR-10 JPEG set, one base, then uniform L1, --search and --global group-norm at 4x fewer
# MACs with the same fine-tuning (benchmarks/frontier_cifar.py on the device). One call of the
# device tool (10 minutes); the figures go to $OUT.
#
# How to run it through the device tool (torch, torchvision, timm, onnxruntime there; no network,
# no torch-pruning or fvcore):
#   here:   bash ../shared/device-prep.sh        # wheels + CIFAR-10 JPEG archive -> .device/
#           git archive -o .device/src.tar HEAD  # the committed tree
#   run(command="mkdir -p /tmp/w && tar xf .device/src.tar -C /tmp/w && ln -s $PWD/.device
#       /tmp/w/.device && cd /tmp/w && OUT=$OUT RUN=/tmp/grun timeout 580 bash
#       benchmarks/gpu_frontier.sh", carry=[".device"], timeout_s=600)
# Dry run on a CPU machine, tiny sizes (10 images per class, 1 epoch, 4 candidates):
#   bash benchmarks/gpu_frontier.sh --device cpu --tiny
#
# Steps (each logged to $OUT/logs/): install what is missing from .device/; the base
# (BASE_EPOCHS epochs, SGD 0.1 Nesterov cosine, 1 warm-up epoch, batch 128, weight decay 5e-4,
# label smoothing 0.1, bf16, channels-last: the recipe of the GPU runs in BENCHMARKS.md, which
# fitted the training set at 60-80 epochs and reached 90.18-90.51 %); then the rows, seed 0, each
# fine-tuned FT_EPOCHS epochs; frontier_cifar.py writes the JSON, table and plots to $OUT.
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
BASE_EPOCHS="${BASE_EPOCHS:-160}"
FT_EPOCHS="${FT_EPOCHS:-30}"
SEARCH="${SEARCH:-200}"
ROWS="${ROWS:-uniform,search,global-group-norm}"
DATA_DIR="${DATA_DIR:-data/cifar10-jpeg}"
MODEL=(--model cifar_vgg16_bn --width 1)
HELDOUT=5000
if [ "$TINY" = 1 ]; then
  BASE_EPOCHS=1; FT_EPOCHS=1; SEARCH=4; HELDOUT=20; MODEL=(--model cifar_vgg16_bn --width 0.125)
fi
mkdir -p "$OUT/logs" "$RUN"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
T0=$SECONDS
install > "$OUT/logs/install.log" 2>&1 || { echo "cannot install torch-pruning/fvcore"; cat "$OUT/logs/install.log"; exit 1; }
prepare_data > "$OUT/logs/data.log" 2>&1 || { echo "no CIFAR-10 JPEG data"; cat "$OUT/logs/data.log"; exit 1; }
"$PY" - "$OUT/env.json" <<'EOF'
import json, platform, sys
import torch, torchvision, torch_pruning
env = {"torch": torch.__version__, "torchvision": torchvision.__version__,
       "torch_pruning": torch_pruning.__version__, "python": platform.python_version(),
       "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(env)
EOF
AMP=(); [ "$DEVICE" = cuda ] && AMP=(--amp bf16 --channels-last)
echo "== base: ${MODEL[*]}, $BASE_EPOCHS epochs"
"$PY" -m tp_vgg train "${MODEL[@]}" --data imagefolder --data-dir "$DATA_DIR" \
  --epochs "$BASE_EPOCHS" --batch-size 128 --optimizer sgd --lr 0.1 --momentum 0.9 --nesterov \
  --weight-decay 5e-4 --schedule cosine --warmup-epochs 1 --label-smoothing 0.1 --seed 0 \
  --device "$DEVICE" "${AMP[@]}" --progress plain --log-every 60 --out "$RUN/base" \
  > "$OUT/logs/base.log" 2>&1 || { echo "base training failed"; tail -20 "$OUT/logs/base.log"; exit 1; }
tail -n 2 "$OUT/logs/base.log"
echo "   base done at $((SECONDS - T0)) s"
echo "== rows at 4x: $ROWS (seed 0, $FT_EPOCHS fine-tuning epochs, search $SEARCH candidates)"
"$PY" benchmarks/frontier_cifar.py "${MODEL[@]}" --base "$RUN/base/last.pt" --data-dir "$DATA_DIR" \
  --device "$DEVICE" --amp "$( [ "$DEVICE" = cuda ] && echo bf16 || echo auto )" --speedups 4 \
  --seeds 0 --rows "$ROWS" --epochs "$FT_EPOCHS" --search "$SEARCH" --heldout "$HELDOUT" \
  --repeats 20 --work "$RUN/frontier" --results "$OUT" > "$OUT/logs/frontier.log" 2>&1
rc=$?
tail -n 12 "$OUT/logs/frontier.log"
echo "== done in $((SECONDS - T0)) s (rc $rc)"
exit $rc
