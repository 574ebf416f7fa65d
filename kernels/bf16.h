// bf16 <-> fp32: a bf16 is the top half of an fp32. Scalar forms for the portable code and the
// operator wrappers (the AVX-512 files widen 16 at a time: bf16_avx512.h). Free of
// standard-library headers but <cstdint> (no inline functions), as the kernels' other headers:
// quant_linear_avx512.cpp says why.
#pragma once

#include <cstdint>

namespace torchchat::kernels {

inline float bf16_value(std::uint16_t b) {
  const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}

// Rounded to nearest even; a NaN stays a (quiet) NaN.
inline std::uint16_t bf16_bits(float f) {
  std::uint32_t bits;
  __builtin_memcpy(&bits, &f, sizeof bits);
  if (f != f) return static_cast<std::uint16_t>((bits >> 16) | 0x40);
  return static_cast<std::uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

}  // namespace torchchat::kernels
