#!/usr/bin/env bash
# Sets up (tools/setup.sh), then runs the main job end to end: trains CACTUS and plain
# IBP on Fashion-MNIST with a short CPU schedule, certifies both under pruning and int8
# (fake-quantized kernels and the exported int8 .tflite file, verified on its own integer
# arithmetic), and writes the report, tables and plots (examples/configs/quickstart.toml).
# Output goes to runs/quickstart/ (a second call reuses finished runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh tensorflow
export TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/cactus-keras experiment examples/configs/quickstart.toml --output runs/quickstart "$@"
