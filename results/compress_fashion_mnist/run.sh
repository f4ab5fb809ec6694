#!/usr/bin/env bash
# The certificate-constrained search on the committed Fashion-MNIST cnn3 networks
# (results/experiments/fashion_mnist_cpu), epsilon 0.1. Floors: the float IBP network's
# (seed 0) IBP certificate on the search's validation split (the last 1000 training
# images) is 0.718 (tools: cactus_keras.certify(net, x_train[-1000:], y_train[-1000:],
# 0.1)); the floors are 1, 2 and 5 points below it.
# Usage: results/compress_fashion_mnist/run.sh [SEEDS...]   (default: 0)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
for seed in "${@:-0}"; do
  for method in cactus ibp; do
    for floor in 0.708 0.698 0.668; do
      out=results/compress_fashion_mnist/${method}_seed${seed}_floor${floor}
      $PY -m cactus_keras.cli compress \
        --model results/experiments/fashion_mnist_cpu/runs/${method}/seed${seed}/network.keras \
        --dataset fashion_mnist --epsilon 0.1 --min-certified ${floor} --objective size \
        --output "$out" --no-download --verbose 0 || echo "exit $? ($out)"
    done
  done
done
