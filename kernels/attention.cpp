// Attention's tasks, the merge of split results, the implementation chosen at run time, and
// the portable implementation (attention.h).
// The order of float operations is attention.h's: no a * b + c contracted into an fma.
#pragma GCC optimize("fp-contract=off")
#include "attention.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "bf16.h"
#include "quant_linear.h"

namespace torchchat::kernels {
namespace {

using i64 = std::int64_t;

// quant_linear.cpp's level (with its notice and TORCHCHAT_KERNELS), for the D it covers: the
// vector code takes D = 16, 32, .., 128; every level computes the same bits.
enum class Implementation { Generic, Avx2, Avx512, Neon };
Implementation implementation(i64 D) {
  static const Implementation level = std::strncmp(isa(), "avx512", 6) == 0 ? Implementation::Avx512
                                      : std::strncmp(isa(), "avx2", 4) == 0 ? Implementation::Avx2
                                      : std::strncmp(isa(), "neon", 4) == 0 ? Implementation::Neon
                                                                            : Implementation::Generic;
  return D % 16 == 0 && D >= 16 && D <= 128 ? level : Implementation::Generic;
}

// The j-th token of the task order: first, last, second, second to last, ...
i64 interleaved(i64 j, i64 T) { return j % 2 == 0 ? j / 2 : T - 1 - j / 2; }

}  // namespace

std::int64_t attention_splits(std::int64_t T, std::int64_t Hkv, std::int64_t longest, std::int64_t threads) {
  if (threads <= 1 || T * Hkv >= 2 * threads) return 1;
  return std::max<i64>(1, std::min(threads, longest / 32));
}

AttentionArgs attention_args(const float* q, const void* k, const void* v, bool bf16, const std::int64_t* pos,
                             float* out, std::int64_t T, std::int64_t H, std::int64_t Hkv, std::int64_t D,
                             std::int64_t head_stride, std::int64_t threads) {
  i64 longest = 0;
  for (i64 t = 0; t < T; ++t) longest = std::max(longest, pos[t] + 1);
  return {q, k, v, bf16, pos, out, T, H, Hkv, D, head_stride, 1.0f / std::sqrt(static_cast<float>(D)),
          attention_splits(T, Hkv, longest, threads), nullptr};
}

namespace {

// The tasks over a cache of C values (float, or bf16 bits).
template <typename C>
void attention_over(const AttentionArgs& a, i64 task0, i64 task1) {
  const i64 G = a.H / a.Hkv, D = a.D, per_head = a.T * a.splits;
  using Attend = void (*)(const float*, i64, i64, float, const C*, const C*, i64, i64, float*, float*, float*);
  Attend attend = generic::attend;
  switch (implementation(D)) {
#if defined(__x86_64__)
    case Implementation::Avx512: attend = avx512::attend; break;
    case Implementation::Avx2: attend = avx2::attend; break;
#elif defined(__aarch64__)
    case Implementation::Neon: attend = neon::attend; break;
#endif
    default: break;  // generic, or a level of another architecture (never chosen here)
  }
  for (i64 task = task0; task < task1; ++task) {
    const i64 h = task / per_head, j = task % per_head / a.splits, s = task % a.splits;
    const i64 t = interleaved(j, a.T);
    const i64 n = a.pos[t] + 1;
    const i64 chunk = (n + a.splits - 1) / a.splits;
    const i64 l0 = std::min(n, s * chunk), l1 = std::min(n, l0 + chunk);
    const float* q = a.q + (t * a.H + h * G) * D;
    const C* k = static_cast<const C*>(a.k) + h * a.head_stride;
    const C* v = static_cast<const C*>(a.v) + h * a.head_stride;
    if (a.splits > 1) {  // partial results: m [G], z [G], acc [G, D]
      float* p = a.partials + ((t * a.Hkv + h) * a.splits + s) * G * (D + 2);
      attend(q, G, D, a.scale, k, v, l0, l1, p, p + G, p + 2 * G);
      continue;
    }
    // One task per (token, KV head): the result goes to out, normalized. acc is out's rows.
    float m[16], z[16];
    float* out = a.out + (t * a.H + h * G) * D;
    for (i64 g0 = 0; g0 < G; g0 += 16) {  // (m, z on the stack: 16 heads at a time)
      const i64 ng = std::min<i64>(16, G - g0);
      attend(q + g0 * D, ng, D, a.scale, k, v, l0, l1, m, z, out + g0 * D);
      for (i64 g = 0; g < ng; ++g)
        for (i64 d = 0; d < D; ++d) out[(g0 + g) * D + d] /= z[g];
    }
  }
}

}  // namespace

void attention(const AttentionArgs& a, std::int64_t task0, std::int64_t task1) {
  if (a.bf16)
    attention_over<std::uint16_t>(a, task0, task1);
  else
    attention_over<float>(a, task0, task1);
}

void attention_merge(const AttentionArgs& a, std::int64_t i0, std::int64_t i1) {
  const i64 G = a.H / a.Hkv, D = a.D, stride = G * (D + 2);
  for (i64 i = i0; i < i1; ++i) {
    const i64 t = i / a.Hkv, h = i % a.Hkv;
    const float* parts = a.partials + i * a.splits * stride;
    for (i64 g = 0; g < G; ++g) {
      float M = -std::numeric_limits<float>::infinity();
      for (i64 s = 0; s < a.splits; ++s) M = std::max(M, parts[s * stride + g]);
      float* out = a.out + (t * a.H + h * G + g) * D;
      std::fill(out, out + D, 0.0f);
      float Z = 0;
      for (i64 s = 0; s < a.splits; ++s) {
        const float* p = parts + s * stride;
        if (p[G + g] == 0) continue;  // an empty split
        const float w = std::exp(p[g] - M);
        Z += w * p[G + g];
        const float* acc = p + 2 * G + g * D;
        for (i64 d = 0; d < D; ++d) out[d] += w * acc[d];
      }
      for (i64 d = 0; d < D; ++d) out[d] /= Z;
    }
  }
}

namespace generic {
namespace {

constexpr i64 kBlock = 64, kLanes = 16;

inline float value(float x) { return x; }
inline float value(std::uint16_t bf16) { return bf16_value(bf16); }

// MAXPS: the second operand unless the first is greater (so a NaN gives the second).
inline float max(float a, float b) { return a > b ? a : b; }

// The halving trees over 16 lanes (attention.h).
float sum16(const float* lanes) {
  float x[kLanes];
  std::copy(lanes, lanes + kLanes, x);
  for (i64 h = kLanes / 2; h >= 1; h /= 2)
    for (i64 i = 0; i < h; ++i) x[i] = x[i] + x[i + h];
  return x[0];
}
float max16(const float* lanes) {
  float x[kLanes];
  std::copy(lanes, lanes + kLanes, x);
  for (i64 h = kLanes / 2; h >= 1; h /= 2)
    for (i64 i = 0; i < h; ++i) x[i] = max(x[i], x[i + h]);
  return x[0];
}

// exp(x) for x <= 0, attention.h's exp0.
float exp_nonpositive(float x) {
  x = max(x, -87.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = std::fma(-n, 0.693359375f, x);
  r = std::fma(-n, -2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = std::fma(p, r, c);
  p = std::fma(p, r * r, r + 1.0f);
  const float two_to_n = std::bit_cast<float>(static_cast<std::uint32_t>(static_cast<int>(n) + 127) << 23);
  return p * two_to_n;
}

template <typename C>
float score(const float* q, float scale, const C* k, i64 D) {
  float lanes[kLanes] = {};
  for (i64 d = 0; d < D; ++d) {
    const float x = q[d] * scale, y = value(k[d]);
    lanes[d % kLanes] = d < kLanes ? x * y : std::fma(x, y, lanes[d % kLanes]);
  }
  return sum16(lanes);
}

template <typename C>
void attend_over(const float* q, i64 G, i64 D, float scale, const C* k, const C* v, i64 l0, i64 l1, float* m,
                 float* z, float* acc) {
  for (i64 g = 0; g < G; ++g) {
    m[g] = -std::numeric_limits<float>::infinity();
    z[g] = 0;
    std::fill(acc + g * D, acc + (g + 1) * D, 0.0f);
  }
  float w[kBlock], lanes[kLanes];
  for (i64 b = l0; b < l1; b += kBlock) {
    const i64 n = std::min(kBlock, l1 - b);
    for (i64 g = 0; g < G; ++g) {
      float* a = acc + g * D;
      for (i64 i = 0; i < n; ++i) w[i] = score(q + g * D, scale, k + (b + i) * D, D);
      std::fill(lanes, lanes + kLanes, m[g]);
      for (i64 i = 0; i < n; ++i) lanes[i % kLanes] = max(lanes[i % kLanes], w[i]);
      const float new_max = max16(lanes);
      const float r = exp_nonpositive(m[g] - new_max);  // rescales what was summed under the old max
      m[g] = new_max;
      std::fill(lanes, lanes + kLanes, 0.0f);
      for (i64 i = 0; i < n; ++i) {
        w[i] = exp_nonpositive(w[i] - new_max);
        lanes[i % kLanes] += w[i];
      }
      z[g] = z[g] * r + sum16(lanes);
      for (i64 d = 0; d < D; ++d) a[d] *= r;
      for (i64 i = 0; i < n; ++i)
        for (i64 d = 0; d < D; ++d) a[d] = std::fma(w[i], value(v[(b + i) * D + d]), a[d]);
    }
  }
}

}  // namespace

void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const float* k, const float* v,
            std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc) {
  attend_over(q, G, D, scale, k, v, l0, l1, m, z, acc);
}

void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const std::uint16_t* k,
            const std::uint16_t* v, std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc) {
  attend_over(q, G, D, scale, k, v, l0, l1, m, z, acc);
}

}  // namespace generic
}  // namespace torchchat::kernels
