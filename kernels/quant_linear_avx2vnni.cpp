// int4 / int8 panels times int8 activations with AVX-VNNI (quant_linear.h): vpdpbusd on 256 bits
// multiplies the stored unsigned codes by the activation bytes and adds each 4 products into an
// int32 lane without saturation, as the AVX-512 VNNI kernel does on 512. Called only when the CPU
// has AVX2, FMA, F16C and AVX-VNNI (quant_linear.cpp); free of standard-library headers, like the
// other ISA files. quantize_activations is avx2's.
#pragma GCC target("avx2,fma,f16c,avxvnni")
#pragma GCC optimize("O3", "fp-contract=off")  // only the fmas written out: the bits every ISA shares
#include <immintrin.h>

#include "a8_avx2.h"
#include "quant_linear.h"

namespace torchchat::kernels::avx2vnni {
namespace {

using a8::i64;

struct VnniDot {
  // int8 weights stay q + 128 (vpdpbusd's unsigned operand): the caller subtracts 128 * sum(x).
  static constexpr bool kSignedInt8 = false;
  static constexpr bool kWideSlices = false;  // vpdpbusd makes a slice's dots in 2 instructions per 4 k of 8 rows
  static constexpr bool kInt4Pairs = false;
  static constexpr bool kMagnitudes = false;
  static __m256i weights8(__m256i stored) { return stored; }

  template <int kBits>
  static void dot(const __m256i (&w)[2][8], const std::int8_t* xq, __m256i (&d)[2]) {
    // Two chains per half: the dot products' latency overlaps.
    __m256i first[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    __m256i second[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int s = 0; s < 4; ++s) {
      const __m256i xs = a8::broadcast4(xq + 4 * s), xt = a8::broadcast4(xq + 16 + 4 * s);
      for (int h = 0; h < 2; ++h) {
        first[h] = _mm256_dpbusd_avx_epi32(first[h], w[h][s], xs);
        second[h] = _mm256_dpbusd_avx_epi32(second[h], w[h][s + 4], xt);
      }
    }
    for (int h = 0; h < 2; ++h) d[h] = _mm256_add_epi32(first[h], second[h]);
  }
};

}  // namespace

void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, i64 n0, i64 n1) {
  a8::linear<VnniDot, 4>(x, w, y, n0, n1);
}

void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, i64 n0, i64 n1) {
  a8::linear<VnniDot, 8>(x, w, y, n0, n1);
}

}  // namespace torchchat::kernels::avx2vnni
