// 16 fp32 lanes held as four Advanced SIMD registers (lanes 0-3, 4-7, 8-11, 12-15), for the aarch64
// files only. The reductions follow the kernels' one tree (quant_linear.h, attention.h): lane i
// with i + 8, then i + 4, then i + 2, then lane 0 with lane 1. No compiler reduce intrinsic
// (vaddvq_f32 adds pairwise, another order).
#pragma once

#include <arm_neon.h>

#include <cstdint>

namespace torchchat::kernels::neon {

inline float sum16(float32x4_t a, float32x4_t b, float32x4_t c, float32x4_t d) {
  const float32x4_t x4 = vaddq_f32(vaddq_f32(a, c), vaddq_f32(b, d));  // i + 8, then i + 4
  const float32x2_t x2 = vadd_f32(vget_low_f32(x4), vget_high_f32(x4));
  return vget_lane_f32(x2, 0) + vget_lane_f32(x2, 1);
}

// attention.h's max: a > b ? a : b (x86's MAXPS; a NaN gives b), not fmax.
inline float32x4_t max_first(float32x4_t a, float32x4_t b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
inline float max16(float32x4_t a, float32x4_t b, float32x4_t c, float32x4_t d) {
  const float32x4_t x4 = max_first(max_first(a, c), max_first(b, d));
  const float32x2_t x2 = vbsl_f32(vcgt_f32(vget_low_f32(x4), vget_high_f32(x4)), vget_low_f32(x4), vget_high_f32(x4));
  const float lo = vget_lane_f32(x2, 0), hi = vget_lane_f32(x2, 1);
  return lo > hi ? lo : hi;
}

// 4 bf16 values widened to fp32 (a bf16 is the top half of an fp32).
inline float32x4_t widen_bf16x4(const std::uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }

}  // namespace torchchat::kernels::neon
