// Advanced SIMD (NEON) kernels for fp32 activations on aarch64 (quant_linear.h): float_linear,
// panel_linear, int8_linear and quantize_activations. They follow quant_linear.h's order of float
// operations, so they compute the same bits as the portable and x86 code: an output's 16 lanes are
// four 4-lane registers, vfmaq_f32 is the fused multiply-add the order names, and the reductions
// are lanes_neon.h's tree. Called when the CPU has Advanced SIMD (quant_linear.cpp), which every
// aarch64 Linux CPU has.
//
// 32 vector registers: a row-major output takes four accumulators, so tiles are 4 rows x 1 token
// (decode) or 3 rows x 2 tokens; panel tiles are 2 panels x 1 token (decode), a panel x 2 tokens,
// or half a panel x up to 6 tokens (prompts).
#pragma GCC optimize("O3", "fp-contract=off")  // only the fmas written out: the bits every ISA shares
#include <arm_neon.h>

#include "lanes_neon.h"
#include "quant_linear.h"

namespace torchchat::kernels::neon {
namespace {

using i64 = std::int64_t;

inline i64 min(i64 a, i64 b) { return a < b ? a : b; }

// Rows per block of the output: a block's weights stay in L2 while every token passes.
constexpr i64 kBlockRows = 128;

inline void prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }

// 4 weights widened exactly to fp32.
inline float32x4_t widen(const float* p) { return vld1q_f32(p); }
inline float32x4_t widen(const std::uint16_t* p) { return widen_bf16x4(p); }
// 16 int8 weights as four vectors of 4 (int8 converts exactly).
inline void widen16(const std::int8_t* p, float32x4_t (&out)[4]) {
  const int8x16_t q = vld1q_s8(p);
  const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_s8(vget_high_s8(q));
  out[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
  out[1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo)));
  out[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
  out[3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi)));
}
template <typename W>
inline void widen16(const W* p, float32x4_t (&out)[4]) {
  for (int j = 0; j < 4; ++j) out[j] = widen(p + 4 * j);
}

// R rows of row-major weights (fp32, bf16 or int8) x T tokens, 4 * R * T accumulators; int8 rows'
// sums are then scaled by their scale[r], float rows take none (nullptr).
template <typename W, int R, int T>
void row_tile(const float* x, i64 K, const W* w, const float* scale, float* y, i64 ldy) {
  float32x4_t acc[R][T][4];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < 4; ++j) acc[r][t][j] = vdupq_n_f32(0.f);
  // The block of 16 k at xs (token t at xs + t * xstride) and ws (row r at ws + r * wstride).
  auto block = [&](const float* xs, i64 xstride, const W* ws, i64 wstride) {
    float32x4_t xv[T][4];
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < 4; ++j) xv[t][j] = vld1q_f32(xs + t * xstride + 4 * j);
    for (int r = 0; r < R; ++r) {
      float32x4_t wv[4];
      widen16(ws + r * wstride, wv);
      for (int t = 0; t < T; ++t)
        for (int j = 0; j < 4; ++j) acc[r][t][j] = vfmaq_f32(acc[r][t][j], xv[t][j], wv[j]);
    }
  };
  i64 k = 0;
  for (; k + 64 <= K; k += 64) {
    for (int r = 0; r < R; ++r) prefetch(w + (2 * R + r) * K + k);
    for (i64 j = 0; j < 64; j += 16) block(x + k + j, K, w + k + j, K);
  }
  for (; k + 16 <= K; k += 16) block(x + k, K, w + k, K);
  if (k < K) {  // the last K % 16 columns, from copies padded with zeros
    float xs[T][16] = {};
    W ws[R][16] = {};
    for (int t = 0; t < T; ++t) __builtin_memcpy(xs[t], x + t * K + k, (K - k) * sizeof(float));
    for (int r = 0; r < R; ++r) __builtin_memcpy(ws[r], w + r * K + k, (K - k) * sizeof(W));
    block(xs[0], 16, ws[0], 16);
  }
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) {
      const float sum = sum16(acc[r][t][0], acc[r][t][1], acc[r][t][2], acc[r][t][3]);
      if constexpr (sizeof(W) == 1)
        y[t * ldy + r] = sum * scale[r];
      else
        y[t * ldy + r] = sum;
    }
}

constexpr int kMaxRows = 4, kMaxTokens = 2;

template <typename W>
constexpr auto row_tiles() {
  using Fn = decltype(&row_tile<W, 1, 1>);
  struct Table {
    Fn at[kMaxRows][kMaxTokens];
  } t{{{&row_tile<W, 1, 1>, &row_tile<W, 1, 2>},
       {&row_tile<W, 2, 1>, &row_tile<W, 2, 2>},
       {&row_tile<W, 3, 1>, &row_tile<W, 3, 2>},
       {&row_tile<W, 4, 1>, nullptr}}};
  return t;
}
constexpr auto kFp32Rows = row_tiles<float>();
constexpr auto kBf16Rows = row_tiles<std::uint16_t>();
constexpr auto kInt8Rows = row_tiles<std::int8_t>();

// Walks the output [M, n0:n1) in row blocks, token tiles and row tiles; run(r, t, m, n) computes
// the tile of r rows from n and t tokens from m.
template <typename Run>
void walk(i64 M, i64 n0, i64 n1, Run run) {
  const i64 rows = M == 1 ? 4 : 3, tokens = M == 1 ? 1 : 2;
  for (i64 nb = n0; nb < n1; nb += kBlockRows) {
    const i64 nb_end = min(nb + kBlockRows, n1);
    for (i64 m = 0; m < M; m += tokens) {
      const int t = static_cast<int>(min(tokens, M - m));
      for (i64 n = nb; n < nb_end; n += rows) run(static_cast<int>(min(rows, nb_end - n)), t, m, n);
    }
  }
}

// Panels (quant_linear.h): T tokens x 4V outputs of each of P panels (p at the first of them in
// the first panel's first k); each output accumulates over k in order in its own lane.
template <typename W, int T, int V, int P = 1>
void panel_tile(const float* x, i64 K, const W* p, float* y, i64 ldy, i64 cols) {
  float32x4_t acc[P][T][V];
  for (int q = 0; q < P; ++q)
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < V; ++j) acc[q][t][j] = vdupq_n_f32(0.f);
  constexpr i64 kAhead = 64 * kPanel;
  for (i64 k = 0; k < K; ++k) {
    for (int q = 0; q < P; ++q) {
      const W* pk = p + q * K * kPanel + k * kPanel;
      prefetch(pk + kAhead);
      float32x4_t wv[V];
      for (int j = 0; j < V; ++j) wv[j] = widen(pk + 4 * j);
      for (int t = 0; t < T; ++t) {
        const float xk = x[t * K + k];
        for (int j = 0; j < V; ++j) acc[q][t][j] = vfmaq_n_f32(acc[q][t][j], wv[j], xk);
      }
    }
  }
  for (int q = 0; q < P; ++q)
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < V; ++j) {
        const i64 c = q * kPanel + 4 * j;
        if (c + 4 <= cols) {
          vst1q_f32(y + t * ldy + c, acc[q][t][j]);
        } else if (c < cols) {
          float all[4];
          vst1q_f32(all, acc[q][t][j]);
          for (i64 i = 0; i < cols - c; ++i) y[t * ldy + c + i] = all[i];
        }
      }
}

constexpr int kDecodeTokens = 2, kPromptTokens = 6;

template <typename W>
constexpr auto panel_tiles() {
  using Fn = decltype(&panel_tile<W, 1, 8>);
  struct Table {
    Fn pair;                  // 64 outputs, 1 token
    Fn whole[kDecodeTokens];  // 32 outputs
    Fn half[kPromptTokens];   // 16 outputs
  } t{&panel_tile<W, 1, 8, 2>,
      {&panel_tile<W, 1, 8>, &panel_tile<W, 2, 8>},
      {&panel_tile<W, 1, 4>, &panel_tile<W, 2, 4>, &panel_tile<W, 3, 4>, &panel_tile<W, 4, 4>, &panel_tile<W, 5, 4>,
       &panel_tile<W, 6, 4>}};
  static_assert(kDecodeTokens == 2 && kPromptTokens == 6, "the tables list 1..2 and 1..6 tokens");
  return t;
}
constexpr auto kFp32Panels = panel_tiles<float>();
constexpr auto kBf16Panels = panel_tiles<std::uint16_t>();

template <typename W, typename Tables>
void panels(const float* x, i64 M, const W* w, i64 N, i64 K, float* y, i64 n0, i64 n1, const Tables& tiles) {
  i64 n = n0;
  if (M == 1)
    for (; n + kPanel < n1; n += 2 * kPanel) tiles.pair(x, K, w + n * K, y + n, N, min(2 * kPanel, n1 - n));
  for (; n < n1; n += kPanel) {
    const W* panel = w + n * K;
    const i64 cols = min(kPanel, n1 - n);
    if (M <= kDecodeTokens) {
      tiles.whole[M - 1](x, K, panel, y + n, N, cols);
      continue;
    }
    for (i64 m = 0; m < M; m += kPromptTokens) {
      const int t = static_cast<int>(min(kPromptTokens, M - m));
      for (i64 c = 0; c < cols; c += kPanel / 2)
        tiles.half[t - 1](x + m * K, K, panel + c, y + m * N + n + c, N, cols - c);
    }
  }
}

// v rounded half to even (as the generic code's nearbyint), within [lo, hi]; the clamp in float
// first, so that a NaN gives lo as fmax does there (a float-to-int conversion would give 0).
inline int32x4_t round_within(float32x4_t v, float lo, float hi) {
  return vcvtq_s32_f32(vminnmq_f32(vmaxnmq_f32(vrndnq_f32(v), vdupq_n_f32(lo)), vdupq_n_f32(hi)));
}

}  // namespace

void float_linear(const float* x, i64 M, const FloatWeights& w, float* y, i64 n0, i64 n1) {
  walk(M, n0, n1, [&](int r, int t, i64 m, i64 n) {
    if (w.bf16)
      kBf16Rows.at[r - 1][t - 1](x + m * w.K, w.K, static_cast<const std::uint16_t*>(w.w) + n * w.K, nullptr,
                                 y + m * w.N + n, w.N);
    else
      kFp32Rows.at[r - 1][t - 1](x + m * w.K, w.K, static_cast<const float*>(w.w) + n * w.K, nullptr, y + m * w.N + n,
                                 w.N);
  });
}

void panel_linear(const float* x, i64 M, const PanelWeights& w, float* y, i64 n0, i64 n1) {
  if (M <= 0) return;
  if (w.bf16)
    panels(x, M, static_cast<const std::uint16_t*>(w.w), w.N, w.K, y, n0, n1, kBf16Panels);
  else
    panels(x, M, static_cast<const float*>(w.w), w.N, w.K, y, n0, n1, kFp32Panels);
}

void int8_linear(const float* x, i64 M, const Int8Weights& w, float* y, i64 n0, i64 n1) {
  walk(M, n0, n1, [&](int r, int t, i64 m, i64 n) {
    kInt8Rows.at[r - 1][t - 1](x + m * w.K, w.K, w.q + n * w.K, w.scale + n, y + m * w.N + n, w.N);
  });
}

// The generic code's steps (quant_linear_generic.cpp), 4 lanes at a time.
void quantize_activations(const float* x, i64 M, i64 K, int slices, std::int8_t* q, float* scale, float* scaled_sum,
                          std::int32_t* sum) {
  const i64 blocks = M * (K / 32);
  for (i64 b = 0; b < blocks; ++b) {
    float32x4_t xv[8];
    // vmaxnm, like fmax there: a NaN |x| leaves amax as it was. The order of a max is free.
    float32x4_t amax = vdupq_n_f32(0.f);
    for (int i = 0; i < 8; ++i) {
      xv[i] = vld1q_f32(x + 32 * b + 4 * i);
      amax = vmaxnmq_f32(amax, vabsq_f32(xv[i]));
    }
    const float s = vmaxnmvq_f32(amax) / 127.f;
    int32x4_t d[3][8];
    for (int i = 0; i < 8; ++i) {
      d[0][i] = d[1][i] = d[2][i] = vdupq_n_s32(0);
      if (s == 0.f) continue;
      const float32x4_t sv = vdupq_n_f32(s), s1 = vdupq_n_f32(s * kSliceUnit[1]), s2 = vdupq_n_f32(s * kSliceUnit[2]);
      d[0][i] = round_within(vdivq_f32(xv[i], sv), -127.f, 127.f);
      if (slices == 3 && s >= kSmallestSplit) {
        const float32x4_t r1 = vfmsq_f32(xv[i], vcvtq_f32_s32(d[0][i]), sv);  // fma(-d0, s, x)
        d[1][i] = round_within(vdivq_f32(r1, s1), -256.f, 256.f);
        const float32x4_t r2 = vfmsq_f32(r1, vcvtq_f32_s32(d[1][i]), s1);
        d[2][i] = round_within(vdivq_f32(r2, s2), -128.f, 127.f);
        // The carries (a true compare is all ones, -1 per lane).
        const int32x4_t carry = vdupq_n_s32(256);
        const int32x4_t up = vreinterpretq_s32_u32(
            vandq_u32(vcgtq_s32(d[1][i], vdupq_n_s32(127)), vcltq_s32(d[0][i], vdupq_n_s32(127))));
        d[0][i] = vsubq_s32(d[0][i], up);
        d[1][i] = vsubq_s32(d[1][i], vandq_s32(up, carry));
        const int32x4_t down = vreinterpretq_s32_u32(
            vandq_u32(vcltq_s32(d[1][i], vdupq_n_s32(-128)), vcgtq_s32(d[0][i], vdupq_n_s32(-127))));
        d[0][i] = vaddq_s32(d[0][i], down);
        d[1][i] = vaddq_s32(d[1][i], vandq_s32(down, carry));
        d[1][i] = vminq_s32(vmaxq_s32(d[1][i], vdupq_n_s32(-128)), vdupq_n_s32(127));
      }
    }
    for (int j = 0; j < slices; ++j) {
      int32x4_t total = vdupq_n_s32(0);
      for (int h = 0; h < 2; ++h) {
        const int16x8_t lo = vcombine_s16(vmovn_s32(d[j][4 * h]), vmovn_s32(d[j][4 * h + 1]));
        const int16x8_t hi = vcombine_s16(vmovn_s32(d[j][4 * h + 2]), vmovn_s32(d[j][4 * h + 3]));
        vst1q_s8(q + j * M * K + 32 * b + 16 * h, vcombine_s8(vmovn_s16(lo), vmovn_s16(hi)));
        for (int i = 0; i < 4; ++i) total = vaddq_s32(total, d[j][4 * h + i]);
      }
      sum[j * blocks + b] = vaddvq_s32(total);
    }
    scale[b] = s;
    scaled_sum[b] = s * slice_sum(sum + b, blocks, slices);
  }
}

}  // namespace torchchat::kernels::neon
