#!/usr/bin/env bash
# Run the test suite on CPU, setting up .venv first (scripts/setup.sh) unless it is current: set up by setup.sh
# from this very pyproject.toml and setup.sh (their hash is in .venv/.routerllm-setup). A fresh clone sets up
# fully. Arguments go to pytest: `bash scripts/test.sh -m "not slow"` is the fast loop; none runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
want=$(python3 scripts/setup_hash.py)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.routerllm-setup 2>/dev/null)" != "$want" ]; then
  bash scripts/setup.sh
else
  echo "scripts/test.sh: .venv is current (pyproject.toml and scripts/setup.sh unchanged); not reinstalling" >&2
fi
. .venv/bin/activate
python -m pytest -q -p no:cacheprovider "$@"
