#!/usr/bin/env bash
# All tests: fast unit tests on tiny random-weight models first, then the native core,
# then end-to-end tests on the real default model. Run scripts/setup.sh once before.
set -euo pipefail
cd "$(dirname "$0")/.."

# pytest exits 5 when a stage collects nothing; that is not a failure of the stage.
run_pytest() {
    local rc=0
    python3 -m pytest "$@" || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
}

printf '\n== Python unit tests (tiny random models)\n' >&2
run_pytest -q -m "not e2e" tests/python

if [ -x scripts/build_native.sh ]; then
    printf '\n== Native runner core: build and tests\n' >&2
    scripts/build_native.sh core
    (cd cmake-out && ctest --output-on-failure -j2)
    run_pytest -q -m "not e2e" tests/runner
fi

printf '\n== End-to-end tests on the default model\n' >&2
run_pytest -q -m e2e tests
