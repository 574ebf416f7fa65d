// AVX2 + FMA + F16C kernels for fp32 activations (quant_linear.h), called only when the CPU has
// them (quant_linear.cpp). They follow quant_linear.h's order of float operations, so they compute
// the same bits as the AVX-512 and portable code: an output's 16 lanes are two 8-lane registers
// (lanes 0-7 and 8-15 of each block of 16 k). Like quant_linear_avx512.cpp, free of
// standard-library headers (their inline functions would be compiled for AVX2 here).
//
// 16 vector registers (AVX-512 has 32) shape the tiles: a row-major output takes two
// accumulators, so tiles are 4 rows x 1 token (decode) or 3 rows x 2 tokens; panel tiles are 2
// panels x 1 token (decode), 32 outputs x 2 tokens, or 16 outputs x up to 6 tokens over a block
// of k (prompts).
#pragma GCC target("avx2,fma,f16c")
// -O3: the tile loops over rows and tokens must unroll completely to keep the accumulators in registers.
#pragma GCC optimize("O3", "fp-contract=off")  // only the fmas written out: the bits every ISA shares
#include <immintrin.h>

#include "lanes_avx2.h"
#include "quant_linear.h"

namespace torchchat::kernels::avx2 {
namespace {

using i64 = std::int64_t;

inline i64 min(i64 a, i64 b) { return a < b ? a : b; }

// Rows per block of the output: a block's weights stay in L2 while every token passes.
constexpr i64 kBlockRows = 128;

// Decode streams the weights from memory; the hardware prefetcher stops at 4 KiB pages, so the
// tiles ask for the weights some way ahead, as the AVX-512 tiles do (quant_linear_avx512.cpp
// says how far and why): row tiles the same spot of the rows 1 tile (float) or 3 tiles (int8)
// further on, panels the weights 64 k ahead.
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
template <typename W>
constexpr i64 ahead_tiles() { return sizeof(W) == 1 ? 3 : 1; }

// 8 weights widened exactly to fp32: bf16 is the top half of an fp32, int8 converts exactly.
inline __m256 widen(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 widen(const std::uint16_t* p) { return widen_bf16x8(p); }
inline __m256 widen(const std::int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// R rows of row-major weights (fp32, bf16 or int8) x T tokens, 2 * R * T accumulators; int8 rows'
// sums are then scaled by their scale[r], float rows take none (nullptr). Per half of a block of
// 16 k, each row's weights are widened once for the T tokens: 2RT + T + 1 registers (15 at 3 x 2).
template <typename W, int R, int T>
void row_tile(const float* x, i64 K, const W* w, const float* scale, float* y, i64 ldy) {
  __m256 acc[R][T][2];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t][0] = acc[r][t][1] = _mm256_setzero_ps();
  // The block of 16 k at xs (token t at xs + t * xstride) and ws (row r at ws + r * wstride).
  auto block = [&](const float* xs, i64 xstride, const W* ws, i64 wstride) {
    for (int h = 0; h < 2; ++h) {
      __m256 xv[T];
      for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_ps(xs + t * xstride + 8 * h);
      for (int r = 0; r < R; ++r) {
        const __m256 wv = widen(ws + r * wstride + 8 * h);
        for (int t = 0; t < T; ++t) acc[r][t][h] = _mm256_fmadd_ps(xv[t], wv, acc[r][t][h]);
      }
    }
  };
  constexpr i64 kPerLine = 64 / sizeof(W);  // weights per cache line
  i64 k = 0;
  for (; k + 64 <= K; k += 64) {
    for (int r = 0; r < R; ++r)
      for (i64 j = 0; j < 64; j += kPerLine) prefetch(w + (ahead_tiles<W>() * R + r) * K + k + j);
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
      const float sum = sum16(acc[r][t][0], acc[r][t][1]);
      if constexpr (sizeof(W) == 1)
        y[t * ldy + r] = sum * scale[r];
      else
        y[t * ldy + r] = sum;
    }
}

// Row tiles: 4 rows for one token (8 accumulators, enough independent FMAs to hide their
// latency), 3 rows x 2 tokens for more.
constexpr int kMaxRows = 4, kMaxTokens = 2;

template <typename W>
constexpr auto row_tiles() {
  using Fn = decltype(&row_tile<W, 1, 1>);
  struct Table {
    Fn at[kMaxRows][kMaxTokens];
  } t{{{&row_tile<W, 1, 1>, &row_tile<W, 1, 2>},
       {&row_tile<W, 2, 1>, &row_tile<W, 2, 2>},
       {&row_tile<W, 3, 1>, &row_tile<W, 3, 2>},
       {&row_tile<W, 4, 1>, nullptr}}};  // 4 x 2 would not fit the registers
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

// Panels (quant_linear.h): T tokens x the 32 outputs of each of P whole panels (p points at the
// first panel's first k), P * T * 4 accumulators; per k, the 4 weight vectors of a panel are
// loaded once and each token's x[k] broadcast against them. Each output accumulates over k in
// order in its own lane. Decode (T = 1) takes two panels (P = 2): two streams of weights in flight,
// 1.1x one panel's throughput from memory on SmolLM2's shapes. Two tokens take one panel (4 + 8 + 1
// registers). Prompts take prompt_tile below.
constexpr int kDecodeTokens = 2, kPromptTokens = 6;

template <typename W, int T, int P = 1>
void panel_tile(const float* x, i64 K, const W* p, float* y, i64 ldy, i64 cols) {
  constexpr int V = kPanel / 8;
  __m256 acc[P][T][V];
  for (int q = 0; q < P; ++q)
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < V; ++j) acc[q][t][j] = _mm256_setzero_ps();
  constexpr i64 kAhead = 64 * kPanel;  // 8 KiB of fp32 ahead, as the AVX-512 panels
  constexpr i64 kBytes = V * 8 * static_cast<i64>(sizeof(W));  // a k's weights of the tile
  for (i64 k = 0; k < K; ++k) {
    for (int q = 0; q < P; ++q) {
      const W* pk = p + q * K * kPanel + k * kPanel;
      for (i64 line = 0; line < kBytes; line += 64) prefetch(reinterpret_cast<const char*>(pk + kAhead) + line);
      __m256 wv[V];
      for (int j = 0; j < V; ++j) wv[j] = widen(pk + 8 * j);
      for (int t = 0; t < T; ++t) {
        // by value: _mm256_broadcast_ss(pointer) made GCC store every accumulator at every k
        const __m256 xv = _mm256_set1_ps(x[t * K + k]);
        for (int j = 0; j < V; ++j) acc[q][t][j] = _mm256_fmadd_ps(xv, wv[j], acc[q][t][j]);
      }
    }
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int q = 0; q < P; ++q)
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < V; ++j) {
        const i64 c = q * kPanel + 8 * j;
        if (c + 8 <= cols) {
          _mm256_storeu_ps(y + t * ldy + c, acc[q][t][j]);
        } else if (c < cols) {
          const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols - c)), lane);
          _mm256_maskstore_ps(y + t * ldy + c, mask, acc[q][t][j]);
        }
      }
}

// A prompt's tile: T tokens x half a panel (16 outputs), over k_len k of a block of K (x's rows at
// stride ldx, p at the block's first k); 2 + 12 + 1 registers at T = 6, 12 FMAs per 8 loads.
// The first block starts from 0, the next ones from the sums the previous block left in y: a
// store and a reload round nothing, so each output is still one chain of FMAs over k in order.
template <typename W, int T>
void prompt_tile(const float* x, i64 ldx, i64 k_len, const W* p, float* y, i64 ldy, i64 cols, bool first) {
  constexpr int V = 2;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i mask[V];
  for (int j = 0; j < V; ++j)
    mask[j] = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(min(cols - 8 * j, 8))), lane);
  __m256 acc[T][V];
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < V; ++j)
      acc[t][j] = first ? _mm256_setzero_ps() : _mm256_maskload_ps(y + t * ldy + 8 * j, mask[j]);
#pragma GCC unroll 4  // 1.04x: fewer loop instructions among the FMAs
  for (i64 k = 0; k < k_len; ++k) {
    const W* pk = p + k * kPanel;
    __m256 wv[V];
    for (int j = 0; j < V; ++j) wv[j] = widen(pk + 8 * j);
    for (int t = 0; t < T; ++t) {
      // by value: _mm256_broadcast_ss(pointer) made GCC store every accumulator at every k
      const __m256 xv = _mm256_set1_ps(x[t * ldx + k]);
      for (int j = 0; j < V; ++j) acc[t][j] = _mm256_fmadd_ps(xv, wv[j], acc[t][j]);
    }
  }
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < V; ++j) _mm256_maskstore_ps(y + t * ldy + 8 * j, mask[j], acc[t][j]);
}

template <typename W>
constexpr auto panel_tiles() {
  using Fn = decltype(&panel_tile<W, 1>);
  using PromptFn = decltype(&prompt_tile<W, 1>);
  struct Table {
    Fn pair;                       // 64 outputs, 1 token
    Fn whole[kDecodeTokens];       // 32 outputs
    PromptFn half[kPromptTokens];  // 16 outputs
  } t{&panel_tile<W, 1, 2>,
      {&panel_tile<W, 1>, &panel_tile<W, 2>},
      {&prompt_tile<W, 1>, &prompt_tile<W, 2>, &prompt_tile<W, 3>, &prompt_tile<W, 4>, &prompt_tile<W, 5>,
       &prompt_tile<W, 6>}};
  static_assert(kDecodeTokens == 2 && kPromptTokens == 6, "the tables list 1..2 and 1..6 tokens");
  return t;
}
constexpr auto kFp32Panels = panel_tiles<float>();
constexpr auto kBf16Panels = panel_tiles<std::uint16_t>();

// At most this many k per block of a prompt's panel: a block of the panel (up to 192 x 32
// weights, 24 KiB of fp32) stays in L1 while every token passes (the whole panel, 74 KB at
// K = 576, did not: 1.15x with blocks, 128 to 288 k alike).
constexpr i64 kMaxBlockK = 192;

template <typename W, typename Tables>
void panels(const float* x, i64 M, const W* w, i64 N, i64 K, float* y, i64 n0, i64 n1, const Tables& tiles) {
  // Panel by panel: a panel (K x 32 weights, 74 KB for K = 576) stays in L2 while every token
  // passes, block of k by block of k.
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
    // The tiles read this panel from L2 many times; meanwhile, bring the next panel in from
    // memory, a share before each tile.
    const char* next = reinterpret_cast<const char*>(panel + K * kPanel);
    const i64 next_bytes = n + kPanel < n1 ? K * kPanel * static_cast<i64>(sizeof(W)) : 0;
    // Blocks of equal size (K = 577: 4 x 145 or less, not 3 x 192 and 1).
    const i64 blocks = K > kMaxBlockK ? (K + kMaxBlockK - 1) / kMaxBlockK : 1;
    const i64 block_k = blocks > 1 ? (K + blocks - 1) / blocks : kMaxBlockK;
    // Groups of tokens as even as can be, since a tile of few tokens has too few accumulators to
    // keep the FMAs busy (M = 20: 4 x 5, not 3 x 6 and 2, 1.14x; M = 128: 18 x 6 and 4 x 5).
    const i64 groups = (M + kPromptTokens - 1) / kPromptTokens, larger = M % groups;
    const i64 calls = groups * 2 * blocks;
    const i64 share = (next_bytes / 64 + calls - 1) / calls * 64;
    i64 fetched = 0;
    for (i64 k0 = 0; k0 == 0 || k0 < K; k0 += block_k) {  // once at least: K = 0 writes zeros
      const i64 k_len = min(block_k, K - k0);
      for (i64 g = 0, m = 0; g < groups; ++g) {
        const int t = static_cast<int>(g < larger ? M / groups + 1 : M / groups);
        for (i64 c = 0; c < cols; c += kPanel / 2) {
          for (i64 end = min(next_bytes, fetched + share); fetched < end; fetched += 64)
            _mm_prefetch(next + fetched, _MM_HINT_T1);
          tiles.half[t - 1](x + m * K + k0, K, k_len, panel + k0 * kPanel + c, y + m * N + n + c, N, cols - c, k0 == 0);
        }
        m += t;
      }
    }
  }
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

}  // namespace torchchat::kernels::avx2
