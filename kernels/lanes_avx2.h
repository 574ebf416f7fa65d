// 16 fp32 lanes held as two AVX2 registers (lanes 0-7 and 8-15), for the AVX2 files only: include
// it after their target pragma. The reductions follow the kernels' one tree (quant_linear.h,
// attention.h): lane i with i + 8, then i + 4, then i + 2, then lane 0 with lane 1.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace torchchat::kernels::avx2 {

inline float sum16(__m256 lo, __m256 hi) {
  const __m256 x8 = _mm256_add_ps(lo, hi);
  const __m128 x4 = _mm_add_ps(_mm256_castps256_ps128(x8), _mm256_extractf128_ps(x8, 1));
  const __m128 x2 = _mm_add_ps(x4, _mm_movehl_ps(x4, x4));
  return _mm_cvtss_f32(_mm_add_ss(x2, _mm_movehdup_ps(x2)));
}

inline float max16(__m256 lo, __m256 hi) {
  const __m256 x8 = _mm256_max_ps(lo, hi);
  const __m128 x4 = _mm_max_ps(_mm256_castps256_ps128(x8), _mm256_extractf128_ps(x8, 1));
  const __m128 x2 = _mm_max_ps(x4, _mm_movehl_ps(x4, x4));
  return _mm_cvtss_f32(_mm_max_ss(x2, _mm_movehdup_ps(x2)));
}

// 8 bf16 values widened to fp32 (a bf16 is the top half of an fp32).
inline __m256 widen_bf16x8(const std::uint16_t* p) {
  const __m256i bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16));
}

}  // namespace torchchat::kernels::avx2
