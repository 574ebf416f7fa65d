#!/usr/bin/env bash
# Build llama.cpp's llama-bench and llama-quantize once, from the llama.cpp sources vendored in
# the llama-cpp-python sdist on PyPI (no other download), into a cache folder.
#
#   bench/build_llama_cpp.sh            -> prints the folder holding bin/llama-bench, bin/llama-quantize
set -euo pipefail
VERSION=0.3.36  # llama-cpp-python sdist; pinned so every run compares against the same llama.cpp
CACHE="${TORCHCHAT_BENCH_CACHE:-$HOME/.cache/torchchat-bench}"
SRC="$CACHE/llama-cpp-python-$VERSION"
BUILD="$CACHE/llama.cpp-build-$VERSION"

if [ -x "$BUILD/bin/llama-bench" ] && [ -x "$BUILD/bin/llama-quantize" ]; then
    echo "$BUILD"; exit 0
fi
mkdir -p "$CACHE"
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
    echo "== downloading the llama-cpp-python $VERSION sdist (llama.cpp sources)" >&2
    python3 -m pip download -q --no-deps --no-binary :all: -d "$CACHE" \
        "llama-cpp-python==$VERSION" >&2
    tar -xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
    [ -d "$SRC" ] || mv "$CACHE/llama_cpp_python-$VERSION" "$SRC"
fi
echo "== building llama-bench and llama-quantize (a few minutes, once)" >&2
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON >&2
cmake --build "$BUILD" -j2 --target llama-bench llama-quantize >&2
echo "$BUILD"
