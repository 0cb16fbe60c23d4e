#!/usr/bin/env bash
# The GPU check: proves tp-vgg's CUDA path on one GPU and records its figures (BENCHMARKS.md).
#
# How to run it on a GPU machine with no network (torch + torchvision there; torch-pruning and
# fvcore not):
#   here (the dev machine):  bash ../shared/device-prep.sh      # wheels + CIFAR-10 JPEGs -> .device/
#   there, from the repo root, with .device/ carried along:     bash benchmarks/gpu.sh
#   (the device tool: run(command="OUT=$OUT bash benchmarks/gpu.sh", carry=[".device"]))
# Dry run on a CPU machine, tiny sizes (200 images, 1 epoch):   bash benchmarks/gpu.sh --device cpu --tiny
#
# Steps, each logged to $OUT/logs/ and timed; a failing step is recorded and the next one runs:
#   1. install what is missing from .device/wheels (no network; tp_vgg itself runs from the tree)
#   2. card, driver, torch / CUDA / cuDNN versions -> $OUT/env.json
#   3. the CUDA tests: tests/test_cuda.py and tests/test_recovery.py (every device)
#  3b. latency on the device: --target-latency in torch and onnxruntime, --round-to auto, the
#      efficiency table (benchmarks/latency_efficiency.py), torch.compile against eager
#   4. cifar_vgg16_bn, full width, on the CIFAR-10 JPEG set, GPU-resident data, bf16 autocast,
#      channels_last: train $TRAIN_EPOCHS epochs (SGD 0.1 cosine, batch 256)
#   5. prune L1 to 4x fewer MACs (--target-speedup 4), re-estimate BN statistics (50 batches),
#      fine-tune $FT_EPOCHS epochs: plain, and distilled from the unpruned model
#   6. eval and latency (profile --latency) of the pruned model on the device; the scratch control
#      (pruned architecture, random init, train + fine-tune epochs) when the budget allows
#   7. the whole test suite on this machine (CUDA where a test uses the default device), in what
#      is left of $BUDGET_S
# Figures: $OUT/gpu_check.json and a markdown table on stdout (benchmarks/gpu_summary.py).
# On the device tool (8 files come back): the command used for BENCHMARKS.md is
#   git archive -o .device/src.tar HEAD       # here: the committed tree, nothing half-edited
#   run: mkdir -p /tmp/w && tar xf .device/src.tar -C /tmp/w && ln -s $PWD/.device /tmp/w/.device &&
#        cd /tmp/w && OUT=/tmp/gout RUN=/tmp/grun timeout 460 bash benchmarks/gpu.sh;
#        cd /tmp && tar czf $OUT/gpu_logs.tgz gout grun/*/*.json* grun/*/finetune/*.json*; cp gout/gpu_check.json $OUT/
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
TRAIN_EPOCHS="${TRAIN_EPOCHS:-30}"
FT_EPOCHS="${FT_EPOCHS:-20}"
BATCH="${BATCH:-256}"
BUDGET_S="${BUDGET_S:-440}"   # seconds for the whole script; optional steps fit in what is left
SKIP="${SKIP:-}"             # step names to leave out, e.g. SKIP="prune_plain scratch test_suite"
CUDA_TESTS="${CUDA_TESTS:-tests/test_cuda.py tests/test_recovery.py}"
MODEL=(--model cifar_vgg16_bn)
DATA_DIR="${DATA_DIR:-data/cifar10-jpeg}"
if [ "$TINY" = 1 ]; then
  TRAIN_EPOCHS=1; FT_EPOCHS=1; BATCH=64
  MODEL=(--model cifar_vgg16_bn --width 0.125)
fi
mkdir -p "$OUT/logs" "$RUN"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STEPS="$OUT/steps.jsonl"
: > "$STEPS"

step() {  # step NAME CMD...: run, log, time, record the exit code; never stops the script
  local name="$1"; shift
  case " $SKIP " in *" $name "*) echo "== $name: skipped (SKIP)"; return 0 ;; esac
  local t0; t0=$(date +%s%N)
  echo "== $name: $*" | tee -a "$OUT/logs/all.log"
  "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  tail -n 4 "$OUT/logs/$name.log" | sed 's/^/   /'
  printf '{"step": "%s", "rc": %d, "seconds": %d.%03d}\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) >> "$STEPS"
  echo "   -> rc $rc in $((ms / 1000)).$((ms % 1000 / 100)) s" | tee -a "$OUT/logs/all.log"
  return $rc
}

step install install || { echo "cannot install torch-pruning/fvcore; stopping"; exit 1; }
prepare_data > "$OUT/logs/data.log" 2>&1 || { echo "no CIFAR-10 JPEG data"; cat "$OUT/logs/data.log"; exit 1; }
DATA=(--data imagefolder --data-dir "$DATA_DIR")

# 2. The machine.
step env "$PY" - "$OUT/env.json" <<'EOF'
import json, platform, subprocess, sys
import torch, torchvision, torch_pruning, fvcore  # noqa: F401
info = {"python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "torch_pruning": torch_pruning.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(card=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                bf16=torch.cuda.is_bf16_supported())
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip()
    except OSError:
        pass
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info))
EOF

# 3. The CUDA tests (they skip their CUDA cases on a machine without CUDA).
XD=(); "$PY" -c "import xdist" 2>/dev/null && XD=(-n 8 --dist loadfile)
step cuda_tests "$PY" -m pytest -q -p no:cacheprovider "${XD[@]}" $CUDA_TESTS

# 3b. Latency on the device (random weights: time does not depend on them): the original
#     cifar_vgg16_bn at batch 1 and 64; --target-latency half of the batch-64 latency in torch and
#     onnxruntime (which needs onnxruntime's CUDA provider: a one-line refusal otherwise);
#     --round-to auto learned on the device; the efficiency table; torch.compile against eager.
LAT=(--model cifar_vgg16_bn); [ "$TINY" = 1 ] && LAT+=(--width 0.25)
export TP_VGG_CACHE="$RUN/latency-cache"
step lat_profile "$PY" -m tp_vgg profile "${LAT[@]}" --latency --batch-sizes 1,64 --device "$DEVICE" --json
HALF=$("$PY" -c "import json,sys; print(round(json.load(open(sys.argv[1]))['latency']['timings']['64']['model']['median_ms'] / 2, 4))" "$OUT/logs/lat_profile.log" 2>/dev/null || echo 1)
for rt in torch onnxruntime; do
  step "lat_target_$rt" "$PY" -m tp_vgg prune "${LAT[@]}" --device "$DEVICE" --target-latency "$HALF" \
    --latency-batch 64 --runtime "$rt" --latency 1,64 --out "$RUN/lat_target_$rt"
done
step lat_round_auto "$PY" -m tp_vgg prune "${LAT[@]}" --device "$DEVICE" --ratio 0.5 --round-to auto \
  --latency 1,64 --out "$RUN/lat_round_auto"
EFF=(--model cifar_vgg16_bn); [ "$TINY" = 1 ] && EFF+=(--width 0.5 --repeats 3)
step lat_efficiency "$PY" benchmarks/latency_efficiency.py "${EFF[@]}" --batches 1,64 --device "$DEVICE" \
  --runtimes torch --predict --tag "$DEVICE"
cp benchmarks/results/latency_efficiency_*"$DEVICE"*.json "$OUT/" 2>/dev/null
step lat_compile timeout 240 "$PY" benchmarks/compile_latency.py --device "$DEVICE" --tiny "$TINY"

# 4. Train the base model.
COMMON=(--device "$DEVICE" --progress plain --batch-size "$BATCH")
[ "$DEVICE" = cuda ] && COMMON+=(--amp bf16 --channels-last)
step train "$PY" -m tp_vgg train "${MODEL[@]}" "${DATA[@]}" "${COMMON[@]}" --epochs "$TRAIN_EPOCHS" \
  --lr 0.1 --weight-decay 5e-4 --schedule cosine --warmup-epochs 1 --seed 0 --out "$RUN/base"

# 5. Prune to 4x fewer MACs, recalibrate BN, fine-tune: plain and distilled.
FT=(--checkpoint "$RUN/base/last.pt" --importance l1 --target-speedup 4 "${DATA[@]}" "${COMMON[@]}"
    --finetune-epochs "$FT_EPOCHS" --lr 0.02 --bn-recalibrate 50 --seed 0)
step prune_plain "$PY" -m tp_vgg prune "${FT[@]}" --out "$RUN/pruned_plain"
step prune_distill "$PY" -m tp_vgg prune "${FT[@]}" --distill --out "$RUN/pruned_distill"
step eval "$PY" -m tp_vgg eval --checkpoint "$RUN/pruned_plain/pruned.pt" "${DATA[@]}" --device "$DEVICE" --json
step latency "$PY" -m tp_vgg profile --checkpoint "$RUN/pruned_plain/pruned.pt" --latency --device "$DEVICE" --json

# 6. The scratch control (the pruned architecture from random init, train + fine-tune epochs),
#    when the budget allows it: estimated from the plain fine-tuning run.
ft_s=$(grep '"prune_plain"' "$STEPS" | sed 's/.*"seconds": \([0-9]*\).*/\1/')
est=$(( ${ft_s:-9999} * (TRAIN_EPOCHS + FT_EPOCHS) / FT_EPOCHS ))
if { [ $((SECONDS + est)) -lt "$BUDGET_S" ] || [ "$TINY" = 1 ]; } && [ -f "$RUN/pruned_plain/pruned.pt" ]; then
  step scratch "$PY" -m tp_vgg finetune --checkpoint "$RUN/pruned_plain/pruned.pt" --scratch \
    --epochs $((TRAIN_EPOCHS + FT_EPOCHS)) "${DATA[@]}" "${COMMON[@]}" --lr 0.1 --seed 0 --out "$RUN/scratch"
else
  echo "== scratch: skipped (about ${est}s needed, $((BUDGET_S - SECONDS))s of the ${BUDGET_S}s budget left)" | tee -a "$OUT/logs/all.log"
fi
step summary "$PY" benchmarks/gpu_summary.py "$RUN" "$OUT"
cat "$OUT/logs/summary.log"

# 7. The whole suite, with what is left of the budget (pytest-xdist when present).
left=$((BUDGET_S - SECONDS))
if [ "$TINY" = 0 ] && [ "$left" -gt 30 ]; then
  step test_suite timeout "$left" "$PY" -m pytest -q -p no:cacheprovider "${XD[@]}"
fi
cat "$STEPS"
