#!/usr/bin/env bash
# KerasTuner's distributed mode on this machine's loopback: one chief (it serves the
# oracle over gRPC and trains nothing) and two workers (they ask the chief for trials,
# train them and report back), all running the same `cactus-keras tune` command and told
# apart by KERASTUNER_TUNER_ID. Tiny settings: 4 trials of 4 epochs on a 2000-sample
# Fashion-MNIST slice. Logs of each process, the summary and the Pareto plot go to LOGDIR.
#   bash tools/tune_distributed.sh [LOGDIR]      (default results/tuning/distributed;
#                                                 workers done in 76 s on 2 shared cores: run.log)
# On several machines: the same command everywhere, KERASTUNER_ORACLE_IP set to the
# chief's address, a --directory that all of them can read and write (shared disk).
set -euo pipefail
cd "$(dirname "$0")/.."
logs=${1:-results/tuning/distributed}
search=${TUNE_DIRECTORY:-runs/tuning/distributed}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$logs"
exec > >(tee "$logs/run.log") 2>&1
rm -rf "$search"
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
quiet() { grep -v "^WARNING: All log messages\|^I0000\|^E0000\|triggered tf.function retracing" || true; }
port=$("$py" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
export KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=$port
args=(tune --dataset fashion_mnist --epsilon 0.1 --targets prune:0.7 --objective mean
      --tuner random --max-trials 4 --epochs 4 --arch cnn3 --ibp-init --batch-size 128 --limit 2000
      --validation-samples 200 --seed 0 --directory "$search")
echo "KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=$port KERASTUNER_TUNER_ID=chief|tuner0|tuner1 cactus-keras ${args[*]}" > "$logs/command.txt"

start=$(date +%s)
KERASTUNER_TUNER_ID=chief "$py" -m cactus_keras.cli "${args[@]}" > "$logs/chief.raw.log" 2>&1 &
chief=$!
# Workers start once the chief's oracle answers on the port.
for _ in $(seq 240); do
  if "$py" -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then break; fi
  kill -0 "$chief" 2>/dev/null || { echo "the chief exited early:"; cat "$logs/chief.raw.log"; exit 1; }
  sleep 0.5
done
echo "chief (pid $chief) serves the oracle on 127.0.0.1:$port after $(( $(date +%s) - start )) s"
workers=()
for id in tuner0 tuner1; do
  KERASTUNER_TUNER_ID=$id "$py" -m cactus_keras.cli "${args[@]}" > "$logs/$id.raw.log" 2>&1 &
  workers+=($!)
  echo "worker $id: pid $!"
done
status=0
for pid in "${workers[@]}"; do wait "$pid" || status=$?; done
echo "workers done after $(( $(date +%s) - start )) s (exit status $status)"
# The chief leaves on its own once every worker has been told to stop (it polls every
# 20 s); it is killed if it has not after 60 s.
for _ in $(seq 60); do kill -0 "$chief" 2>/dev/null || break; sleep 1; done
if kill -0 "$chief" 2>/dev/null; then
  echo "chief still running: killing pid $chief"; kill "$chief"; wait "$chief" || true
else
  wait "$chief" && echo "chief exited by itself (status 0)" || echo "chief exited with status $?"
fi
for name in chief tuner0 tuner1; do quiet < "$logs/$name.raw.log" > "$logs/$name.log"; rm "$logs/$name.raw.log"; done
# Which worker ran which trial, from the workers' logs.
grep -h "running trial\|: trial " "$logs"/tuner*.log || true
unset KERASTUNER_ORACLE_IP KERASTUNER_ORACLE_PORT
"$py" -m cactus_keras.cli "${args[@]}" --best 2>&1 | quiet > "$logs/best.log"
cat "$logs/best.log"
cp "$search"/{tuning_summary.json,pareto.json,pareto.png,best_hyperparameters.json} "$logs/"
exit "$status"
