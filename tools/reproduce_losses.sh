#!/usr/bin/env bash
# Certified losses on Fashion-MNIST at epsilon 0.1 (cnn3): plain certified training with
# the worst-case IBP loss, MTL-IBP and SABR (experiment fashion_mnist_losses.toml, grid
# certified by IBP on all 10,000 test images), the three networks certified again by
# IBP, CROWN and alpha-CROWN on the first N test images, then CACTUS with the worst-case
# loss against CACTUS with MTL-IBP (fashion_mnist_losses_cactus.toml). Writes
# results/losses_fashion_mnist/.
#   bash tools/reproduce_losses.sh [N]        (N: test images for CROWN / alpha-CROWN)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
out=results/losses_fashion_mnist
runs=${RUNS:-runs/losses}
export TF_CPP_MIN_LOG_LEVEL=3
cli=(.venv/bin/python -m cactus_keras.cli)
"${cli[@]}" experiment examples/configs/fashion_mnist_losses.toml --output "$runs/plain"
"${cli[@]}" experiment examples/configs/fashion_mnist_losses_cactus.toml --output "$runs/cactus"
mkdir -p "$out/verifiers"
for run in ibp mtl-ibp sabr; do
  for bound in ibp crown alpha-crown; do
    json="$out/verifiers/${run}_${bound}.json"
    # A file certified on another number of images is redone, not reused under this N.
    if [ -f "$json" ] && .venv/bin/python -c "import json, sys; sys.exit(json.load(open(sys.argv[1]))['samples'] != int(sys.argv[2]))" "$json" "$n"; then
      continue
    fi
    "${cli[@]}" certify --model "$runs/plain/runs/$run/seed0/network.keras" \
      --dataset fashion_mnist --epsilon 0.1 --bound "$bound" --limit "$n" --json "$json"
  done
done
.venv/bin/python tools/summarize_losses.py --runs "$runs" --output "$out" \
  --command "bash tools/reproduce_losses.sh $n"
