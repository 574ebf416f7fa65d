// Advanced SIMD attention (attention.h) for aarch64, called when the level is neon or neon-dotprod
// (attention.cpp). The AVX-512 code's 16 lanes are four registers of 4 here, in the same order of
// float operations, so every level gives the same bits.
// fp-contract=off: the order of float operations is attention.h's, the same on every level.
#pragma GCC optimize("O3", "fp-contract=off")
#include <arm_neon.h>

#include "attention.h"
#include "lanes_neon.h"

namespace torchchat::kernels::neon {
namespace {

using i64 = std::int64_t;

// Positions per block (attention.h) and heads per pass, as in attention_avx2.cpp.
constexpr i64 kBlock = 64;
constexpr i64 kHeads = 4;

// attention.h's exp0 on 4 lanes: 2^n built in the exponent bits.
inline float32x4_t exp_nonpositive(float32x4_t x) {
  x = max_first(x, vdupq_n_f32(-87.0f));
  const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));  // fma(-n, c, x)
  r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
  p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
  const int32x4_t two_to_n = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vmulq_f32(p, vreinterpretq_f32_s32(two_to_n));
}

inline float32x4_t load4(const float* p) { return vld1q_f32(p); }
inline float32x4_t load4(const std::uint16_t* p) { return widen_bf16x4(p); }

// Lanes [first, first + 4) of a run of positions of which the first `left` are taken: all ones there.
inline uint32x4_t taken(i64 left, int first) {
  const int32x4_t lane = vaddq_s32(int32x4_t{0, 1, 2, 3}, vdupq_n_s32(first));
  return vcgtq_s32(vdupq_n_s32(static_cast<int>(left)), lane);
}

// One block of n <= kBlock positions (k, v at its first; C: float, or bf16 bits) for NG heads
// (q: rows of 16 * DV floats), folded into the running m, z, acc, as attention_avx2.cpp does.
template <int DV, int NG, typename C>
void block(const float* q, float scale, const C* k, const C* v, i64 n, float* m, float* z, float* acc) {
  constexpr i64 D = 16 * DV;
  float qs[NG][D];
  float scores[NG][kBlock] = {};  // lanes past n are read, and selected away
  for (int g = 0; g < NG; ++g)
    for (i64 d = 0; d < D; d += 4) vst1q_f32(&qs[g][d], vmulq_n_f32(vld1q_f32(q + g * D + d), scale));
  for (i64 l = 0; l < n; ++l) {
    float32x4_t lanes[NG][4];
    for (int j = 0; j < DV; ++j) {
      float32x4_t kv[4];
      for (int i = 0; i < 4; ++i) kv[i] = load4(k + l * D + 16 * j + 4 * i);
      for (int g = 0; g < NG; ++g)
        for (int i = 0; i < 4; ++i) {
          const float32x4_t qv = vld1q_f32(&qs[g][16 * j + 4 * i]);
          lanes[g][i] = j == 0 ? vmulq_f32(qv, kv[i]) : vfmaq_f32(lanes[g][i], qv, kv[i]);
        }
    }
    for (int g = 0; g < NG; ++g) scores[g][l] = sum16(lanes[g][0], lanes[g][1], lanes[g][2], lanes[g][3]);
  }
  // Softmax weights under the new max; what was summed under the old one is rescaled. Lanes
  // past the block's positions take part in neither (selects).
  float rescale[NG];
  for (int g = 0; g < NG; ++g) {
    float32x4_t mx[4];
    for (int i = 0; i < 4; ++i) mx[i] = vdupq_n_f32(m[g]);
    for (i64 l = 0; l < n; l += 16)
      for (int i = 0; i < 4; ++i) {
        const uint32x4_t t = taken(n - l, 4 * i);
        const float32x4_t s = vbslq_f32(t, vld1q_f32(&scores[g][l + 4 * i]), vdupq_n_f32(0.f));
        mx[i] = vbslq_f32(t, max_first(mx[i], s), mx[i]);
      }
    const float new_max = max16(mx[0], mx[1], mx[2], mx[3]);
    rescale[g] = vgetq_lane_f32(exp_nonpositive(vdupq_n_f32(m[g] - new_max)), 0);
    m[g] = new_max;
    float32x4_t sums[4];
    for (int i = 0; i < 4; ++i) sums[i] = vdupq_n_f32(0.f);
    for (i64 l = 0; l < n; l += 16)
      for (int i = 0; i < 4; ++i) {
        const uint32x4_t t = taken(n - l, 4 * i);
        const float32x4_t s = vbslq_f32(t, vld1q_f32(&scores[g][l + 4 * i]), vdupq_n_f32(0.f));
        const float32x4_t p = exp_nonpositive(vsubq_f32(s, vdupq_n_f32(new_max)));
        vst1q_f32(&scores[g][l + 4 * i], p);
        // + 0 where not taken: a sum >= +0 stays as it is
        sums[i] = vaddq_f32(sums[i], vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(p), t)));
      }
    z[g] = z[g] * rescale[g] + sum16(sums[0], sums[1], sums[2], sums[3]);
  }
  for (int j = 0; j < DV; ++j) {
    float32x4_t a[NG][4];
    for (int g = 0; g < NG; ++g)
      for (int i = 0; i < 4; ++i) a[g][i] = vmulq_n_f32(vld1q_f32(acc + g * D + 16 * j + 4 * i), rescale[g]);
    for (i64 l = 0; l < n; ++l) {
      float32x4_t vv[4];
      for (int i = 0; i < 4; ++i) vv[i] = load4(v + l * D + 16 * j + 4 * i);
      for (int g = 0; g < NG; ++g)
        for (int i = 0; i < 4; ++i) a[g][i] = vfmaq_n_f32(a[g][i], vv[i], scores[g][l]);
    }
    for (int g = 0; g < NG; ++g)
      for (int i = 0; i < 4; ++i) vst1q_f32(acc + g * D + 16 * j + 4 * i, a[g][i]);
  }
}

template <int DV, typename C>
void attend_d(const float* q, i64 G, float scale, const C* k, const C* v, i64 l0, i64 l1, float* m, float* z,
              float* acc) {
  constexpr i64 D = 16 * DV;
  for (i64 g = 0; g < G; ++g) {
    m[g] = -__builtin_inff();
    z[g] = 0;
    for (i64 d = 0; d < D; ++d) acc[g * D + d] = 0;
  }
  // Passes of equal size (9 heads: 3 of 3, not 4 + 4 + 1).
  const i64 passes = (G + kHeads - 1) / kHeads, per_pass = passes ? (G + passes - 1) / passes : 1;
  for (i64 b = l0; b < l1; b += kBlock) {
    const i64 n = l1 - b < kBlock ? l1 - b : kBlock;
    const C* kb = k + b * D;
    const C* vb = v + b * D;
    for (i64 g = 0; g < G; g += per_pass) {  // the block stays in L1 for the next pass of heads
      float* a = acc + g * D;
      switch (G - g < per_pass ? G - g : per_pass) {
        case 1: block<DV, 1, C>(q + g * D, scale, kb, vb, n, m + g, z + g, a); break;
        case 2: block<DV, 2, C>(q + g * D, scale, kb, vb, n, m + g, z + g, a); break;
        case 3: block<DV, 3, C>(q + g * D, scale, kb, vb, n, m + g, z + g, a); break;
        default: block<DV, 4, C>(q + g * D, scale, kb, vb, n, m + g, z + g, a); break;
      }
    }
  }
}

template <typename C>
void attend_any(const float* q, i64 G, i64 D, float scale, const C* k, const C* v, i64 l0, i64 l1, float* m,
                float* z, float* acc) {
  switch (D / 16) {
    case 1: return attend_d<1>(q, G, scale, k, v, l0, l1, m, z, acc);
    case 2: return attend_d<2>(q, G, scale, k, v, l0, l1, m, z, acc);
    case 3: return attend_d<3>(q, G, scale, k, v, l0, l1, m, z, acc);
    case 4: return attend_d<4>(q, G, scale, k, v, l0, l1, m, z, acc);
    case 5: return attend_d<5>(q, G, scale, k, v, l0, l1, m, z, acc);
    case 6: return attend_d<6>(q, G, scale, k, v, l0, l1, m, z, acc);
    case 7: return attend_d<7>(q, G, scale, k, v, l0, l1, m, z, acc);
    default: return attend_d<8>(q, G, scale, k, v, l0, l1, m, z, acc);
  }
}

}  // namespace

void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const float* k, const float* v,
            std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc) {
  attend_any(q, G, D, scale, k, v, l0, l1, m, z, acc);
}

void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const std::uint16_t* k,
            const std::uint16_t* v, std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc) {
  attend_any(q, G, D, scale, k, v, l0, l1, m, z, acc);
}

}  // namespace torchchat::kernels::neon
