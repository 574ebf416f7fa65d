#!/usr/bin/env bash
# Build llama.cpp's llama-bench and llama-quantize once, from the llama.cpp sources vendored in
# the llama-cpp-python sdist on PyPI (no other download), into a cache folder per ISA.
#
#   bench/build_llama_cpp.sh [native|avx512|avx2]  -> prints the folder holding bin/llama-bench, bin/llama-quantize
#
# native: -march=native (GGML_NATIVE=ON), every extension this CPU has.
# avx2:   a Haswell-level build (AVX, AVX2, FMA, F16C, BMI2; no AVX-512, AVX-VNNI or AMX): on an
#         AVX-512 machine it runs the code an AVX2-only CPU would run.
# avx512: the same plus AVX-512 F/CD/VL/DQ/BW, without VNNI, BF16, VBMI or AMX (Skylake-X level).
set -euo pipefail
ISA="${1:-native}"
VERSION=0.3.36  # llama-cpp-python sdist; pinned so every run compares against the same llama.cpp
CACHE="${TORCHCHAT_BENCH_CACHE:-$HOME/.cache/torchchat-bench}"
SRC="$CACHE/llama-cpp-python-$VERSION"
HASWELL=(-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON
         -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF
         -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
case "$ISA" in
    native) BUILD="$CACHE/llama.cpp-build-$VERSION"; ISA_FLAGS=(-DGGML_NATIVE=ON) ;;
    avx2)   BUILD="$CACHE/llama.cpp-build-$VERSION-avx2"; ISA_FLAGS=("${HASWELL[@]}" -DGGML_AVX512=OFF) ;;
    avx512) BUILD="$CACHE/llama.cpp-build-$VERSION-avx512"; ISA_FLAGS=("${HASWELL[@]}" -DGGML_AVX512=ON) ;;
    *)
        echo "error: unknown ISA '$ISA' (expected native, avx512 or avx2)" >&2; exit 2 ;;
esac

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
echo "== building llama-bench and llama-quantize for $ISA (a few minutes, once)" >&2
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release "${ISA_FLAGS[@]}" \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON >&2
cmake --build "$BUILD" -j2 --target llama-bench llama-quantize >&2
echo "$BUILD"
