#!/usr/bin/env bash
# One command from a fresh clone to natively generated text: set up, run the default model
# in Python, export it with AOT Inductor, build the native runner, and generate with it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
printf '\n== Generating with smollm2-135m (eager PyTorch)\n' >&2
python3 torchchat.py generate smollm2-135m --prompt "Once upon a time" --temperature 0 --max-new-tokens 64
printf '\n== Exporting smollm2-135m to ./model.so (AOT Inductor; a few minutes of compiling)\n' >&2
python3 torchchat.py export smollm2-135m --output-dso-path ./model.so
printf '\n== Building the native runner ./cmake-out/aoti_run\n' >&2
./scripts/build_native.sh aoti
printf '\n== Generating with ./cmake-out/aoti_run (no Python)\n' >&2
./cmake-out/aoti_run ./model.so -z "$(python3 torchchat.py where smollm2-135m)/tokenizer.json" \
    -i "Once upon a time" -t 0 -n 64
