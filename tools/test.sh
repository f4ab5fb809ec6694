#!/usr/bin/env bash
# Sets up (tools/setup.sh), checks the package's layers (lint-imports, .importlinter) and
# runs the test suite. Extra arguments go to pytest: `bash tools/test.sh -m "not slow"`
# is the fast loop. The tests run in one worker process per core (pytest-xdist), each
# test file in one worker, so that a file's shared fixtures are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/lint-imports --config .importlinter
exec .venv/bin/python -m pytest -q -n auto --dist loadfile "$@"
