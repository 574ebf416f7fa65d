#!/usr/bin/env bash
# The executorch==1.5.1 wheel for manylinux aarch64, downloaded and unpacked once (no source
# build): its headers, shared libraries and CMake package serve the aarch64 cross-build of et_run.
# Prints the directory of its CMake package (executorch_DIR); the libraries are in
# <that>/../../lib. The cache directory is $TORCHCHAT_ET_AARCH64, default
# ~/.cache/torchchat/executorch-aarch64.
set -euo pipefail

version=1.5.1
cache="${TORCHCHAT_ET_AARCH64:-$HOME/.cache/torchchat/executorch-aarch64}"
package="$cache/unpacked/executorch/share/cmake"
if [ -f "$package/executorch-config.cmake" ] && [ -f "$cache/unpacked/.version-$version" ]; then
    echo "$package"; exit 0
fi
mkdir -p "$cache"
python3 -m pip download -q --disable-pip-version-check "executorch==$version" --no-deps \
    --platform manylinux_2_28_aarch64 --only-binary :all: -d "$cache" >&2 || {
    echo "error: cannot download the executorch $version aarch64 wheel" >&2; exit 1; }
wheel=$(ls "$cache"/executorch-"$version"-*manylinux_2_28_aarch64.whl | head -n 1)
rm -rf "$cache/unpacked"
python3 -m zipfile -e "$wheel" "$cache/unpacked"
touch "$cache/unpacked/.version-$version"
echo "$package"
