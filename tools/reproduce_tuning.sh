#!/usr/bin/env bash
# A small KerasTuner search over lambda (standard weight) and eta (AWP radius): 6 random
# trials of CACTUS (pruned + quantized members) on a 3000-sample Fashion-MNIST slice at
# epsilon 0.1, objective the mean of the full network's and the worst target's
# (pruning 0.7, int8) certified accuracy on 500 test samples. The search itself lives in
# runs/tuning/fashion_mnist (trial checkpoints, not committed; a second call resumes it
# and runs nothing); the summary, Pareto front and plot, best hyperparameters and logs
# are copied to results/tuning/.
#   bash tools/reproduce_tuning.sh            (2 min 16 s of search on 2 shared cores: search.log)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/tuning}
search=${TUNE_DIRECTORY:-runs/tuning/fashion_mnist}
mkdir -p "$out"
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
quiet() { grep -v "^WARNING: All log messages\|^I0000\|^E0000\|triggered tf.function retracing" || true; }
args=(--dataset fashion_mnist --epsilon 0.1 --targets prune:0.7,quantize:8 --objective mean
      --tuner random --max-trials 6 --epochs 4 --arch cnn3 --ibp-init --batch-size 128
      --limit 3000 --validation-samples 500 --seed 0 --directory "$search")
echo "cactus-keras tune ${args[*]}" > "$out/command.txt"
.venv/bin/cactus-keras tune "${args[@]}" 2>&1 | quiet | tee "$out/search.log"
.venv/bin/cactus-keras tune "${args[@]}" --best 2>&1 | quiet | tee "$out/best.log"
cp "$search"/{tuning_summary.json,pareto.json,pareto.png,best_hyperparameters.json} "$out/"
