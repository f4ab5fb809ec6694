#!/usr/bin/env bash
# IBP training then int8/int4, versus CACTUS with the AWP quantization member, on full
# Fashion-MNIST at epsilon 0.1 (same schedule as tools/reproduce_pruning.sh, whose IBP
# model is the baseline here). Certifies the Keras model with fake-quantized int8 and
# int4 kernels and the exported int8 .tflite file. Writes results/quantization_fashion_mnist/.
#   bash tools/reproduce_pruning.sh && bash tools/reproduce_quantization.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/quantization_fashion_mnist}
baseline=${2:-results/pruning_fashion_mnist/ibp/model.keras}
mkdir -p "$out"
export TF_CPP_MIN_LOG_LEVEL=3
# Two CACTUS runs: the AWP member aimed at 4-bit and at 8-bit kernels (eta 0.5 steps).
for bits in 4 8; do
  run=cactus_awp$bits
  if [ ! -f "$out/$run/model.keras" ]; then
    .venv/bin/cactus-keras train --dataset fashion_mnist --epsilon 0.1 --arch cnn3 --epochs 20 \
      --warmup-epochs 1 --ramp-epochs 10 --standard-weight 0.25 --ibp-init --batch-size 128 \
      --learning-rate 1e-3 --seed 0 --validation-samples 1000 --compression quant --bits $bits \
      --awp-radius 0.5 --output "$out/$run" > "$out/$run.train.log" 2>&1
  fi
done
for run in ibp cactus_awp4 cactus_awp8; do
  if [ "$run" = ibp ]; then model=$baseline; else model=$out/$run/model.keras; fi
  .venv/bin/cactus-keras evaluate --model "$model" --dataset fashion_mnist --epsilon 0.1 \
    --ratios 0 --bits-list 8,4 --json "$out/$run.evaluate.json" > "$out/$run.evaluate.txt" 2>&1
  .venv/bin/cactus-keras export --model "$model" --dataset fashion_mnist \
    --output "$out/$run.int8.tflite" > "$out/$run.export.txt" 2>&1
  for rounding in floor_ceil nearest; do
    .venv/bin/cactus-keras verify-tflite --model "$out/$run.int8.tflite" --dataset fashion_mnist \
      --epsilon 0.1 --rounding $rounding --json "$out/$run.verify_$rounding.json" \
      > "$out/$run.verify_$rounding.txt" 2>&1
  done
done
.venv/bin/python tools/summarize_quantization.py "$out" | tee "$out/summary.md"
