#!/usr/bin/env bash
# One command from a fresh clone to generated text: set up, then run the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
printf '\n== Generating with smollm2-135m (eager PyTorch)\n' >&2
python3 torchchat.py generate smollm2-135m --prompt "Once upon a time" --temperature 0 --max-new-tokens 64
