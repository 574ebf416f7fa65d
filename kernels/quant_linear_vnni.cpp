// int4 and int8 weights times activations in int8 slices on AVX-512 VNNI (quant_linear.h, "int4
// panels" and "int8 panels"), called only when the CPU has it (quant_linear.cpp). Like
// quant_linear_avx512.cpp, free of standard-library headers (their inline functions would be
// compiled for these ISAs).
//
// Why integer dot products: weight-only int4 with fp32 activations converts every weight to a
// float (~7 uops per 32 weights and row, with a 16-entry LUT) and is bound by
// that, not by memory. Here one vpdpbusd multiplies 64 weight codes by activation bytes: per 32
// weights of 16 rows, 4 loads, 6 uops to split the nibbles and 8 dot products per slice, so
// decode is left to the memory's pace. int8 weights need no unpacking: 8 loads, 8 dot products
// and one subtraction per token and slice (the codes' + 128), where fp32 activations take 32
// widenings and 32 FMAs. Three slices (fp32 activations) triple the dot products and still issue
// fewer uops than the float kernels: on SmolLM2's 1536 x 576 int4 matrix, one thread, weights in
// L2, 24-38 G weights/s against the float kernel's 12-17.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")
#pragma GCC optimize("O3", "fp-contract=off")  // only the fmas written out: the bits every ISA shares
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "quant_linear.h"

namespace torchchat::kernels::avx512vnni {
namespace {

using i64 = std::int64_t;

// Tokens per tile: the 8 unpacked weight vectors of a block serve every token of the tile.
constexpr int kTokens = 8;
// Decode streams each thread's panels front to back; prefetch this far ahead (the hardware
// prefetcher stops at 4 KiB pages; 4 and 8 KiB measured no better).
constexpr i64 kAhead = 2048;

inline i64 min(i64 a, i64 b) { return a < b ? a : b; }

inline __m512i broadcast4(const std::int8_t* p) {
  std::int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// The output columns [16p, 16p + cols) of tokens [m, m + T): every block of K in order.
// kBits 4: int4 panels (256 bytes per block, then per group 16 fp16 scales and 16 fp16 mins);
// kBits 8: int8 panels (512 bytes per block, then per group 16 fp32 scales). kSlices: the
// activations' int8 slices, 1 or 3.
template <int kBits, int kSlices, int T>
void tile(const Int8Activations& x, i64 m, const std::uint8_t* panel, i64 K, i64 G, float* y, i64 ldy, int cols) {
  constexpr i64 kBlockBytes = 64 * kBits;
  const i64 groups = K / G, group_bytes = G / 32 * kBlockBytes + 64, blocks = K / 32;
  const i64 q_stride = x.M * K, sum_stride = x.M * blocks;  // from one slice to the next
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (i64 g = 0; g < groups; ++g) {
    const std::uint8_t* group = panel + g * group_bytes;
    const std::uint8_t* trailer = group + G / 32 * kBlockBytes;
    __m512 scale, mins;
    if constexpr (kBits == 4) {
      scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(trailer)));
      mins = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(trailer + 32)));
    } else {
      scale = _mm512_loadu_ps(trailer);
    }
    for (i64 j = 0; j < G / 32; ++j) {
      const std::uint8_t* block = group + kBlockBytes * j;
      for (int line = 0; line < kBlockBytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(block + kAhead + line), _MM_HINT_T0);
      // w[s]: the codes of k0 + 4s .. k0 + 4s + 3 of the 16 rows (int4: chunk s % 4, low nibbles
      // for s < 4; int8: chunk s).
      __m512i w[8];
      if constexpr (kBits == 4) {
        for (int c = 0; c < 4; ++c) {
          const __m512i bytes = _mm512_loadu_si512(block + 64 * c);
          w[c] = _mm512_and_si512(bytes, low4);
          w[c + 4] = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low4);
        }
      } else {
        for (int c = 0; c < 8; ++c) w[c] = _mm512_loadu_si512(block + 64 * c);
      }
      const i64 b = g * (G / 32) + j;
      for (int t = 0; t < T; ++t) {
        const i64 at = (m + t) * blocks + b;
        __m512 dot;
        for (int s = kSlices - 1; s >= 0; --s) {
          const std::int8_t* xq = x.q + s * q_stride + (m + t) * K + 32 * b;
          // Two chains of four: the dot products' latency overlaps.
          __m512i d0 = _mm512_setzero_si512(), d1 = _mm512_setzero_si512();
          for (int c = 0; c < 4; ++c) {
            d0 = _mm512_dpbusd_epi32(d0, w[c], broadcast4(xq + 4 * c));
            d1 = _mm512_dpbusd_epi32(d1, w[c + 4], broadcast4(xq + 16 + 4 * c));
          }
          __m512i d = _mm512_add_epi32(d0, d1);
          if constexpr (kBits == 8) d = _mm512_sub_epi32(d, _mm512_set1_epi32(128 * x.sum[s * sum_stride + at]));  // the + 128
          const __m512 f = _mm512_cvtepi32_ps(d);
          if constexpr (kSlices == 1) dot = f;
          else dot = s == kSlices - 1 ? _mm512_mul_ps(f, _mm512_set1_ps(kSliceUnit[s]))
                                      : _mm512_fmadd_ps(f, _mm512_set1_ps(kSliceUnit[s]), dot);
        }
        acc[t] = _mm512_fmadd_ps(dot, _mm512_mul_ps(scale, _mm512_set1_ps(x.scale[at])), acc[t]);
        if constexpr (kBits == 4) acc[t] = _mm512_fmadd_ps(mins, _mm512_set1_ps(x.scaled_sum[at]), acc[t]);
      }
    }
  }
  const __mmask16 mask = static_cast<__mmask16>(cols >= 16 ? 0xffff : (1u << cols) - 1);
  for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + t * ldy, mask, acc[t]);
}

using TileFn = decltype(&tile<4, 1, 1>);
template <int kBits, int kSlices>
constexpr TileFn kTiles[kTokens] = {&tile<kBits, kSlices, 1>, &tile<kBits, kSlices, 2>, &tile<kBits, kSlices, 3>,
                                    &tile<kBits, kSlices, 4>, &tile<kBits, kSlices, 5>, &tile<kBits, kSlices, 6>,
                                    &tile<kBits, kSlices, 7>, &tile<kBits, kSlices, 8>};

template <int kBits>
void a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, i64 n0, i64 n1) {
  const i64 panel_bytes = (w.K / w.G) * (w.G / 32 * 64 * kBits + 64);
  // The blocks' prefetches reach kAhead on; ask for the first kAhead bytes now (a call's
  // weights are cold: the previous layer's were read last).
  const char* first = reinterpret_cast<const char*>(w.w + (n0 / kA8Panel) * panel_bytes);
  for (i64 line = 0; line < kAhead; line += 64) _mm_prefetch(first + line, _MM_HINT_T0);
  for (i64 n = n0; n < n1; n += kA8Panel) {
    const std::uint8_t* panel = w.w + (n / kA8Panel) * panel_bytes;
    const int cols = static_cast<int>(min(kA8Panel, n1 - n));
    for (i64 m = 0; m < x.M; m += kTokens) {
      const int t = static_cast<int>(min(kTokens, x.M - m));
      (x.slices == 1 ? kTiles<kBits, 1> : kTiles<kBits, 3>)[t - 1](x, m, panel, w.K, w.G, y + m * w.N + n, w.N, cols);
    }
  }
}

// v rounded half to even (cvtps2dq in the default MXCSR mode, as the generic code and
// torch.round), within [lo, hi].
inline __m512i round_within(__m512 v, int lo, int hi) {
  return _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(v), _mm512_set1_epi32(lo)), _mm512_set1_epi32(hi));
}

}  // namespace

void quantize_activations(const float* x, i64 M, i64 K, int slices, std::int8_t* q, float* scale, float* scaled_sum,
                          std::int32_t* sum) {
  const i64 blocks = M * (K / 32);
  for (i64 b = 0; b < blocks; ++b) {
    const __m512 x0 = _mm512_loadu_ps(x + 32 * b), x1 = _mm512_loadu_ps(x + 32 * b + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
    const float s = amax / 127.f;
    for (int half = 0; half < 2; ++half) {
      const __m512 xv = half ? x1 : x0;
      __m512i d[3] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
      if (s != 0.f) {
        const __m512 sv = _mm512_set1_ps(s), s1 = _mm512_set1_ps(s * kSliceUnit[1]),
                     s2 = _mm512_set1_ps(s * kSliceUnit[2]);
        d[0] = round_within(_mm512_div_ps(xv, sv), -127, 127);
        if (slices == 3 && s >= kSmallestSplit) {  // the generic code's steps, lane by lane
          const __m512 r1 = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(d[0]), sv, xv);
          d[1] = round_within(_mm512_div_ps(r1, s1), -256, 256);
          const __m512 r2 = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(d[1]), s1, r1);
          d[2] = round_within(_mm512_div_ps(r2, s2), -128, 127);
          const __m512i one = _mm512_set1_epi32(1), carry = _mm512_set1_epi32(256);
          const __mmask16 up = _mm512_cmpgt_epi32_mask(d[1], _mm512_set1_epi32(127)) &
                               _mm512_cmplt_epi32_mask(d[0], _mm512_set1_epi32(127));
          d[0] = _mm512_mask_add_epi32(d[0], up, d[0], one);
          d[1] = _mm512_mask_sub_epi32(d[1], up, d[1], carry);
          const __mmask16 down = _mm512_cmplt_epi32_mask(d[1], _mm512_set1_epi32(-128)) &
                                 _mm512_cmpgt_epi32_mask(d[0], _mm512_set1_epi32(-127));
          d[0] = _mm512_mask_sub_epi32(d[0], down, d[0], one);
          d[1] = _mm512_mask_add_epi32(d[1], down, d[1], carry);
          d[1] = _mm512_min_epi32(_mm512_max_epi32(d[1], _mm512_set1_epi32(-128)), _mm512_set1_epi32(127));
        }
      }
      for (int j = 0; j < slices; ++j)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + j * M * K + 32 * b + 16 * half), _mm512_cvtepi32_epi8(d[j]));
    }
    for (int j = 0; j < slices; ++j) {
      const __m128i* p = reinterpret_cast<const __m128i*>(q + j * M * K + 32 * b);
      sum[j * blocks + b] = _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_cvtepi8_epi32(_mm_loadu_si128(p)),
                                                                     _mm512_cvtepi8_epi32(_mm_loadu_si128(p + 1))));
    }
    scale[b] = s;
    scaled_sum[b] = s * slice_sum(sum + b, blocks, slices);
  }
}

void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, i64 n0, i64 n1) {
  a8_linear<4>(x, w, y, n0, n1);
}

void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, i64 n0, i64 n1) {
  a8_linear<8>(x, w, y, n0, n1);
}

}  // namespace torchchat::kernels::avx512vnni
