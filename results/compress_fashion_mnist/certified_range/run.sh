#!/usr/bin/env bash
# The search of ../run.sh again under compress's current defaults: the "nearest"
# rounding model and each int8 file's output range chosen by its own certificate
# (--output-range certified, issue 23; the runs in .. and ../rounding_nearest predate
# it and take TFLite's calibrated min/max range). Same networks (seeds 0, 1, 2 of
# results/experiments/fashion_mnist_cpu), validation split and candidates.
#
# 1. Every candidate certified (36 ratio pairs per network): {cactus,ibp}_seed{0,1,2}_all.
# 2. The tables (floors.md): tools/summarize_compress.py per seed, floors 1, 2 and 5
#    points below the unpruned IBP int8 file's validation certificate and below the
#    float IBP network's own certificate on the same split (the issue's floors; read
#    from ibp_seed*_all/candidates.jsonl, the unpruned candidate).
# 3. The command as a user runs it (default screen and finalists), seed 0, at the floor
#    2 points below the float IBP network.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PYTHON:-python}
R=results/compress_fashion_mnist/certified_range
NET=results/experiments/fashion_mnist_cpu/runs
for seed in 0 1 2; do
  for method in cactus ibp; do
    [ -f $R/${method}_seed${seed}_all/report.json ] && continue
    $PY -m cactus_keras.cli compress --model $NET/${method}/seed${seed}/network.keras \
      --dataset fashion_mnist --epsilon 0.1 --min-certified 0 --finalists 36 --screen-slack 1 \
      --output $R/${method}_seed${seed}_all --no-download --verbose 0
  done
done
float_floors() {  # the float IBP network's validation certificate minus 1, 2, 5 points
  $PY -c "
import json, sys
for line in open('$R/ibp_seed$1_all/candidates.jsonl'):
    c = json.loads(line)
    if not any(c['ratios'].values()):
        print(' '.join(f\"{c['float_certified_accuracy'] - d:.3f}\" for d in (0.01, 0.02, 0.05)))
        break"
}
for seed in 0 1 2; do
  echo "## seed $seed (float IBP network's certificate minus 1, 2, 5 points: $(float_floors $seed))"
  echo
  $PY tools/summarize_compress.py $R/cactus_seed${seed}_all $R/ibp_seed${seed}_all \
    --reference ibp_seed${seed}_all --below 0.01 0.02 0.05 --floors $(float_floors $seed)
  echo
done > $R/floors.md
FLOOR=$(float_floors 0 | cut -d' ' -f2)
for method in cactus ibp; do
  $PY -m cactus_keras.cli compress --model $NET/${method}/seed0/network.keras \
    --dataset fashion_mnist --epsilon 0.1 --min-certified $FLOOR \
    --output $R/${method}_seed0_floor$FLOOR --no-download --verbose 0 || echo "exit $? ($method)"
done
