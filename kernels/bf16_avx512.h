// 16 bf16 values widened to fp32 lanes, for the AVX-512 files only: include it after their
// target pragma.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace torchchat::kernels::avx512 {

inline __m512 widen_bf16(__m256i bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline __m512 widen_bf16x16(const std::uint16_t* p) {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// The first lanes of mask only (the others zero).
inline __m512 widen_bf16x16(const std::uint16_t* p, __mmask16 mask) {
  return widen_bf16(_mm256_maskz_loadu_epi16(mask, p));
}

// The kernels' one tree over 16 lanes (quant_linear.h, attention.h): lane i with i + 8, then
// i + 4, then i + 2, then lane 0 with lane 1. Not _mm512_reduce_*_ps: the order is ours to fix.
inline __m256 upper_half(__m512 x) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)); }
inline float sum16(__m512 x) {
  const __m256 x8 = _mm256_add_ps(_mm512_castps512_ps256(x), upper_half(x));
  const __m128 x4 = _mm_add_ps(_mm256_castps256_ps128(x8), _mm256_extractf128_ps(x8, 1));
  const __m128 x2 = _mm_add_ps(x4, _mm_movehl_ps(x4, x4));
  return _mm_cvtss_f32(_mm_add_ss(x2, _mm_movehdup_ps(x2)));
}
inline float max16(__m512 x) {
  const __m256 x8 = _mm256_max_ps(_mm512_castps512_ps256(x), upper_half(x));
  const __m128 x4 = _mm_max_ps(_mm256_castps256_ps128(x8), _mm256_extractf128_ps(x8, 1));
  const __m128 x2 = _mm_max_ps(x4, _mm_movehl_ps(x4, x4));
  return _mm_cvtss_f32(_mm_max_ss(x2, _mm_movehdup_ps(x2)));
}

}  // namespace torchchat::kernels::avx512
