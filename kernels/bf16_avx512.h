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

}  // namespace torchchat::kernels::avx512
