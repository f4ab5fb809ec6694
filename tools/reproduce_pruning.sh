#!/usr/bin/env bash
# CACTUS (full + one pruned member) versus IBP training followed by pruning, on full
# Fashion-MNIST at epsilon 0.1 with a CPU-sized schedule. Writes results/pruning_fashion_mnist/.
#   bash tools/reproduce_pruning.sh            (about 15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/pruning_fashion_mnist}
mkdir -p "$out"
export TF_CPP_MIN_LOG_LEVEL=3
common=(--dataset fashion_mnist --epsilon 0.1 --arch cnn3 --epochs 20 --warmup-epochs 1
        --ramp-epochs 10 --standard-weight 0.25 --ibp-init --batch-size 128
        --learning-rate 1e-3 --seed 0 --validation-samples 1000)
for run in ibp cactus; do
  if [ "$run" = ibp ]; then compression=none; else compression=prune; fi
  if [ ! -f "$out/$run/model.keras" ]; then
    .venv/bin/cactus-keras train "${common[@]}" --compression "$compression" \
      --ratio 0.25 0.75 --pruning-method global_l1 --output "$out/$run" > "$out/$run.train.log" 2>&1
  fi
  .venv/bin/cactus-keras evaluate --model "$out/$run/model.keras" --dataset fashion_mnist \
    --epsilon 0.1 --ratios 0,0.5,0.7 --pruning-methods global_l1,local_l1,global_l2_structured \
    --json "$out/$run/evaluate.json" > "$out/$run.evaluate.txt" 2>&1
done
.venv/bin/python tools/summarize_pruning.py "$out" | tee "$out/summary.md"
