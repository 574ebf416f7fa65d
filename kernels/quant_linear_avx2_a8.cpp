// int8-activation kernels on AVX2 (quant_linear.h): quantize_activations, and the int4 / int8 panels'
// dot products with vpmaddubsw (unsigned x signed bytes -> saturating int16 pairs) and vpmaddwd
// (pairs -> int32), called only when the CPU has AVX2, FMA and F16C (quant_linear.cpp). Free of
// standard-library headers, like the other ISA files (their inline functions would be compiled for
// AVX2 here and could be picked by the linker for the generic code too).
#pragma GCC target("avx2,fma,f16c")
#pragma GCC optimize("O3", "fp-contract=off")  // only the fmas written out: the bits every ISA shares
#include <immintrin.h>

#include "a8_avx2.h"
#include "quant_linear.h"

namespace torchchat::kernels::avx2 {
namespace {

using a8::i64;

struct MaddDot {
  // int8 weights as signed codes q: dot(q, x) directly, no 128 * sum(x) to subtract.
  static constexpr bool kSignedInt8 = true;
  static constexpr bool kWideSlices = true;
  static constexpr bool kInt4Pairs = true;
  static constexpr bool kMagnitudes = true;
  static __m256i weights8(__m256i stored) { return _mm256_xor_si256(stored, _mm256_set1_epi8(-128)); }

  // int4 codes 0..15 times activations -128..127: a pair is within +-3840, the 8 products' sum of
  // a row's 32 k within +-30720, so the int16 sums never saturate.
  static void pairs4(const __m256i (&w)[2][8], const std::int8_t* xq, __m256i (&pairs)[2]) {
    pairs[0] = pairs[1] = _mm256_setzero_si256();
    for (int s = 0; s < 8; ++s) {
      const __m256i xs = a8::broadcast4(xq + 4 * s);
      for (int h = 0; h < 2; ++h) {
        pairs[h] = _mm256_add_epi16(pairs[h], _mm256_maddubs_epi16(w[h][s], xs));
        a8::in_order(pairs[h]);
      }
    }
  }

  // int8 in a prompt, slice 0: |q| times x with q's sign, |q| made once per block for the tile's
  // tokens, so a token's dots take no vpabsb (int8a8 ~54 -> ~56.5 GMAC/s). Slice 0's codes are within
  // [-127, 127] (quantize_activations), so giving x q's sign cannot wrap; a pair is within 2 * 127^2.
  static void dot8(const __m256i (&w)[2][8], const __m256i (&magnitude)[2][8], const std::int8_t* xq,
                   __m256i (&d)[2]) {
    const __m256i ones = _mm256_set1_epi16(1);
    d[0] = d[1] = _mm256_setzero_si256();
    for (int s = 0; s < 8; ++s) {
      const __m256i xs = a8::broadcast4(xq + 4 * s);
      for (int h = 0; h < 2; ++h) {
        const __m256i pairs = _mm256_maddubs_epi16(magnitude[h][s], _mm256_sign_epi8(xs, w[h][s]));
        d[h] = _mm256_add_epi32(d[h], _mm256_madd_epi16(pairs, ones));
        a8::in_order(d[h]);
      }
    }
  }

  template <int kBits>
  static void dot(const __m256i (&w)[2][8], const std::int8_t* xq, __m256i (&d)[2]) {
    const __m256i ones = _mm256_set1_epi16(1);
    if constexpr (kBits == 4) {
      __m256i pairs[2];
      pairs4(w, xq, pairs);
      for (int h = 0; h < 2; ++h) d[h] = _mm256_madd_epi16(pairs[h], ones);  // one widening per block
    } else {
      // The unsigned operand is |x| (abs of -128 is 0x80, 128 as unsigned) and the signed one q
      // with x's sign (q in [-127, 127], what quantize_int8 produces, so negating it cannot wrap):
      // |x| * sign(x) q = x q. A pair is within 2 * 128 * 127 = 32512: no saturation.
      d[0] = d[1] = _mm256_setzero_si256();
      for (int s = 0; s < 8; ++s) {
        const __m256i xs = a8::broadcast4(xq + 4 * s), magnitude = _mm256_abs_epi8(xs);
        for (int h = 0; h < 2; ++h) {
          const __m256i pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(w[h][s], xs));
          d[h] = _mm256_add_epi32(d[h], _mm256_madd_epi16(pairs, ones));
          a8::in_order(d[h]);
        }
      }
    }
  }
};

// v rounded half to even (cvtps2dq in the default MXCSR mode, as the generic code), within [lo, hi].
inline __m256i round_within(__m256 v, int lo, int hi) {
  return _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(v), _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi));
}

// 32 int32 lanes (each within int8) as 32 bytes in order.
inline __m256i narrow(const __m256i (&d)[4]) {
  const __m256i words = _mm256_packs_epi16(_mm256_packs_epi32(d[0], d[1]), _mm256_packs_epi32(d[2], d[3]));
  // Each 128-bit lane now holds dwords d0 d1 d2 d3 of its half: put them back in order.
  return _mm256_permutevar8x32_epi32(words, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

inline std::int32_t sum_lanes(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

inline float max_lanes(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ps(m, _mm_shuffle_ps(m, m, 0xb1));
  return _mm_cvtss_f32(m);
}

}  // namespace

void quantize_activations(const float* x, i64 M, i64 K, int slices, std::int8_t* q, float* scale, float* scaled_sum,
                          std::int32_t* sum) {
  const i64 blocks = M * (K / 32);
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (i64 b = 0; b < blocks; ++b) {
    __m256 xv[4];
    // max(|x|, amax) keeps amax where |x| is NaN, as the generic code's fmax(amax, |x|).
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      xv[i] = _mm256_loadu_ps(x + 32 * b + 8 * i);
      amax = _mm256_max_ps(_mm256_and_ps(xv[i], magnitude), amax);
    }
    const float s = max_lanes(amax) / 127.f;
    __m256i d[3][4];
    for (int i = 0; i < 4; ++i) {
      d[0][i] = d[1][i] = d[2][i] = _mm256_setzero_si256();
      if (s == 0.f) continue;
      const __m256 sv = _mm256_set1_ps(s), s1 = _mm256_set1_ps(s * kSliceUnit[1]), s2 = _mm256_set1_ps(s * kSliceUnit[2]);
      d[0][i] = round_within(_mm256_div_ps(xv[i], sv), -127, 127);
      if (slices == 3 && s >= kSmallestSplit) {  // the generic code's steps, lane by lane
        const __m256 r1 = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(d[0][i]), sv, xv[i]);
        d[1][i] = round_within(_mm256_div_ps(r1, s1), -256, 256);
        const __m256 r2 = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(d[1][i]), s1, r1);
        d[2][i] = round_within(_mm256_div_ps(r2, s2), -128, 127);
        // The carries (a true compare is -1 per lane): d1 > 127 with d0 < 127 carries 256 of d1 into
        // d0 as one, d1 < -128 with d0 > -127 borrows it.
        const __m256i carry = _mm256_set1_epi32(256);
        const __m256i up = _mm256_and_si256(_mm256_cmpgt_epi32(d[1][i], _mm256_set1_epi32(127)),
                                            _mm256_cmpgt_epi32(_mm256_set1_epi32(127), d[0][i]));
        d[0][i] = _mm256_sub_epi32(d[0][i], up);
        d[1][i] = _mm256_sub_epi32(d[1][i], _mm256_and_si256(up, carry));
        const __m256i down = _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(-128), d[1][i]),
                                              _mm256_cmpgt_epi32(d[0][i], _mm256_set1_epi32(-127)));
        d[0][i] = _mm256_add_epi32(d[0][i], down);
        d[1][i] = _mm256_add_epi32(d[1][i], _mm256_and_si256(down, carry));
        d[1][i] = _mm256_min_epi32(_mm256_max_epi32(d[1][i], _mm256_set1_epi32(-128)), _mm256_set1_epi32(127));
      }
    }
    for (int j = 0; j < slices; ++j) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + j * M * K + 32 * b), narrow(d[j]));
      sum[j * blocks + b] =
          sum_lanes(_mm256_add_epi32(_mm256_add_epi32(d[j][0], d[j][1]), _mm256_add_epi32(d[j][2], d[j][3])));
    }
    scale[b] = s;
    scaled_sum[b] = s * slice_sum(sum + b, blocks, slices);
  }
}

void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, i64 n0, i64 n1) {
  a8::linear<MaddDot, 4>(x, w, y, n0, n1);
}

void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, i64 n0, i64 n1) {
  a8::linear<MaddDot, 8>(x, w, y, n0, n1);
}

}  // namespace torchchat::kernels::avx2
