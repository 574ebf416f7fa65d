// AVX-512 attention (attention.h), called only when the CPU has it (attention.cpp). Free of
// standard-library headers for quant_linear_avx512.cpp's reason.
#pragma GCC target("avx512f,avx512bw,avx512vl,fma")
// fp-contract=off: the order of float operations is attention.h's, the same on every level.
#pragma GCC optimize("O3", "fp-contract=off")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "attention.h"
#include "bf16_avx512.h"

namespace torchchat::kernels::avx512 {
namespace {

using i64 = std::int64_t;

// Positions per block: a block's scores for the heads of a pass stay in L1 between the key
// pass and the value pass.
constexpr i64 kBlock = 64;

// exp(x) for x <= 0 (scores minus their max), to about 1 ulp, attention.h's exp0: x = n ln2 + r,
// |r| <= ln2 / 2, exp(r) by Cephes' expf polynomial, times 2^n by scalef. Below -87 the result
// would be subnormal; it is taken as exp(-87) ~ 1.6e-38 instead, which no sum of these weights
// can see.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

inline __mmask16 first(i64 n) { return n >= 16 ? 0xffff : static_cast<__mmask16>((1u << n) - 1); }

// 16 values of a cache row as fp32: fp32 as they are, bf16 widened (the top half of an fp32).
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const std::uint16_t* p) { return widen_bf16x16(p); }

// One block of n <= kBlock positions (k, v at its first; C: float, or bf16 bits) for NG heads
// (q: rows of 16 * DV floats), folded into the running m, z, acc. Each key and value row is
// loaded once for the NG heads; registers: NG * DV for q or acc plus DV for the row (at most 24 of 32).
template <int DV, int NG, typename C>
void block(const float* q, float scale, const C* k, const C* v, i64 n, float* m, float* z, float* acc) {
  constexpr i64 D = 16 * DV;
  alignas(64) float scores[NG][kBlock];
  {
    __m512 qv[NG][DV];
    for (int g = 0; g < NG; ++g)
      for (int j = 0; j < DV; ++j) qv[g][j] = _mm512_mul_ps(_mm512_loadu_ps(q + g * D + 16 * j), _mm512_set1_ps(scale));
    for (i64 l = 0; l < n; ++l) {
      __m512 kv[DV];
      for (int j = 0; j < DV; ++j) kv[j] = load16(k + l * D + 16 * j);
      for (int g = 0; g < NG; ++g) {
        __m512 dot = _mm512_mul_ps(qv[g][0], kv[0]);
        for (int j = 1; j < DV; ++j) dot = _mm512_fmadd_ps(qv[g][j], kv[j], dot);
        scores[g][l] = sum16(dot);
      }
    }
  }
  // Softmax weights under the new max; what was summed under the old one is rescaled.
  float rescale[NG];
  for (int g = 0; g < NG; ++g) {
    __m512 mx = _mm512_set1_ps(m[g]);
    for (i64 l = 0; l < n; l += 16) mx = _mm512_mask_max_ps(mx, first(n - l), mx, _mm512_loadu_ps(&scores[g][l]));
    const float new_max = max16(mx);
    rescale[g] = _mm512_cvtss_f32(exp_nonpositive(_mm512_set1_ps(m[g] - new_max)));
    m[g] = new_max;
    __m512 sum = _mm512_setzero_ps();
    for (i64 l = 0; l < n; l += 16) {
      const __mmask16 mask = first(n - l);
      const __m512 p = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(&scores[g][l]), _mm512_set1_ps(new_max)));
      _mm512_storeu_ps(&scores[g][l], p);
      sum = _mm512_mask_add_ps(sum, mask, sum, p);
    }
    z[g] = z[g] * rescale[g] + sum16(sum);
  }
  __m512 av[NG][DV];
  for (int g = 0; g < NG; ++g)
    for (int j = 0; j < DV; ++j)
      av[g][j] = _mm512_mul_ps(_mm512_loadu_ps(acc + g * D + 16 * j), _mm512_set1_ps(rescale[g]));
  for (i64 l = 0; l < n; ++l) {
    __m512 vv[DV];
    for (int j = 0; j < DV; ++j) vv[j] = load16(v + l * D + 16 * j);
    for (int g = 0; g < NG; ++g) {
      const __m512 p = _mm512_set1_ps(scores[g][l]);
      for (int j = 0; j < DV; ++j) av[g][j] = _mm512_fmadd_ps(p, vv[j], av[g][j]);
    }
  }
  for (int g = 0; g < NG; ++g)
    for (int j = 0; j < DV; ++j) _mm512_storeu_ps(acc + g * D + 16 * j, av[g][j]);
}

template <int DV, typename C>
void attend_d(const float* q, i64 G, float scale, const C* k, const C* v, i64 l0, i64 l1, float* m, float* z,
              float* acc) {
  constexpr i64 D = 16 * DV;
  constexpr i64 kHeads = 24 / DV - 1 < 4 ? 24 / DV - 1 : 4;  // heads per pass, within the registers
  for (i64 g = 0; g < G; ++g) {
    m[g] = -__builtin_inff();
    z[g] = 0;
    for (i64 d = 0; d < D; ++d) acc[g * D + d] = 0;
  }
  for (i64 b = l0; b < l1; b += kBlock) {
    const i64 n = l1 - b < kBlock ? l1 - b : kBlock;
    const C* kb = k + b * D;
    const C* vb = v + b * D;
    for (i64 g = 0; g < G; g += kHeads) {  // the block stays in L1 for the next pass of heads
      float* a = acc + g * D;
      switch (G - g < kHeads ? G - g : kHeads) {
        case 1: block<DV, 1, C>(q + g * D, scale, kb, vb, n, m + g, z + g, a); break;
        case 2: block<DV, 2, C>(q + g * D, scale, kb, vb, n, m + g, z + g, a); break;
        case 3: if constexpr (kHeads >= 3) block<DV, 3, C>(q + g * D, scale, kb, vb, n, m + g, z + g, a); break;
        default: if constexpr (kHeads >= 4) block<DV, 4, C>(q + g * D, scale, kb, vb, n, m + g, z + g, a); break;
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

}  // namespace torchchat::kernels::avx512
