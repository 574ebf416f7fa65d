// The int8-activation kernels (quant_linear.h, "int4 panels" and "int8 panels") on Advanced SIMD,
// shared by quant_linear_neon_a8.cpp (smull / sadalp) and quant_linear_neon_dotprod.cpp (sdot).
// Each includes this after its own target: everything here has internal linkage, so each file
// gets its own copy compiled for its own instructions.
//
// A panel's 64-byte chunk is four 16-byte quads, rows 4r .. 4r + 3 each, 4 bytes (4 k) per row:
// sdot's layout, which adds the 4 products of each 32-bit lane into it. The activations' 4 bytes
// of those k are broadcast to every lane (ld1r). The integer dot products are exact and the float
// steps are the generic code's, in its order, lane by lane, so the outputs are the same bits.
#pragma once

#include <arm_neon.h>

#include "quant_linear.h"

namespace torchchat::kernels {
namespace {
namespace a8 {

using i64 = std::int64_t;

// Tokens per tile: a block's weights are unpacked once for them.
constexpr int kTokens = 4;
// A prompt's tokens go through every panel in chunks of this many (quant_linear_avx2's reason:
// the chunk's activation codes stay in cache while the panels pass).
constexpr i64 kChunk = 32;
// Decode streams each thread's panels front to back; prefetch this far ahead.
constexpr i64 kAhead = 2048;

inline i64 min(i64 a, i64 b) { return a < b ? a : b; }

// 4 activation codes broadcast to the 4 lanes.
inline int8x16_t broadcast4(const std::int8_t* p) {
  std::int32_t v;
  __builtin_memcpy(&v, p, 4);
  return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

// A Dot provides: Acc (a row quad's running int32 sums), zero(), add(acc, w, x) adding each lane's
// 4 products of w (4 rows x 4 codes) and x (4 codes broadcast), and sums(acc) -> int32x4_t.

// The output columns [16p, 16p + cols) of tokens [m, m + T): every block of K in order.
template <class Dot, int kBits, int kSlices, int T>
void tile(const Int8Activations& x, i64 m, const std::uint8_t* panel, i64 K, i64 G, float* y, i64 ldy, int cols) {
  constexpr i64 kBlockBytes = 64 * kBits;
  constexpr int kChunks = kBits == 4 ? 4 : 8;
  const i64 groups = K / G, group_bytes = G / 32 * kBlockBytes + 64, blocks = K / 32;
  const i64 q_stride = x.M * K;
  const uint8x16_t low4 = vdupq_n_u8(0x0f), bias = vdupq_n_u8(0x80);
  float32x4_t acc[T][4];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < 4; ++r) acc[t][r] = vdupq_n_f32(0.f);
  for (i64 g = 0; g < groups; ++g) {
    const std::uint8_t* group = panel + g * group_bytes;
    const std::uint8_t* trailer = group + G / 32 * kBlockBytes;
    float32x4_t scale[4], mins[4];
    for (int r = 0; r < 4; ++r) {
      if constexpr (kBits == 4) {
        scale[r] = vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(trailer + 8 * r)));
        mins[r] = vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(trailer + 32 + 8 * r)));
      } else {
        scale[r] = vld1q_f32(reinterpret_cast<const float*>(trailer) + 4 * r);
      }
    }
    for (i64 j = 0; j < G / 32; ++j) {
      const std::uint8_t* block = group + kBlockBytes * j;
      for (int line = 0; line < kBlockBytes; line += 64) __builtin_prefetch(block + kAhead + line, 0, 3);
      const i64 b = g * (G / 32) + j;
      float32x4_t dot[T][4];  // set by the last slice first
      for (int t = 0; t < T; ++t)
        for (int r = 0; r < 4; ++r) dot[t][r] = vdupq_n_f32(0.f);
      for (int s = kSlices - 1; s >= 0; --s) {
        typename Dot::Acc d[T][4];
        for (int t = 0; t < T; ++t)
          for (int r = 0; r < 4; ++r) d[t][r] = Dot::zero();
        for (int c = 0; c < kChunks; ++c) {
          int8x16_t w[4], w_high[4];
          for (int r = 0; r < 4; ++r) {
            const uint8x16_t bytes = vld1q_u8(block + 64 * c + 16 * r);
            if constexpr (kBits == 4) {
              w[r] = vreinterpretq_s8_u8(vandq_u8(bytes, low4));
              w_high[r] = vreinterpretq_s8_u8(vshrq_n_u8(bytes, 4));
            } else {
              w[r] = vreinterpretq_s8_u8(veorq_u8(bytes, bias));  // the stored q + 128 back to q
            }
          }
          for (int t = 0; t < T; ++t) {
            const std::int8_t* xq = x.q + s * q_stride + (m + t) * K + 32 * b;
            const int8x16_t xs = broadcast4(xq + 4 * c);
            for (int r = 0; r < 4; ++r) Dot::add(d[t][r], w[r], xs);
            if constexpr (kBits == 4) {
              const int8x16_t xt = broadcast4(xq + 16 + 4 * c);
              for (int r = 0; r < 4; ++r) Dot::add(d[t][r], w_high[r], xt);
            }
          }
        }
        for (int t = 0; t < T; ++t)
          for (int r = 0; r < 4; ++r) {
            const float32x4_t f = vcvtq_f32_s32(Dot::sums(d[t][r]));
            if constexpr (kSlices == 1) dot[t][r] = f;
            else dot[t][r] = s == kSlices - 1 ? vmulq_n_f32(f, kSliceUnit[s])
                                              : vfmaq_n_f32(dot[t][r], f, kSliceUnit[s]);
          }
      }
      for (int t = 0; t < T; ++t) {
        const i64 at = (m + t) * blocks + b;
        const float32x4_t sx = vdupq_n_f32(x.scale[at]);
        for (int r = 0; r < 4; ++r) {
          acc[t][r] = vfmaq_f32(acc[t][r], dot[t][r], vmulq_f32(scale[r], sx));
          if constexpr (kBits == 4) acc[t][r] = vfmaq_n_f32(acc[t][r], mins[r], x.scaled_sum[at]);
        }
      }
    }
  }
  for (int t = 0; t < T; ++t) {
    float* out = y + t * ldy;
    if (cols == kA8Panel) {
      for (int r = 0; r < 4; ++r) vst1q_f32(out + 4 * r, acc[t][r]);
    } else {  // the last panel of an N that is no multiple of 16
      float all[kA8Panel];
      for (int r = 0; r < 4; ++r) vst1q_f32(all + 4 * r, acc[t][r]);
      for (int c = 0; c < cols; ++c) out[c] = all[c];
    }
  }
}

// tile<..., T> for a run of `count` tokens, 1 <= count <= T.
template <class Dot, int kBits, int kSlices, int T = kTokens>
void tiles(const Int8Activations& x, i64 m, int count, const std::uint8_t* panel, i64 K, i64 G, float* y, i64 ldy,
           int cols) {
  if constexpr (T > 1)
    if (count < T) return tiles<Dot, kBits, kSlices, T - 1>(x, m, count, panel, K, G, y, ldy, cols);
  tile<Dot, kBits, kSlices, T>(x, m, panel, K, G, y, ldy, cols);
}

template <class Dot, int kBits>
void linear(const Int8Activations& x, const A8PanelWeights& w, float* y, i64 n0, i64 n1) {
  const i64 panel_bytes = (w.K / w.G) * (w.G / 32 * 64 * kBits + 64);
  const std::uint8_t* first = w.w + (n0 / kA8Panel) * panel_bytes;
  for (i64 line = 0; line < kAhead; line += 64) __builtin_prefetch(first + line, 0, 3);
  for (i64 m0 = 0; m0 < x.M; m0 += kChunk) {
    const i64 m1 = min(x.M, m0 + kChunk);
    for (i64 n = n0; n < n1; n += kA8Panel) {
      const std::uint8_t* panel = w.w + (n / kA8Panel) * panel_bytes;
      const int cols = static_cast<int>(min(kA8Panel, n1 - n));
      for (i64 m = m0; m < m1; m += kTokens) {
        const int T = static_cast<int>(min(kTokens, m1 - m));
        float* out = y + m * w.N + n;
        if (x.slices == 1) tiles<Dot, kBits, 1>(x, m, T, panel, w.K, w.G, out, w.N, cols);
        else tiles<Dot, kBits, 3>(x, m, T, panel, w.K, w.G, out, w.N, cols);
      }
    }
  }
}

}  // namespace a8
}  // namespace
}  // namespace torchchat::kernels
