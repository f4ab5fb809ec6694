#!/usr/bin/env bash
# Runs the backend-independent tests and the benchmarks on Keras's JAX backend, on the
# lent GPU machine (which has JAX but not TensorFlow). Keras and its two missing
# dependencies travel as wheels in .whl/ (see the device tool's README):
#   run(command="bash tools/gpu_check.sh", carry=[".whl"])
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import keras, jax; print('keras', keras.__version__, 'jax', jax.__version__, jax.devices())"
timeout 300 python3 -m pytest -q -p no:cacheprovider -rs --maxfail=30 \
  tests/test_rules.py tests/test_soundness.py tests/test_adjoints.py tests/test_certify.py \
  tests/test_pruning.py tests/test_training.py 2>&1 | tee "$OUT/pytest_jax_gpu.txt" | tail -40
timeout 90 python3 tools/bench_bounds.py --json "$OUT/bench_bounds_jax_gpu.json" 2>&1 | tee "$OUT/bench_bounds_jax_gpu.txt"
timeout 90 python3 tools/bench_train.py --json "$OUT/bench_train_jax_gpu.json" 2>&1 | tee "$OUT/bench_train_jax_gpu.txt"
