// AVX-512 (F, BW, VL) + FMA + F16C kernels, called only when the CPU has them (quant_linear.cpp).
// This file must stay free of standard-library headers: their inline functions would be
// compiled for AVX-512 here and could be picked by the linker for the generic code too.
#pragma GCC target("avx512f,avx512bw,avx512vl,fma,f16c")
// -O3: the tile loops over rows and tokens must unroll completely to keep the accumulators in registers.
#pragma GCC optimize("O3", "fp-contract=off")  // only the fmas written out: the bits every ISA shares
// GCC 12's AVX-512 headers trip its own (un)initialized-use warnings (_mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "bf16_avx512.h"
#include "quant_linear.h"

namespace torchchat::kernels::avx512 {
namespace {

using i64 = std::int64_t;

// A tile is R weight rows x T tokens: each weight vector is loaded and widened to fp32 once
// and used for T tokens, each activation vector once for R rows; R * T accumulators.
// (R = T = 4 leaves registers for the widened weights: 16 + 8 + 2 of 32.)
constexpr int kRows = 4, kTokens = 4;
// Rows per block of the output: a block's weights stay in L2 while every token passes.
constexpr i64 kBlockRows = 128;

inline i64 min(i64 a, i64 b) { return a < b ? a : b; }

// Decode streams every weight from memory once. The hardware prefetcher stops at 4 KiB
// pages, so each tile asks for the same spot of the rows some tiles further on (a contiguous
// stream) one cache line at a time: one thread streamed int8 weights at 6 GB/s without it,
// 12-13 GB/s with it one tile ahead (Intel). For int8 rows, three tiles ahead (7 KB of rows of
// 576) covers the memory latency on the AMD machine: SmolLM2 decode with row-major int8 weights
// and fp32 activations 261-279 -> 302-351 tok/s, a linear's call 23 -> 17 us (measured on SmolLM2).
// Float rows (the tied output layer) stay one tile ahead: 1, 2 and 3 measured the same for them.
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
constexpr i64 kAheadTiles = 3;  // integer rows'
template <typename W>
constexpr i64 ahead_tiles() { return sizeof(W) == 1 ? kAheadTiles : 1; }

// float weights: 16 of a row widened to fp32 (bf16 is the top half of an fp32).
inline __m512 widen(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 widen(const std::uint16_t* p) { return widen_bf16x16(p); }
inline __m512 widen(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
inline __m512 widen(const std::uint16_t* p, __mmask16 mask) { return widen_bf16x16(p, mask); }

inline __m512 widen(const std::int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline __m512 widen(const std::int8_t* p, __mmask16 mask) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, p)));
}

// R rows of weights (fp32, bf16 or int8) x T tokens; int8 rows' sums are then scaled by their
// scale[r] (per output row), float rows take no scale (nullptr).
template <typename W, int R, int T>
void row_tile(const float* x, i64 K, const W* w, const float* scale, float* y, i64 ldy) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  auto step = [&](i64 k) {
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = widen(w + r * K + k);
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_loadu_ps(x + t * K + k);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(xv, wv[r], acc[r][t]);
    }
  };
  constexpr i64 kPerLine = 64 / sizeof(W);  // weights per cache line
  i64 k = 0;
  for (; k + 64 <= K; k += 64) {
    for (int r = 0; r < R; ++r)
      for (i64 j = 0; j < 64; j += kPerLine) prefetch(w + (ahead_tiles<W>() * R + r) * K + k + j);
    step(k), step(k + 16), step(k + 32), step(k + 48);
  }
  for (; k + 16 <= K; k += 16) step(k);
  if (k < K) {  // the last K % 16 columns, masked
    const __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = widen(w + r * K + k, mask);
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + t * K + k);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(xv, wv[r], acc[r][t]);
    }
  }
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) {
      if constexpr (sizeof(W) == 1)
        y[t * ldy + r] = sum16(acc[r][t]) * scale[r];
      else
        y[t * ldy + r] = sum16(acc[r][t]);
    }
}

// Panels (quant_linear.h): T tokens x the 32 outputs of each of P panels, P * T * 2 accumulators;
// per k, a panel's 32 weights are loaded once (2 vectors) and each token's x[k] broadcast against
// them. Each output accumulates over k in order in its own lane, whatever T and P are. Decode
// (T = 1) takes two panels at once: two streams of weights in flight (a few per cent faster on
// SmolLM2's shapes, one thread streaming from memory; 1.1x for the AVX2 kernel).
constexpr int kPanelVectors = kPanel / 16;
constexpr int kPanelTokens = 12;  // 24 accumulators + 2 weight vectors + 1 broadcast of 32 registers

template <typename W, int T, int P = 1>
void panel_tile(const float* x, i64 K, const W* p, float* y, i64 ldy, i64 cols) {
  __m512 acc[P][T][kPanelVectors];
  for (int q = 0; q < P; ++q)
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < kPanelVectors; ++j) acc[q][t][j] = _mm512_setzero_ps();
  // Decode streams the panel from memory: ask for the weights 64 k ahead (8 KiB of fp32; at
  // ~24 GB/s per core that is ~300 ns, above the memory latency; 4 KiB was no better).
  constexpr i64 kAhead = 64 * kPanel;
  for (i64 k = 0; k < K; ++k) {
    for (int q = 0; q < P; ++q) {
      const W* pk = p + q * K * kPanel + k * kPanel;
      constexpr i64 kBytes = kPanel * static_cast<i64>(sizeof(W));  // a k's weights: 128 (fp32) or 64 bytes
      for (i64 line = 0; line < kBytes; line += 64) prefetch(reinterpret_cast<const char*>(pk + kAhead) + line);
      __m512 w[kPanelVectors];
      for (int j = 0; j < kPanelVectors; ++j) w[j] = widen(pk + 16 * j);
      for (int t = 0; t < T; ++t) {
        const __m512 xv = _mm512_set1_ps(x[t * K + k]);
        for (int j = 0; j < kPanelVectors; ++j) acc[q][t][j] = _mm512_fmadd_ps(xv, w[j], acc[q][t][j]);
      }
    }
  }
  for (int q = 0; q < P; ++q)
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < kPanelVectors; ++j) {
        const i64 c = q * kPanel + 16 * j;
        if (c + 16 <= cols) {
          _mm512_storeu_ps(y + t * ldy + c, acc[q][t][j]);
        } else if (c < cols) {
          _mm512_mask_storeu_ps(y + t * ldy + c, static_cast<__mmask16>((1u << (cols - c)) - 1), acc[q][t][j]);
        }
      }
}

// tiles[R - 1][T - 1], for the edges of the output where fewer rows or tokens remain.
template <int R, int T>
struct Fp32Tile {
  static constexpr auto fn = &row_tile<float, R, T>;
};
template <int R, int T>
struct Bf16Tile {
  static constexpr auto fn = &row_tile<std::uint16_t, R, T>;
};
template <typename W>
constexpr auto panel_tiles() {
  using Fn = decltype(&panel_tile<W, 1>);
  struct Table {
    Fn pair;  // 64 outputs, 1 token
    Fn at[kPanelTokens];
  } t{&panel_tile<W, 1, 2>,
      {&panel_tile<W, 1>, &panel_tile<W, 2>, &panel_tile<W, 3>, &panel_tile<W, 4>, &panel_tile<W, 5>,
        &panel_tile<W, 6>, &panel_tile<W, 7>, &panel_tile<W, 8>, &panel_tile<W, 9>, &panel_tile<W, 10>,
        &panel_tile<W, 11>, &panel_tile<W, 12>}};
  static_assert(kPanelTokens == 12, "the table lists 1..12 tokens");
  return t;
}
constexpr auto kFp32Panels = panel_tiles<float>();
constexpr auto kBf16Panels = panel_tiles<std::uint16_t>();

template <int R, int T>
struct Int8Tile {
  static constexpr auto fn = &row_tile<std::int8_t, R, T>;
};

template <template <int, int> class Tile>
constexpr auto tile_table() {
  using Fn = decltype(Tile<1, 1>::fn);
  struct Table {
    Fn at[kRows][kTokens];
  } t{{{Tile<1, 1>::fn, Tile<1, 2>::fn, Tile<1, 3>::fn, Tile<1, 4>::fn},
       {Tile<2, 1>::fn, Tile<2, 2>::fn, Tile<2, 3>::fn, Tile<2, 4>::fn},
       {Tile<3, 1>::fn, Tile<3, 2>::fn, Tile<3, 3>::fn, Tile<3, 4>::fn},
       {Tile<4, 1>::fn, Tile<4, 2>::fn, Tile<4, 3>::fn, Tile<4, 4>::fn}}};
  static_assert(kRows == 4 && kTokens == 4, "the table lists 4 x 4 tiles");
  return t;
}

constexpr auto kFp32Tiles = tile_table<Fp32Tile>();
constexpr auto kBf16Tiles = tile_table<Bf16Tile>();
constexpr auto kInt8Tiles = tile_table<Int8Tile>();

// Walks the output [M, n0:n1) in row blocks, token tiles (of up to kTokens tokens) and row
// tiles; run(r, t, m, n) computes the tile of r rows from n and t tokens from m.
template <typename Run>
void walk(i64 M, i64 n0, i64 n1, Run run) {
  for (i64 nb = n0; nb < n1; nb += kBlockRows) {
    const i64 nb_end = min(nb + kBlockRows, n1);
    for (i64 m = 0; m < M; m += kTokens) {
      const int t = static_cast<int>(min(i64{kTokens}, M - m));
      for (i64 n = nb; n < nb_end; n += kRows) run(static_cast<int>(min(kRows, nb_end - n)), t, m, n);
    }
  }
}

}  // namespace

void float_linear(const float* x, i64 M, const FloatWeights& w, float* y, i64 n0, i64 n1) {
  walk(M, n0, n1, [&](int r, int t, i64 m, i64 n) {
    if (w.bf16)
      kBf16Tiles.at[r - 1][t - 1](x + m * w.K, w.K, static_cast<const std::uint16_t*>(w.w) + n * w.K, nullptr, y + m * w.N + n,
                                  w.N);
    else
      kFp32Tiles.at[r - 1][t - 1](x + m * w.K, w.K, static_cast<const float*>(w.w) + n * w.K, nullptr, y + m * w.N + n, w.N);
  });
}

void panel_linear(const float* x, i64 M, const PanelWeights& w, float* y, i64 n0, i64 n1) {
  i64 n = n0;
  if (M == 1)
    for (; n + kPanel < n1; n += 2 * kPanel) {
      if (w.bf16)
        kBf16Panels.pair(x, w.K, static_cast<const std::uint16_t*>(w.w) + n * w.K, y + n, w.N, min(2 * kPanel, n1 - n));
      else
        kFp32Panels.pair(x, w.K, static_cast<const float*>(w.w) + n * w.K, y + n, w.N, min(2 * kPanel, n1 - n));
    }
  // Panel by panel: a panel (K x 32 weights, 74 KB for K = 576) stays in L2 while every token passes.
  for (; n < n1; n += kPanel) {
    const i64 offset = n * w.K, cols = min(kPanel, n1 - n);
    for (i64 m = 0; m < M; m += kPanelTokens) {
      const int t = static_cast<int>(min(kPanelTokens, M - m));
      if (w.bf16)
        kBf16Panels.at[t - 1](x + m * w.K, w.K, static_cast<const std::uint16_t*>(w.w) + offset, y + m * w.N + n, w.N, cols);
      else
        kFp32Panels.at[t - 1](x + m * w.K, w.K, static_cast<const float*>(w.w) + offset, y + m * w.N + n, w.N, cols);
    }
  }
}

void int8_linear(const float* x, i64 M, const Int8Weights& w, float* y, i64 n0, i64 n1) {
  walk(M, n0, n1, [&](int r, int t, i64 m, i64 n) {
    kInt8Tiles.at[r - 1][t - 1](x + m * w.K, w.K, w.q + n * w.K, w.scale + n, y + m * w.N + n, w.N);
  });
}

}  // namespace torchchat::kernels::avx512
