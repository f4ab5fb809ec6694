#!/usr/bin/env bash
# Sets up (tools/setup.sh), then runs the main job end to end: see
# examples/certify_fashion_mnist.py. Output goes to runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/python examples/certify_fashion_mnist.py --output runs/quickstart "$@"
.venv/bin/cactus-keras certify --model runs/quickstart/model.keras --dataset fashion_mnist \
  --epsilon 0.005 --method crown --limit 200 --json runs/quickstart/certify_crown.json
