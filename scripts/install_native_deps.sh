#!/usr/bin/env bash
# Native build dependencies of the llama runner, from Debian packages.
# Idempotent: installs only what is missing, so a second run does nothing.
#   cmake, ninja, g++     build tools
#   nlohmann-json3-dev    JSON (tokenizer.json, model metadata)
#   libpcre2-dev          Unicode regex with look-ahead (tiktoken / HF pre-tokenizer patterns)
#   libgtest-dev          C++ unit tests (ctest)
#   qemu-user-static      ../shared/tools/avx2-cpu: tests run the AVX2 paths as an AVX2-only CPU would
#   clang, libclang-rt-14-dev  libFuzzer with ASan/UBSan (scripts/fuzz.sh)
set -euo pipefail

packages=(cmake ninja-build g++ pkg-config nlohmann-json3-dev libpcre2-dev libgtest-dev qemu-user-static clang libclang-rt-14-dev)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
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
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
