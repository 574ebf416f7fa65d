#!/usr/bin/env bash
# Native build dependencies of the llama runner, from Debian packages.
# Idempotent: installs only what is missing, so a second run does nothing.
#   cmake, ninja, g++     build tools
#   nlohmann-json3-dev    JSON (tokenizer.json, model metadata)
#   libpcre2-dev          Unicode regex with look-ahead (tiktoken / HF pre-tokenizer patterns)
#   libgtest-dev          C++ unit tests (ctest)
#   qemu-user-static      ../shared/tools/avx2-cpu: tests run the AVX2 paths as an AVX2-only CPU would
#   clang, libclang-rt-14-dev  libFuzzer with ASan/UBSan (scripts/fuzz.sh)
#   g++-aarch64-linux-gnu, libpcre2-dev:arm64, libgtest-dev:arm64
#                         the aarch64 cross-build (build_native.sh --target aarch64; Debian's arm64
#                         architecture is added for the two libraries), run under qemu-user-static
set -euo pipefail

packages=(cmake ninja-build g++ pkg-config nlohmann-json3-dev libpcre2-dev libgtest-dev qemu-user-static clang libclang-rt-14-dev
          g++-aarch64-linux-gnu libpcre2-dev:arm64 libgtest-dev:arm64)

missing=()
# Installed for this machine's architecture (or for all), or for the one named after a colon.
installed() {
    local name="${1%%:*}" arch="${1#*:}"
    [ "$arch" != "$1" ] || arch=$(dpkg --print-architecture)
    dpkg-query -W -f='${Status} ${Architecture}\n' "$name" 2>/dev/null | grep -qE "^install ok installed ($arch|all)$"
}
for pkg in "${packages[@]}"; do
    if ! installed "$pkg"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "native deps: all present" >&2
    exit 0
fi

echo "native deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if [ "$(dpkg --print-architecture)" != arm64 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
