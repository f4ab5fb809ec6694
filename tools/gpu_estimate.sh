#!/usr/bin/env bash
# Times the paper configs' certified training on the lent GPU through Keras's JAX
# backend (the machine has JAX, not TensorFlow), for the time notes in their headers:
#   run(command="bash tools/gpu_estimate.sh", carry=[".whl"])
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/gpu_estimate.txt"
# Epsilon does not change the cost: one config per dataset shape.
for config in mnist_eps0.1_cnn7 cifar10_eps8_255_cnn7; do
  timeout 250 python3 tools/estimate_experiment_time.py "examples/configs/$config.toml" 2>&1 \
    | grep -v "^WARNING\|^I0000\|^E0000" | tee -a "$OUT/gpu_estimate.txt"
done
