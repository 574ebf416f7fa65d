// The int8-activation kernels (quant_linear.h, "int4 panels" and "int8 panels") on 256-bit
// vectors, shared by quant_linear_avx2_a8.cpp (vpmaddubsw) and quant_linear_avx2vnni.cpp
// (AVX-VNNI's vpdpbusd). Each of them includes this after its own `#pragma GCC target`: everything
// here has internal linkage, so each file gets its own copy compiled for its own instructions.
//
// A panel's 64-byte chunk is two ymm halves, rows 0-7 and 8-15; every token keeps two 8-lane
// accumulators. The integer dot products are exact and the float steps are the generic code's,
// in its order, lane by lane, so the outputs are the same bits.
#pragma once

#include <immintrin.h>

#include "quant_linear.h"

namespace torchchat::kernels {
namespace {
namespace a8 {

using i64 = std::int64_t;

// Tokens per tile: a block's unpacked weights serve every token of the tile. With 16 ymm
// registers they spill to the stack; reloading them from L1 is cheaper than unpacking them again
// (8 and 4 tokens measured alike on prompts; 8 reads each panel half as often).
constexpr int kTokens = 8;
// A prompt's tokens go through every panel in chunks of this many, so that the chunk's activation
// codes stay in cache while the panels pass: 384 tokens of K = 576 through a 1536-row int8 matrix
// (AVX-VNNI, one thread) ran 22 -> 95 GMAC/s in chunks of 32 instead of all at once.
constexpr i64 kChunk = 32;
// Decode streams each thread's panels front to back; prefetch this far ahead (the hardware
// prefetcher stops at 4 KiB pages), as the AVX-512 VNNI kernel does.
constexpr i64 kAhead = 2048;

inline i64 min(i64 a, i64 b) { return a < b ? a : b; }

inline __m256i broadcast4(const std::int8_t* p) {
  std::int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Dot products of one block (32 k) of 16 rows with a token's 32 activation codes, as int32 per
// row: d[h] holds rows 8h .. 8h + 7. w[h][s] holds the codes of k0 + 4s .. k0 + 4s + 3 of those
// rows (int4: the nibbles 0..15; int8: Dot::weights8 of the stored bytes), so it meets the
// activations xq[4s .. 4s + 3] in both formats. A Dot provides:
//   kSignedInt8   true: int8 dots are dot(q, x) already; false: dot(q + 128, x), the caller subtracts 128 * sum(x)
//   weights8(v)   the stored int8 bytes (q + 128) as the dot wants them
//   dot<kBits>(w, xq, d)
//   kWideSlices   true: a prompt's int8 dots with fp32 activations take slices 1 and 2 as one (Wide)
//   kInt4Pairs    true: int4 dots with fp32 activations take slices 1 and 2 as one from
//                 pairs4(w, xq, pairs), the int16 sums of dot<4> before it widens them
//   kMagnitudes   true: a prompt's int8 dots are dot8(w, |w|, xq, d), |w| made once per block

// An empty asm that GCC must assume changes v: it keeps a sum's additions in program order, where
// GCC would otherwise make all of a token's products first and spill them (int4 prompts ran 26 ->
// 34 GMAC/s with it).
inline void in_order(__m256i& v) { __asm__("" : "+x"(v)); }

// Slices 1 and 2 of fp32 activations as one 16-bit activation, for int8 weights: with exact
// integer dots d1 and d2, the float steps fma(d1, 2^-8, d2 * 2^-16) round (256 d1 + d2) * 2^-16
// once, and so does converting d12 = dot(q, 256 x1 + x2) to float and scaling it by 2^-16 (an
// exact power of two): the same bits. vpmaddwd then makes the two slices' dots in 4 instructions
// per 4 k of 8 rows where vpmaddubsw needs 8 (both slices' sign, multiply, widen, add).
// 256 x1 + x2 lies in [-32896, 32639]; + 128 it fits int16, so d12 = dot(q, 256 x1 + x2 + 128)
// - 128 * sum(q). The weights widen to 16 bits once per block and serve every token of the tile:
// decode (one token) keeps the slices apart.
struct Wide {
  __m256i lo[2][8], hi[2][8];  // rows 8h.., k 4c and 4c + 2 / 4c + 1 and 4c + 3, as int16 pairs
  __m256i offset[2];           // 128 * sum(q) over the block, per row

  // w: the block's signed codes, as Dot::weights8 gives them.
  explicit Wide(const __m256i (&w)[2][8]) {
    for (int h = 0; h < 2; ++h) {
      __m256i sum = _mm256_setzero_si256();  // int16 pairs: within 8 * 2 * 127
      for (int c = 0; c < 8; ++c) {
        lo[h][c] = _mm256_srai_epi16(_mm256_slli_epi16(w[h][c], 8), 8);
        hi[h][c] = _mm256_srai_epi16(w[h][c], 8);
        sum = _mm256_add_epi16(sum, _mm256_add_epi16(lo[h][c], hi[h][c]));
      }
      offset[h] = _mm256_slli_epi32(_mm256_madd_epi16(sum, _mm256_set1_epi16(1)), 7);
    }
  }

  // d12 of one token: x1 and x2 its 32 codes of slices 1 and 2.
  void dot(const std::int8_t* x1, const std::int8_t* x2, __m256i (&d)[2]) const {
    alignas(32) std::int32_t pairs[16];  // int16 pairs: k 4c and 4c + 2 at 2c, 4c + 1 and 4c + 3 at 2c + 1
    // Words 0 2 1 3 4 6 5 7 of each 128-bit lane (k 0..7 and 8..15 of a half).
    const __m256i order = _mm256_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15,
                                           0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15);
    for (int half = 0; half < 2; ++half) {
      const __m256i a = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x1 + 16 * half)));
      const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x2 + 16 * half)));
      // Wrapping 16-bit arithmetic: the result is in range, so it is exact.
      const __m256i v = _mm256_add_epi16(_mm256_add_epi16(_mm256_slli_epi16(a, 8), b), _mm256_set1_epi16(128));
      _mm256_store_si256(reinterpret_cast<__m256i*>(pairs + 8 * half), _mm256_shuffle_epi8(v, order));
    }
    d[0] = d[1] = _mm256_setzero_si256();
    for (int c = 0; c < 8; ++c) {
      const __m256i xl = _mm256_set1_epi32(pairs[2 * c]), xh = _mm256_set1_epi32(pairs[2 * c + 1]);
      for (int h = 0; h < 2; ++h) {
        d[h] = _mm256_add_epi32(d[h], _mm256_add_epi32(_mm256_madd_epi16(lo[h][c], xl), _mm256_madd_epi16(hi[h][c], xh)));
        in_order(d[h]);
      }
    }
    for (int h = 0; h < 2; ++h) d[h] = _mm256_sub_epi32(d[h], offset[h]);
  }
};

// The output columns [16p, 16p + cols) of tokens [m, m + T): every block of K in order.
template <class Dot, int kBits, int kSlices, int T>
void tile(const Int8Activations& x, i64 m, const std::uint8_t* panel, i64 K, i64 G, float* y, i64 ldy, int cols) {
  constexpr i64 kBlockBytes = 64 * kBits;
  const i64 groups = K / G, group_bytes = G / 32 * kBlockBytes + 64, blocks = K / 32;
  const i64 q_stride = x.M * K, sum_stride = x.M * blocks;  // from one slice to the next
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  __m256 acc[T][2];
  for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  for (i64 g = 0; g < groups; ++g) {
    const std::uint8_t* group = panel + g * group_bytes;
    const std::uint8_t* trailer = group + G / 32 * kBlockBytes;
    __m256 scale[2], mins[2];
    for (int h = 0; h < 2; ++h) {
      if constexpr (kBits == 4) {
        scale[h] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(trailer + 16 * h)));
        mins[h] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(trailer + 32 + 16 * h)));
      } else {
        scale[h] = _mm256_loadu_ps(reinterpret_cast<const float*>(trailer) + 8 * h);
      }
    }
    for (i64 j = 0; j < G / 32; ++j) {
      const std::uint8_t* block = group + kBlockBytes * j;
      for (int line = 0; line < kBlockBytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(block + kAhead + line), _MM_HINT_T0);
      __m256i w[2][8];
      for (int h = 0; h < 2; ++h) {
        if constexpr (kBits == 4) {
          for (int c = 0; c < 4; ++c) {
            const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 64 * c + 32 * h));
            w[h][c] = _mm256_and_si256(bytes, low4);
            w[h][c + 4] = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
          }
        } else {
          for (int c = 0; c < 8; ++c)
            w[h][c] = Dot::weights8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 64 * c + 32 * h)));
        }
      }
      const i64 b = g * (G / 32) + j;
      constexpr bool kMagnitudes = kBits == 8 && T > 1 && Dot::kMagnitudes;
      [[maybe_unused]] __m256i magnitude[2][8];
      if constexpr (kMagnitudes)
        for (int h = 0; h < 2; ++h)
          for (int c = 0; c < 8; ++c) magnitude[h][c] = _mm256_abs_epi8(w[h][c]);
      constexpr bool kWide = kBits == 8 && kSlices == 3 && T > 1 && Dot::kWideSlices;
      constexpr bool kPairs = kBits == 4 && kSlices == 3 && Dot::kInt4Pairs;
      constexpr bool kJoined = kWide || kPairs;  // slices 1 and 2 as one
      [[maybe_unused]] const auto wide = [&] {
        if constexpr (kWide) return Wide(w); else return 0;
      }();
      for (int t = 0; t < T; ++t) {
        const i64 at = (m + t) * blocks + b;
        __m256 dot[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};  // set by the last slice first
        if constexpr (kJoined) {
          // d12 = 256 d1 + d2 as one exact int32 (see Wide): one conversion, one fma fewer.
          __m256i d12[2];
          const std::int8_t* x1 = x.q + q_stride + (m + t) * K + 32 * b;
          if constexpr (kWide) {
            wide.dot(x1, x1 + q_stride, d12);
          } else {  // the pairs' int16 sums are within 8 * 2 * 15 * 128
            __m256i p1[2], p2[2];
            Dot::pairs4(w, x1, p1);
            Dot::pairs4(w, x1 + q_stride, p2);
            for (int h = 0; h < 2; ++h)
              d12[h] = _mm256_add_epi32(_mm256_madd_epi16(p1[h], _mm256_set1_epi16(256)),
                                        _mm256_madd_epi16(p2[h], _mm256_set1_epi16(1)));
          }
          for (int h = 0; h < 2; ++h) dot[h] = _mm256_mul_ps(_mm256_cvtepi32_ps(d12[h]), _mm256_set1_ps(kSliceUnit[2]));
        }
        for (int s = kJoined ? 0 : kSlices - 1; s >= 0; --s) {
          __m256i d[2];
          const std::int8_t* xq = x.q + s * q_stride + (m + t) * K + 32 * b;
          if constexpr (kMagnitudes) {
            if (s == 0) Dot::dot8(w, magnitude, xq, d);  // slice 0: codes within [-127, 127]
            else Dot::template dot<kBits>(w, xq, d);
          } else {
            Dot::template dot<kBits>(w, xq, d);
          }
          if constexpr (kBits == 8 && !Dot::kSignedInt8) {
            const __m256i offset = _mm256_set1_epi32(128 * x.sum[s * sum_stride + at]);  // the codes' + 128
            d[0] = _mm256_sub_epi32(d[0], offset);
            d[1] = _mm256_sub_epi32(d[1], offset);
          }
          for (int h = 0; h < 2; ++h) {
            const __m256 f = _mm256_cvtepi32_ps(d[h]);
            if constexpr (kSlices == 1) dot[h] = f;
            else dot[h] = s == kSlices - 1 && !kJoined ? _mm256_mul_ps(f, _mm256_set1_ps(kSliceUnit[s]))
                                                       : _mm256_fmadd_ps(f, _mm256_set1_ps(kSliceUnit[s]), dot[h]);
          }
        }
        const __m256 sx = _mm256_set1_ps(x.scale[at]);
        for (int h = 0; h < 2; ++h) {
          acc[t][h] = _mm256_fmadd_ps(dot[h], _mm256_mul_ps(scale[h], sx), acc[t][h]);
          if constexpr (kBits == 4) acc[t][h] = _mm256_fmadd_ps(mins[h], _mm256_set1_ps(x.scaled_sum[at]), acc[t][h]);
        }
      }
    }
  }
  for (int t = 0; t < T; ++t) {
    float* out = y + t * ldy;
    if (cols == kA8Panel) {
      _mm256_storeu_ps(out, acc[t][0]);
      _mm256_storeu_ps(out + 8, acc[t][1]);
    } else {  // the last panel of an N that is no multiple of 16
      alignas(32) float all[kA8Panel];
      _mm256_store_ps(all, acc[t][0]);
      _mm256_store_ps(all + 8, acc[t][1]);
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
  // The blocks' prefetches reach kAhead on; ask for the first kAhead bytes now (a call's weights
  // are cold: the previous layer's were read last).
  const char* first = reinterpret_cast<const char*>(w.w + (n0 / kA8Panel) * panel_bytes);
  for (i64 line = 0; line < kAhead; line += 64) _mm_prefetch(first + line, _MM_HINT_T0);
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
