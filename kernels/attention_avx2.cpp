// AVX2 + FMA attention (attention.h), called only when the CPU has them (attention.cpp). The
// AVX-512 code's 16 lanes are two halves of 8 here, in the same order of float operations, so
// both give the same bits. Free of standard-library headers for quant_linear_avx512.cpp's reason.
#pragma GCC target("avx2,fma")
// fp-contract=off: the order of float operations is attention.h's, the same on every level.
#pragma GCC optimize("O3", "fp-contract=off")
#include <immintrin.h>

#include "attention.h"
#include "lanes_avx2.h"

namespace torchchat::kernels::avx2 {
namespace {

using i64 = std::int64_t;

// Positions per block (attention.h): a block's scores for the heads of a pass stay in L1
// between the key pass and the value pass, and its rows for the next pass of heads.
constexpr i64 kBlock = 64;
// Heads per pass, at most: 2 * 4 dot products + 2 for the key row, 3 * 4 + 2 for the values.
constexpr i64 kHeads = 4;

// attention.h's exp0 on 8 lanes, as the AVX-512 code: 2^n is built in the exponent bits (the
// same as scalef for n in [-126, 0]).
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i two_to_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(two_to_n));
}

// 8 values of a cache row as fp32: fp32 as they are, bf16 widened.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const std::uint16_t* p) { return widen_bf16x8(p); }

// Lanes [0, 8) and [8, 16) of the first `left` of a run of positions: all ones where taken.
inline __m256 taken(i64 left, int first_lane) {
  const __m256i lane = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(first_lane));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), lane));
}

// One block of n <= kBlock positions (k, v at its first; C: float, or bf16 bits) for NG heads
// (q: rows of 16 * DV floats), folded into the running m, z, acc. Each key row is loaded once for
// the NG heads (the scaled q rows are read from L1 as operands); the values go 16 columns at a
// time, each value row's 16 loaded once for the NG heads' accumulators.
template <int DV, int NG, typename C>
void block(const float* q, float scale, const C* k, const C* v, i64 n, float* m, float* z, float* acc) {
  constexpr i64 D = 16 * DV;
  alignas(32) float qs[NG][D];
  alignas(32) float scores[NG][kBlock];
  for (int g = 0; g < NG; ++g)
    for (i64 d = 0; d < D; d += 8)
      _mm256_store_ps(&qs[g][d], _mm256_mul_ps(_mm256_loadu_ps(q + g * D + d), _mm256_set1_ps(scale)));
  for (i64 l = 0; l < n; ++l) {
    __m256 lo[NG], hi[NG];
    for (int j = 0; j < DV; ++j) {
      const __m256 klo = load8(k + l * D + 16 * j), khi = load8(k + l * D + 16 * j + 8);
      for (int g = 0; g < NG; ++g) {
        const __m256 qlo = _mm256_load_ps(&qs[g][16 * j]), qhi = _mm256_load_ps(&qs[g][16 * j + 8]);
        lo[g] = j == 0 ? _mm256_mul_ps(qlo, klo) : _mm256_fmadd_ps(qlo, klo, lo[g]);
        hi[g] = j == 0 ? _mm256_mul_ps(qhi, khi) : _mm256_fmadd_ps(qhi, khi, hi[g]);
      }
    }
    for (int g = 0; g < NG; ++g) scores[g][l] = sum16(lo[g], hi[g]);
  }
  // Softmax weights under the new max; what was summed under the old one is rescaled. Lanes
  // past the block's positions take part in neither (blends).
  float rescale[NG];
  for (int g = 0; g < NG; ++g) {
    __m256 mlo = _mm256_set1_ps(m[g]), mhi = mlo;
    for (i64 l = 0; l < n; l += 16) {
      const __m256 tlo = taken(n - l, 0), thi = taken(n - l, 8);
      const __m256 slo = _mm256_maskload_ps(&scores[g][l], _mm256_castps_si256(tlo));
      const __m256 shi = _mm256_maskload_ps(&scores[g][l + 8], _mm256_castps_si256(thi));
      mlo = _mm256_blendv_ps(mlo, _mm256_max_ps(mlo, slo), tlo);
      mhi = _mm256_blendv_ps(mhi, _mm256_max_ps(mhi, shi), thi);
    }
    const float new_max = max16(mlo, mhi);
    rescale[g] = _mm256_cvtss_f32(exp_nonpositive(_mm256_set1_ps(m[g] - new_max)));
    m[g] = new_max;
    __m256 sum_lo = _mm256_setzero_ps(), sum_hi = sum_lo;
    for (i64 l = 0; l < n; l += 16) {
      const __m256 tlo = taken(n - l, 0), thi = taken(n - l, 8);
      const __m256 slo = _mm256_maskload_ps(&scores[g][l], _mm256_castps_si256(tlo));
      const __m256 shi = _mm256_maskload_ps(&scores[g][l + 8], _mm256_castps_si256(thi));
      const __m256 plo = exp_nonpositive(_mm256_sub_ps(slo, _mm256_set1_ps(new_max)));
      const __m256 phi = exp_nonpositive(_mm256_sub_ps(shi, _mm256_set1_ps(new_max)));
      _mm256_store_ps(&scores[g][l], plo);
      _mm256_store_ps(&scores[g][l + 8], phi);
      sum_lo = _mm256_add_ps(sum_lo, _mm256_and_ps(plo, tlo));  // + 0 where not taken: sum >= +0 stays
      sum_hi = _mm256_add_ps(sum_hi, _mm256_and_ps(phi, thi));
    }
    z[g] = z[g] * rescale[g] + sum16(sum_lo, sum_hi);
  }
  for (int j = 0; j < DV; ++j) {
    __m256 alo[NG], ahi[NG];
    for (int g = 0; g < NG; ++g) {
      alo[g] = _mm256_mul_ps(_mm256_loadu_ps(acc + g * D + 16 * j), _mm256_set1_ps(rescale[g]));
      ahi[g] = _mm256_mul_ps(_mm256_loadu_ps(acc + g * D + 16 * j + 8), _mm256_set1_ps(rescale[g]));
    }
    for (i64 l = 0; l < n; ++l) {
      const __m256 vlo = load8(v + l * D + 16 * j), vhi = load8(v + l * D + 16 * j + 8);
      for (int g = 0; g < NG; ++g) {
        const __m256 p = _mm256_broadcast_ss(&scores[g][l]);
        alo[g] = _mm256_fmadd_ps(p, vlo, alo[g]);
        ahi[g] = _mm256_fmadd_ps(p, vhi, ahi[g]);
      }
    }
    for (int g = 0; g < NG; ++g) {
      _mm256_storeu_ps(acc + g * D + 16 * j, alo[g]);
      _mm256_storeu_ps(acc + g * D + 16 * j + 8, ahi[g]);
    }
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

}  // namespace torchchat::kernels::avx2
