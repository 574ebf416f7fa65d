#!/usr/bin/env bash
# All tests: build the native runners, then fast tests on tiny random-weight models (Python,
# C++ units, runner CLI and tokenizer parity), then end-to-end tests on the real default
# model. Run scripts/setup.sh once before.
set -euo pipefail
cd "$(dirname "$0")/.."

# pytest exits 5 when a stage collects nothing; that is not a failure of the stage.
run_pytest() {
    local rc=0
    python3 -m pytest "$@" || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
}

printf '\n== Native runner: build core + aoti_run + et_run, and the ASan/UBSan core + et_run\n' >&2
scripts/build_native.sh aoti
scripts/build_native.sh core --sanitize

printf '\n== Unit tests on tiny random models (Python, C++, native runner)\n' >&2
(cd cmake-out && ctest --output-on-failure -j2)
# Two workers (pytest-xdist), a test file each at a time: most of this stage is exporting tiny
# models, much of which runs on one core (tracing, Inductor's code generation, one g++), so two
# files side by side take 8-11 minutes instead of 13 on two cores. Module fixtures stay in one worker.
run_pytest -n 2 --dist loadfile -q -m "not e2e" tests/python tests/runner

printf '\n== Fuzzing the tokenizers'"'"' encoders (libFuzzer, ASan/UBSan), 10 s each\n' >&2
scripts/fuzz.sh 10

printf '\n== End-to-end tests on the default model\n' >&2
# One worker: the real model's native runs use both cores (OpenMP, ~150 barriers a token); beside
# a second worker's export, aoti_run slowed past its 120 s timeout in one of two tries.
run_pytest -q -m e2e tests
