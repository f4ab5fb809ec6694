#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for cactus-keras: Debian's Fashion-MNIST
# package, a virtual environment in .venv and the package with its extras (default
# `test`, everything the suite needs; tools/main.sh asks for `tensorflow` only, which is
# all the main job imports), at the versions of constraints.txt.
#   bash tools/setup.sh [EXTRAS]     (EXTRAS: one of pyproject.toml's, e.g. test, tensorflow)
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-test}
case "$extras" in
  test|full|tensorflow|tune|jax|onnx|docs) ;;
  *) echo "setup: unknown extras '$extras'; give one of test, full, tensorflow, tune, jax, onnx, docs (pyproject.toml)" >&2; exit 2 ;;
esac

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root (or sudo) for: $*" >&2; return 1; fi
}

need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
python3 -m venv --help >/dev/null 2>&1 && python3 -c "import ensurepip" 2>/dev/null || need_apt+=(python3-venv)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: not a Debian/Ubuntu machine; install ${need_apt[*]} yourself" >&2
  fi
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"setup: cactus-keras needs Python 3.10 or newer, found {sys.version.split()[0]}")
PY

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# The ranges of pyproject.toml, at the exact versions CI tests (constraints.txt).
.venv/bin/python -m pip install -q -c constraints.txt -e ".[$extras]"
echo "setup: ready ($(.venv/bin/python -c 'import keras, tensorflow as tf; print(f"Keras {keras.__version__}, TensorFlow {tf.__version__}")' 2>/dev/null))"
