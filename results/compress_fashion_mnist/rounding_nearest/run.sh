#!/usr/bin/env bash
# Seed 0 of ../run.sh again with the search's default rounding model, "nearest" (the
# runs in .. assume floor_ceil, verify_tflite's default when they ran). Same networks,
# same validation split, same candidates; only the file certificates' rounding differs.
#
# 1. Every candidate certified (36 ratio pairs): cactus_seed0_all, ibp_seed0_all.
# 2. The command as a user runs it (default screen and finalists) at a floor one point
#    below the unpruned IBP int8 file's validation certificate under "nearest" (read
#    from step 1's ibp_seed0_all/report.json: 0.681, so 0.671).
# 3. The tables: tools/summarize_compress.py, into floors.md, with the floors 1 and 2
#    points below the float IBP network's own certificate (0.718: 0.708 and 0.698),
#    which no floor_ceil file reached; step 1 certified every candidate, so the table
#    answers them without a run of its own.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PYTHON:-python}
R=results/compress_fashion_mnist/rounding_nearest
NET=results/experiments/fashion_mnist_cpu/runs
for method in cactus ibp; do
  $PY -m cactus_keras.cli compress --model $NET/${method}/seed0/network.keras \
    --dataset fashion_mnist --epsilon 0.1 --min-certified 0 --finalists 36 --screen-slack 1 \
    --output $R/${method}_seed0_all --no-download --verbose 0
done
FLOOR=$($PY -c "import json; r = json.load(open('$R/ibp_seed0_all/report.json')); print(f\"{r['unpruned']['validation_certified_accuracy'] - 0.01:.3f}\")")
for method in cactus ibp; do
  $PY -m cactus_keras.cli compress --model $NET/${method}/seed0/network.keras \
    --dataset fashion_mnist --epsilon 0.1 --min-certified $FLOOR \
    --output $R/${method}_seed0_floor$FLOOR --no-download --verbose 0 || echo "exit $? ($method)"
done
$PY tools/summarize_compress.py $R/cactus_seed0_all $R/ibp_seed0_all \
  --reference ibp_seed0_all --below 0.01 0.02 0.05 --floors 0.708 0.698 > $R/floors.md
# 4. The same CACTUS search with --finetune-epochs 1 (defaults: lr 1e-5, lambda 0.5,
#    batch 128, seed 0) and a wider screen (--screen-slack 0.1, 4 finalists), so that
#    smaller candidates reach the fine-tune.
$PY -m cactus_keras.cli compress --model $NET/cactus/seed0/network.keras \
  --dataset fashion_mnist --epsilon 0.1 --min-certified $FLOOR --finetune-epochs 1 \
  --screen-slack 0.1 --finalists 4 --output $R/cactus_seed0_floor${FLOOR}_finetune1 \
  --no-download --verbose 1
