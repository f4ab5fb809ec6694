#!/usr/bin/env bash
# The certificate-constrained search on cnn5 (one seed), where an int8 file's inference
# takes long enough for removed channels to show in its latency. The networks:
# results/experiments/fashion_mnist_cnn5 (examples/configs/fashion_mnist_cnn5.toml: IBP
# and CACTUS's recommended set, 4 epochs). compress's defaults otherwise ("nearest"
# rounding, each file's output range chosen by its own certificate).
#
# 1. Every screened candidate certified: cnn5 has four hidden layers, so the grid of 6
#    ratios per layer (1,296 candidates) is sampled to 48 (the 6 uniform ones always
#    in, the rest seeded), each exported and certified (--finalists 48 --screen-slack 1).
# 2. The tables (floors.md): tools/summarize_compress.py, floors 1, 2 and 5 points below
#    the unpruned IBP int8 file's validation certificate and below the float IBP
#    network's own certificate on the same split.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PYTHON:-python}
R=results/compress_fashion_mnist/cnn5
NET=results/experiments/fashion_mnist_cnn5/runs
for method in cactus ibp; do
  [ -f $R/${method}_seed0_all/report.json ] && continue
  $PY -m cactus_keras.cli compress --model $NET/${method}/seed0/network.keras \
    --dataset fashion_mnist --epsilon 0.1 --min-certified 0 --max-candidates 48 \
    --finalists 48 --screen-slack 1 --output $R/${method}_seed0_all --no-download --verbose 0
done
FLOORS=$($PY -c "
import json
for line in open('$R/ibp_seed0_all/candidates.jsonl'):
    c = json.loads(line)
    if not any(c['ratios'].values()):
        print(' '.join(f\"{c['float_certified_accuracy'] - d:.3f}\" for d in (0.01, 0.02, 0.05)))
        break")
{
  echo "## cnn5, seed 0 (float IBP network's certificate minus 1, 2, 5 points: $FLOORS)"
  echo
  $PY tools/summarize_compress.py $R/cactus_seed0_all $R/ibp_seed0_all \
    --reference ibp_seed0_all --below 0.01 0.02 0.05 --floors $FLOORS
} > $R/floors.md
