#!/usr/bin/env bash
# Build the native llama runner with CMake + Ninja.
#
#   ./scripts/build_native.sh [core|aoti|et] [--sanitize] [--target aarch64]
#
#   core        the runner core library, the tokenize tool, toy_run and the C++ tests  -> ./cmake-out
#   aoti        + aoti_run (AOT Inductor)                                               -> ./cmake-out/aoti_run
#   et          + et_run (ExecuTorch)                                                   -> ./cmake-out/et_run
#   --sanitize  AddressSanitizer + UndefinedBehaviorSanitizer build                     -> ./cmake-out-asan
#   --target aarch64  cross-build core or et for 64-bit ARM Linux (cmake/aarch64-linux-gnu.cmake,
#               ExecuTorch from its aarch64 wheel, unpacked once under
#               $TORCHCHAT_ET_AARCH64, default ~/.cache/torchchat/executorch-aarch64)   -> ./cmake-out-aarch64
#               (ctest there runs the tests under qemu-aarch64-static)
set -euo pipefail
cd "$(dirname "$0")/.."

target="core"
sanitize=0
arch=""
expect_arch=0
for arg in "$@"; do
    if [ "$expect_arch" -eq 1 ]; then arch="$arg"; expect_arch=0; continue; fi
    case "$arg" in
        core|aoti|et) target="$arg" ;;
        --sanitize) sanitize=1 ;;
        --target) expect_arch=1 ;;
        --target=*) arch="${arg#--target=}" ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "error: unknown argument '$arg' (expected core|aoti|et [--sanitize] [--target aarch64])" >&2; exit 2 ;;
    esac
done
if [ "$expect_arch" -eq 1 ] || { [ -n "$arch" ] && [ "$arch" != aarch64 ]; }; then
    echo "error: --target takes aarch64 (the one cross target)" >&2; exit 2
fi

if [ "$arch" = aarch64 ]; then
    [ "$target" != aoti ] || { echo "error: aoti_run is not cross-built (docs/mobile.md: build it on an aarch64 host)" >&2; exit 2; }
    [ "$sanitize" -eq 0 ] || { echo "error: --sanitize is for the native build only" >&2; exit 2; }
    command -v aarch64-linux-gnu-g++ >/dev/null || {
        echo "error: aarch64-linux-gnu-g++ not found (run scripts/install_native_deps.sh)" >&2; exit 1; }
    build_dir="cmake-out-aarch64"
    cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCHCHAT_WERROR=ON -DTORCHCHAT_BUILD_TESTS=ON
                "-DCMAKE_TOOLCHAIN_FILE=$PWD/cmake/aarch64-linux-gnu.cmake" -DTORCHCHAT_BUILD_AOTI=OFF)
    if [ "$target" = et ]; then
        et_dir=$(scripts/executorch_aarch64.sh) || exit 1
        cmake_args+=(-DTORCHCHAT_BUILD_ET=ON "-Dexecutorch_DIR=$et_dir")
    else
        cmake_args+=(-DTORCHCHAT_BUILD_ET=OFF)
    fi
    mkdir -p "$build_dir"
    cmake -S . -B "$build_dir" "${cmake_args[@]}" > "$build_dir/configure.log" 2>&1 || {
        cat "$build_dir/configure.log" >&2
        echo "error: cmake configure failed (missing aarch64 packages? run scripts/install_native_deps.sh)" >&2
        exit 1
    }
    cmake --build "$build_dir" -j2
    echo "built: $build_dir (aarch64; run under qemu: docs/mobile.md; C++ tests: cd $build_dir && ctest)" >&2
    exit 0
fi

build_dir="cmake-out"
cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCHCHAT_WERROR=ON -DTORCHCHAT_BUILD_TESTS=ON)
if [ "$sanitize" -eq 1 ]; then
    build_dir="cmake-out-asan"
    cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTORCHCHAT_WERROR=ON -DTORCHCHAT_BUILD_TESTS=ON -DTORCHCHAT_SANITIZE=ON)
fi

# Each target adds its runner to what the build folder already has (et_run is also built
# whenever the executorch wheel is installed: it builds in seconds); aoti_run, slow to
# compile, only when asked for once.
if ! grep -qs '^TORCHCHAT_BUILD_AOTI:BOOL=ON' "$build_dir/CMakeCache.txt"; then
    cmake_args+=(-DTORCHCHAT_BUILD_AOTI=OFF)
fi

case "$target" in
    core) ;;
    aoti)
        # libtorch ships in the torch wheel: find_package(Torch) through its CMake prefix.
        torch_prefix=$(python3 -c 'import torch.utils; print(torch.utils.cmake_prefix_path)') || {
            echo "error: cannot import torch (run scripts/setup.sh)" >&2; exit 1; }
        cmake_args+=(-DTORCHCHAT_BUILD_AOTI=ON "-DCMAKE_PREFIX_PATH=$torch_prefix") ;;
    et)
        # ExecuTorch ships in the executorch wheel (headers, shared libraries, CMake package):
        # find_package(executorch) through its share/cmake; no source build, no submodules.
        et_dir=$(python3 -c 'import executorch, os; print(os.path.join(executorch.__path__[0], "share", "cmake"))') || {
            echo "error: cannot import executorch (run scripts/setup.sh)" >&2; exit 1; }
        cmake_args+=(-DTORCHCHAT_BUILD_ET=ON "-Dexecutorch_DIR=$et_dir") ;;
esac

mkdir -p "$build_dir"
cmake -S . -B "$build_dir" "${cmake_args[@]}" > "$build_dir/configure.log" 2>&1 || {
    cat "$build_dir/configure.log" >&2
    echo "error: cmake configure failed (missing dependencies? run scripts/install_native_deps.sh)" >&2
    exit 1
}
cmake --build "$build_dir" -j2
runners=$(cd "$build_dir" && ls aoti_run et_run 2>/dev/null | tr "\n" " " || true)
echo "built: $build_dir (tokenize, toy_run, ${runners}C++ tests: cd $build_dir && ctest)" >&2
