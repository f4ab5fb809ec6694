#!/usr/bin/env bash
# Builds or serves the documentation site (MkDocs Material + mkdocstrings, mkdocs.yml).
#   bash tools/docs.sh build    # site/ with warnings as errors (what CI runs)
#   bash tools/docs.sh serve    # http://127.0.0.1:8000 with live reload
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:-build}
bash tools/setup.sh test >/dev/null
export TF_CPP_MIN_LOG_LEVEL=3
case "$action" in
  build) exec .venv/bin/mkdocs build --strict --quiet ;;
  serve) exec .venv/bin/mkdocs serve ;;
  *) echo "docs: unknown action '$action'; give build or serve" >&2; exit 2 ;;
esac
