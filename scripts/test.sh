#!/usr/bin/env bash
# The tests. Run scripts/setup.sh once before.
#
#   scripts/test.sh           all of them (what .ci/run calls): build the native runners (and
#                             et_run cross-built for aarch64, its C++ tests run under qemu), then
#                             tests on tiny random-weight models (Python, C++ units, runner CLI
#                             and tokenizer parity, tiny models exported and run), then end-to-end
#                             tests on the real default model.
#   scripts/test.sh --quick   the tier to run after each change, a few minutes on 2 cores: the
#                             runner core and its C++ units, and every Python and runner test
#                             that exports nothing (pytest -m "not e2e and not export"): no
#                             export of the real model and no AOT Inductor or ExecuTorch compile.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "error: unknown argument '$arg' (expected --quick)" >&2; exit 2 ;;
    esac
done

# pytest exits 5 when a stage collects nothing; that is not a failure of the stage.
# The tiny-model stages run two test files side by side (pytest-xdist), so each process and the
# programs it starts get one core: two OpenMP threads each on 2 cores spin at every barrier and
# made a tiny model's generate 2x slower. Tests about threads set their own counts.
run_pytest() {
    local rc=0
    python3 -m pytest "$@" || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
}

if [ "$quick" -eq 1 ]; then
    printf '\n== Native runner core (quick tier)\n' >&2
    scripts/build_native.sh core
    (cd cmake-out && ctest --output-on-failure -j2)
    printf '\n== Python and runner tests that export nothing (quick tier)\n' >&2
    OMP_NUM_THREADS=1 run_pytest -n 2 --dist loadfile -q -m "not e2e and not export" tests/python tests/runner
    exit 0
fi

printf '\n== Native runner: build core + aoti_run + et_run, and the ASan/UBSan core + et_run\n' >&2
scripts/build_native.sh aoti
scripts/build_native.sh core --sanitize
printf '\n== aarch64: et_run and the C++ tests cross-built, the tests run under qemu-aarch64\n' >&2
scripts/build_native.sh et --target aarch64
(cd cmake-out-aarch64 && ctest --output-on-failure -j2)

printf '\n== Unit tests on tiny random models (Python, C++, native runner)\n' >&2
(cd cmake-out && ctest --output-on-failure -j2)
# The C API's bad-input and session-file tests under ASan/UBSan too (the Python tests drive the
# rest of the sanitized build).
(cd cmake-out-asan && ctest --output-on-failure -R 'c_api|session_file')
# Two workers (pytest-xdist), a test file each at a time: most of this stage is exporting tiny
# models, much of which runs on one core (tracing, Inductor's code generation, one g++), so two
# files side by side take 8-11 minutes instead of 13 on two cores. Module fixtures stay in one worker.
OMP_NUM_THREADS=1 run_pytest -n 2 --dist loadfile -q -m "not e2e" tests/python tests/runner

printf '\n== Fuzzing the tokenizers'"'"' encoders (libFuzzer, ASan/UBSan), 30 s each\n' >&2
scripts/fuzz.sh 30

printf '\n== End-to-end tests on the default model\n' >&2
# Two workers, a file each at a time, one core each: most of this stage is the real model's two
# ExecuTorch lowerings (about 2.5 minutes each, one core's Python), in two files. One OpenMP thread
# per process, because a runner's two threads beside the other worker's export spin at every
# barrier (~150 a token): aoti_run slowed past its 120 s timeout so.
OMP_NUM_THREADS=1 run_pytest -n 2 --dist loadfile -q -m e2e tests
