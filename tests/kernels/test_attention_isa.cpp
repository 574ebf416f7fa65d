// Attention (attention.h): every implementation this CPU can run equals the portable one bit for
// bit, for fp32 and bf16 caches; the portable one is softmax attention to fp32 rounding (a
// double-precision reference); and the dispatched operator, tasks, splits and merge included,
// equals the portable one composed by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attention.h"
#include "bf16.h"

namespace {

using namespace torchchat::kernels;
using i64 = std::int64_t;

#if defined(__x86_64__)
bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
#endif

// One head's query rows and one KV head's cache of S positions, fp32 and as bf16 bits; k_exact
// and v_exact hold what the kernels read (the bf16 values widened, when bf16).
struct Inputs {
  i64 G, D, S;
  bool bf16;
  std::vector<float> q, k_exact, v_exact;
  std::vector<std::uint16_t> k_bits, v_bits;
};

Inputs make_inputs(i64 G, i64 D, i64 S, bool bf16, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  Inputs in{G, D, S, bf16, {}, {}, {}, {}, {}};
  for (i64 i = 0; i < G * D; ++i) in.q.push_back(normal(rng));
  for (i64 i = 0; i < S * D; ++i) {
    float k = normal(rng), v = normal(rng);
    if (bf16) {
      in.k_bits.push_back(bf16_bits(k));
      in.v_bits.push_back(bf16_bits(v));
      k = bf16_value(in.k_bits.back());
      v = bf16_value(in.v_bits.back());
    }
    in.k_exact.push_back(k);
    in.v_exact.push_back(v);
  }
  return in;
}

struct Result {
  std::vector<float> m, z, acc;
};

using AttendF32 = void (*)(const float*, i64, i64, float, const float*, const float*, i64, i64, float*, float*,
                           float*);
using AttendBf16 = void (*)(const float*, i64, i64, float, const std::uint16_t*, const std::uint16_t*, i64, i64,
                            float*, float*, float*);
struct Implementation {
  AttendF32 fp32;
  AttendBf16 bf16;
};
const Implementation kGeneric{generic::attend, generic::attend};
#if defined(__x86_64__)
const Implementation kAvx2{avx2::attend, avx2::attend};
const Implementation kAvx512{avx512::attend, avx512::attend};
#elif defined(__aarch64__)
const Implementation kNeon{neon::attend, neon::attend};  // Advanced SIMD: every aarch64 Linux CPU
#endif

float scale_for(i64 D) { return 1.0f / std::sqrt(static_cast<float>(D)); }

Result run(const Implementation& impl, const Inputs& in, i64 l0, i64 l1) {
  const float nan = std::numeric_limits<float>::quiet_NaN();  // every output must be written
  Result r{std::vector<float>(in.G, nan), std::vector<float>(in.G, nan), std::vector<float>(in.G * in.D, nan)};
  if (in.bf16)
    impl.bf16(in.q.data(), in.G, in.D, scale_for(in.D), in.k_bits.data(), in.v_bits.data(), l0, l1, r.m.data(),
              r.z.data(), r.acc.data());
  else
    impl.fp32(in.q.data(), in.G, in.D, scale_for(in.D), in.k_exact.data(), in.v_exact.data(), l0, l1, r.m.data(),
              r.z.data(), r.acc.data());
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::string hex(float x) {
  char text[32];
  std::snprintf(text, sizeof text, "%a", static_cast<double>(x));
  return text;
}

// The first index where a and b differ in bits, for the failure message.
std::string first_difference(const char* what, const std::vector<float>& a, const std::vector<float>& b) {
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0)
      return std::string(what) + "[" + std::to_string(i) + "]: " + hex(a[i]) + " vs " + hex(b[i]);
  return "";
}

struct Range {
  i64 l0, l1;
  float magnitude;
};
// One position, the first and later ones; exactly a block; a range of two blocks (of 64 from
// l0 > 0) and a shorter last one; an empty range (a split past a token's positions); and scores
// far apart, whose weights fall below the -87 clamp, over two blocks.
const Range kRanges[] = {{0, 1, 1.0f},     {5, 6, 1.0f},      {0, 64, 1.0f},  {37, 137, 1.0f},
                         {10, 10, 1.0f}, {0, 100, 40.0f}, {60, 90, 40.0f}};
constexpr i64 kPositions = 137;

// The inputs with q scaled by `magnitude`, which makes scores of about that size: 40 puts most of a
// block's weights below exp(-87), the clamp.
Inputs scaled(const Inputs& in, float magnitude) {
  Inputs out = in;
  for (float& x : out.q) x *= magnitude;
  return out;
}

class EveryLevel : public testing::TestWithParam<std::string> {};

TEST_P(EveryLevel, EqualsGenericBitForBit) {
  const std::string level = GetParam();
#if defined(__x86_64__)
  if (level == "avx2" && !has_avx2()) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  if (level == "avx512" && !has_avx512()) GTEST_SKIP() << "this CPU lacks AVX-512 F/BW/VL";
  const Implementation& impl = level == "avx2" ? kAvx2 : kAvx512;
#elif defined(__aarch64__)
  const Implementation& impl = kNeon;
#else
  const Implementation& impl = kGeneric;
#endif
  unsigned seed = 1;
  for (const i64 D : {16, 32, 64, 80, 128})
    for (const i64 G : {1, 3, 4, 9})
      for (const bool bf16 : {false, true}) {
        const Inputs unscaled = make_inputs(G, D, kPositions, bf16, seed++);
        for (const Range& range : kRanges) {
          const Inputs in = scaled(unscaled, range.magnitude);
          const Result want = run(kGeneric, in, range.l0, range.l1), got = run(impl, in, range.l0, range.l1);
          const std::string where = level + " D=" + std::to_string(D) + " G=" + std::to_string(G) +
                                    (bf16 ? " bf16" : " fp32") + " positions [" + std::to_string(range.l0) + ", " +
                                    std::to_string(range.l1) + ") magnitude " + std::to_string(range.magnitude);
          ASSERT_TRUE(same_bits(got.m, want.m)) << where << ": " << first_difference("m", got.m, want.m);
          ASSERT_TRUE(same_bits(got.z, want.z)) << where << ": " << first_difference("z", got.z, want.z);
          ASSERT_TRUE(same_bits(got.acc, want.acc)) << where << ": " << first_difference("acc", got.acc, want.acc);
        }
      }
}

#if defined(__x86_64__)
INSTANTIATE_TEST_SUITE_P(Attention, EveryLevel, testing::Values("avx2", "avx512"),
#elif defined(__aarch64__)
INSTANTIATE_TEST_SUITE_P(Attention, EveryLevel, testing::Values("neon"),
#else
INSTANTIATE_TEST_SUITE_P(Attention, EveryLevel, testing::Values("generic"),
#endif
                         [](const testing::TestParamInfo<std::string>& info) { return info.param; });

// The portable code against the definition in double precision: scores q . k * scale, weights
// exp(score - max), out = sum weights * v / sum weights; m the max score, z the sum of weights
// under m. D = 24 is one the vector code leaves to it.
TEST(Attention, GenericIsSoftmaxAttentionToFp32Rounding) {
  unsigned seed = 100;
  for (const i64 D : {24, 64, 128})
    for (const bool bf16 : {false, true}) {
      const i64 G = 3;
      const Inputs unscaled = make_inputs(G, D, kPositions, bf16, seed++);
      for (const Range& range : kRanges) {
        const Inputs in = scaled(unscaled, range.magnitude);
        const Result got = run(kGeneric, in, range.l0, range.l1);
        const std::string where = "D=" + std::to_string(D) + (bf16 ? " bf16" : " fp32") + " positions [" +
                                  std::to_string(range.l0) + ", " + std::to_string(range.l1) + ") magnitude " +
                                  std::to_string(range.magnitude);
        for (i64 g = 0; g < G; ++g) {
          if (range.l0 == range.l1) {
            EXPECT_EQ(got.m[g], -std::numeric_limits<float>::infinity()) << where;
            EXPECT_EQ(got.z[g], 0.0f) << where;
            for (i64 d = 0; d < D; ++d) EXPECT_EQ(got.acc[g * D + d], 0.0f) << where;
            continue;
          }
          std::vector<double> scores;
          for (i64 l = range.l0; l < range.l1; ++l) {
            double dot = 0;
            for (i64 d = 0; d < D; ++d) dot += double(in.q[g * D + d]) * in.k_exact[l * D + d];
            scores.push_back(dot * scale_for(D));
          }
          const double max = *std::max_element(scores.begin(), scores.end());
          EXPECT_NEAR(got.m[g], max, 1e-6 * std::abs(max) + 1e-6) << where;
          // z and acc are under the kernel's m: the weights exp(score - m)
          double z = 0;
          std::vector<double> out(D, 0.0);
          for (i64 i = 0; i < range.l1 - range.l0; ++i) {
            const double w = std::exp(scores[i] - got.m[g]);
            z += w;
            for (i64 d = 0; d < D; ++d) out[d] += w * in.v_exact[(range.l0 + i) * D + d];
          }
          EXPECT_NEAR(got.z[g] / z, 1.0, 2e-5) << where;
          for (i64 d = 0; d < D; ++d) EXPECT_NEAR(got.acc[g * D + d] / got.z[g], out[d] / z, 2e-5) << where;
        }
      }
    }
}

// The operator (attention + attention_merge), on the implementation the CPU gets, against
// generic::attend composed by hand: out = acc / z per (token, head), and with splits the
// portable partials merged by the same attention_merge. T tokens at positions start.., H query
// heads on Hkv KV heads, the caches views of longer ones (head stride past S * D).
void check_operator(i64 T, i64 H, i64 Hkv, i64 D, i64 S, i64 start, i64 splits, bool bf16) {
  const Inputs in = make_inputs(T * H, D, Hkv * (S + 3), bf16, static_cast<unsigned>(T * 1000 + D + splits));
  const i64 G = H / Hkv, head_stride = (S + 3) * D;
  std::vector<std::int64_t> pos(T);
  for (i64 t = 0; t < T; ++t) pos[t] = start + t;
  const void* k = bf16 ? static_cast<const void*>(in.k_bits.data()) : in.k_exact.data();
  const void* v = bf16 ? static_cast<const void*>(in.v_bits.data()) : in.v_exact.data();
  std::vector<float> got(T * H * D), want(T * H * D);
  AttentionArgs a = attention_args(in.q.data(), k, v, bf16, pos.data(), got.data(), T, H, Hkv, D, head_stride, 1);
  a.splits = splits;
  std::vector<float> partials(attention_partials_size(a)), want_partials(partials.size());
  a.partials = partials.data();
  attention(a, 0, attention_tasks(a));
  if (splits > 1) attention_merge(a, 0, T * Hkv);

  for (i64 t = 0; t < T; ++t)
    for (i64 h = 0; h < Hkv; ++h) {
      const i64 n = pos[t] + 1, chunk = (n + splits - 1) / splits;
      const float* q = in.q.data() + (t * H + h * G) * D;
      for (i64 s = 0; s < splits; ++s) {
        const i64 l0 = std::min(n, s * chunk), l1 = std::min(n, l0 + chunk);
        std::vector<float> m(G), z(G), acc(G * D);
        if (bf16)
          generic::attend(q, G, D, a.scale, in.k_bits.data() + h * head_stride, in.v_bits.data() + h * head_stride,
                          l0, l1, m.data(), z.data(), acc.data());
        else
          generic::attend(q, G, D, a.scale, in.k_exact.data() + h * head_stride, in.v_exact.data() + h * head_stride,
                          l0, l1, m.data(), z.data(), acc.data());
        if (splits == 1) {
          for (i64 g = 0; g < G; ++g)
            for (i64 d = 0; d < D; ++d) want[(t * H + h * G + g) * D + d] = acc[g * D + d] / z[g];
        } else {
          float* p = want_partials.data() + ((t * Hkv + h) * splits + s) * G * (D + 2);
          std::copy(m.begin(), m.end(), p);
          std::copy(z.begin(), z.end(), p + G);
          std::copy(acc.begin(), acc.end(), p + 2 * G);
        }
      }
    }
  if (splits > 1) {
    AttentionArgs b = a;
    b.out = want.data();
    b.partials = want_partials.data();
    attention_merge(b, 0, T * Hkv);
  }
  EXPECT_TRUE(same_bits(got, want)) << "T=" << T << " H=" << H << " Hkv=" << Hkv << " D=" << D << " splits=" << splits
                                    << (bf16 ? " bf16" : " fp32") << ": " << first_difference("out", got, want);
}

TEST(Attention, OperatorEqualsGenericComposedByHand) {
  for (const bool bf16 : {false, true}) {
    for (const i64 D : {24, 64, 128}) {
      check_operator(3, 9, 3, D, 100, 62, 1, bf16);  // a prompt across a block boundary
      check_operator(1, 9, 3, D, 100, 80, 2, bf16);  // decode split in two
      check_operator(1, 8, 2, D, 100, 99, 3, bf16);
    }
    check_operator(3, 4, 4, 32, 70, 0, 1, bf16);  // plain multi-head
    check_operator(2, 16, 1, 16, 70, 66, 1, bf16);  // 16 heads on one
  }
}

}  // namespace
