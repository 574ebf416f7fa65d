// The int8-activation kernels (quantize_activations, int4_a8_linear, int8_a8_linear) of every
// implementation this CPU runs against the portable ones, bit for bit (memcmp): the vector code
// must do the generic code's float operations in its order. What the CPU lacks is skipped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "quant_linear.h"

#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

namespace {

namespace k = torchchat::kernels;
using i64 = std::int64_t;

using QuantizeFn = decltype(&k::generic::quantize_activations);
using LinearFn = decltype(&k::generic::int4_a8_linear);

struct Impl {
  const char* name;
  bool supported;
  QuantizeFn quantize;
  LinearFn int4;
  LinearFn int8;
};

void PrintTo(const Impl& impl, std::ostream* os) { *os << impl.name; }

#if defined(__x86_64__)
bool cpu(const char* feature) {
  // __builtin_cpu_supports takes string literals only.
  const std::string f = feature;
  if (f == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (f == "avxvnni") return __builtin_cpu_supports("avxvnni");
  if (f == "avx512vnni")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return false;
}

const Impl kImpls[] = {
      {"avx2", cpu("avx2"), &k::avx2::quantize_activations, &k::avx2::int4_a8_linear, &k::avx2::int8_a8_linear},
      {"avx2vnni", cpu("avx2") && cpu("avxvnni"), &k::avx2::quantize_activations, &k::avx2vnni::int4_a8_linear,
       &k::avx2vnni::int8_a8_linear},
      {"avx512vnni", cpu("avx2") && cpu("avx512vnni"), &k::avx512vnni::quantize_activations,
       &k::avx512vnni::int4_a8_linear, &k::avx512vnni::int8_a8_linear},
};
#elif defined(__aarch64__)
const Impl kImpls[] = {
    {"neon", true, &k::neon::quantize_activations, &k::neon::int4_a8_linear, &k::neon::int8_a8_linear},
    {"neon_dotprod", (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0, &k::neon::quantize_activations,
     &k::neondotprod::int4_a8_linear, &k::neondotprod::int8_a8_linear},
};
#else
const Impl kImpls[] = {{"generic", true, &k::generic::quantize_activations, &k::generic::int4_a8_linear,
                        &k::generic::int8_a8_linear}};
#endif

// Activations for M tokens of K: per block of 32 one of several kinds, the awkward cases included.
std::vector<float> activations(i64 M, i64 K, std::mt19937& rng) {
  std::vector<float> x(M * K);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int> kind_of(0, 9), code(-126, 126), low(-128, 127);
  std::uniform_real_distribution<float> exponent(-40.f, 40.f);
  for (i64 b = 0; b < M * K / 32; ++b) {
    float* xb = x.data() + 32 * b;
    const int kind = kind_of(rng);
    // A power of two scale makes 127 * s exact, so s = amax / 127 is s itself and x / s lands on
    // the codes (and halfway between them) exactly.
    const float unit = std::ldexp(1.f, std::uniform_int_distribution<int>(-20, 20)(rng));
    for (int i = 0; i < 32; ++i) {
      float v = 0.f;
      switch (kind) {
        case 0: v = 0.f; break;                                                      // all zero
        case 1: v = normal(rng) * std::pow(10.f, exponent(rng) / 10.f); break;      // wide range
        case 2: v = (i % 3 == 0) ? 0.f : normal(rng); break;                         // some zeros
        case 3: v = normal(rng) * 1e30f; break;                                      // huge
        case 4: v = normal(rng) * 1e-31f; break;                                     // tiny: one slice
        case 5: v = (static_cast<float>(code(rng)) + 0.5f) * unit; break;            // ties of slice 0
        case 6:  // ties of slice 1 and 2, and carries
          v = (static_cast<float>(code(rng)) + (static_cast<float>(low(rng)) + 0.5f) / 256.f) * unit;
          if (i % 2) v = (static_cast<float>(code(rng)) + 0.5f + (static_cast<float>(low(rng)) + 0.5f) / 65536.f) * unit;
          break;
        case 7: v = std::nextafter((static_cast<float>(code(rng)) + 0.5f) * unit, i % 2 ? 1e30f : -1e30f); break;
        case 8: v = normal(rng) * 1e-38f; break;                                     // subnormals
        default: v = normal(rng); break;
      }
      xb[i] = v;
    }
    if (kind == 5 || kind == 6 || kind == 7) xb[kind] = 127.f * unit;  // fixes amax, so s = unit
  }
  return x;
}

// Panels for N rows of K: random codes (int4 nibbles; int8 stored q + 128 with q in [-127, 127],
// what torchchat/kernels.py's quantize_int8 produces), fp16 (scale, min) or fp32 scales; the rows
// past N zero, as packing pads them.
std::vector<std::uint8_t> panels(int bits, i64 N, i64 K, i64 G, std::mt19937& rng) {
  const i64 panels = (N + k::kA8Panel - 1) / k::kA8Panel, groups = K / G, block_bytes = 64 * bits;
  const i64 group_bytes = G / 32 * block_bytes + 64;
  std::vector<std::uint8_t> w(panels * groups * group_bytes);
  std::uniform_int_distribution<int> byte(0, 255), stored8(1, 255), half_exponent(8, 20), mantissa(0, 1023);
  std::uniform_real_distribution<float> scale(0.001f, 2.f);
  for (i64 p = 0; p < panels; ++p)
    for (i64 g = 0; g < groups; ++g) {
      std::uint8_t* group = w.data() + (p * groups + g) * group_bytes;
      for (i64 i = 0; i < G / 32 * block_bytes; ++i) {
        const i64 row = 16 * p + (i % 64) / 4;
        group[i] = row >= N ? (bits == 8 ? 128 : 0) : static_cast<std::uint8_t>(bits == 8 ? stored8(rng) : byte(rng));
      }
      std::uint8_t* trailer = group + G / 32 * block_bytes;
      for (int l = 0; l < 16; ++l) {
        if (bits == 4) {
          for (int part = 0; part < 2; ++part) {  // scale positive, min of either sign
            const int sign = part == 1 && byte(rng) % 2 ? 0x8000 : 0;
            const auto h = static_cast<std::uint16_t>(sign | half_exponent(rng) << 10 | mantissa(rng));
            std::memcpy(trailer + 32 * part + 2 * l, &h, 2);
          }
        } else {
          const float s = scale(rng);
          std::memcpy(trailer + 4 * l, &s, 4);
        }
      }
    }
  return w;
}

struct Quantized {
  std::vector<std::int8_t> q;
  std::vector<float> scales;  // scale, then scaled_sum
  std::vector<std::int32_t> sums;
  k::Int8Activations view;
};

Quantized quantize(QuantizeFn fn, const std::vector<float>& x, i64 M, i64 K, int slices) {
  Quantized a;
  const i64 blocks = M * (K / 32);
  a.q.assign(slices * M * K, 99);
  a.scales.assign(2 * blocks, -1.f);
  a.sums.assign(slices * blocks, -99);
  fn(x.data(), M, K, slices, a.q.data(), a.scales.data(), a.scales.data() + blocks, a.sums.data());
  a.view = {a.q.data(), a.scales.data(), a.scales.data() + blocks, a.sums.data(), M, K, slices};
  return a;
}

template <typename T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// The first element where two float outputs differ, for the failure message.
std::string first_difference(const std::vector<float>& a, const std::vector<float>& b) {
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0)
      return "at " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " + std::to_string(b[i]);
  return "none";
}

constexpr i64 kTokenCounts[] = {1, 2, 7, 9, 128};

// One implementation per instance; what the CPU lacks is skipped.
class A8Isa : public testing::TestWithParam<Impl> {
 protected:
  void SetUp() override {
    if (!GetParam().supported) GTEST_SKIP() << "this CPU lacks " << GetParam().name;
  }
};

TEST_P(A8Isa, QuantizeActivationsMatchesGeneric) {
  const Impl& impl = GetParam();
  std::mt19937 rng(7);
  for (i64 M : kTokenCounts)
    for (i64 K : {32, 96, 576})
      for (int slices : {1, 3}) {
        SCOPED_TRACE(std::string(impl.name) + " M " + std::to_string(M) + " K " + std::to_string(K) + " slices " +
                     std::to_string(slices));
        const std::vector<float> x = activations(M, K, rng);
        const Quantized want = quantize(&k::generic::quantize_activations, x, M, K, slices);
        const Quantized got = quantize(impl.quantize, x, M, K, slices);
        EXPECT_TRUE(same_bytes(got.q, want.q));
        EXPECT_TRUE(same_bytes(got.scales, want.scales));
        EXPECT_TRUE(same_bytes(got.sums, want.sums));
      }
}

// The reference rounds halfway cases to even and carries as quant_linear.h says, so the ties that
// activations() builds do reach the vector code's roundings.
TEST(A8Generic, QuantizeRoundsTiesToEven) {
  std::vector<float> x(32, 0.f);
  x[0] = 127.f;  // s = 1
  x[1] = 2.5f;
  x[2] = 3.5f;
  x[3] = -2.5f;
  x[4] = 1.f + 0.5f / 256.f;  // slice 1: 0.5 -> 0; slice 2: 128 -> 127 (clamped)
  std::vector<std::int8_t> q(3 * 32);
  float scales[2];
  std::int32_t sums[3];
  k::generic::quantize_activations(x.data(), 1, 32, 1, q.data(), scales, scales + 1, sums);
  EXPECT_EQ(scales[0], 1.f);
  EXPECT_EQ(q[1], 2);
  EXPECT_EQ(q[2], 4);
  EXPECT_EQ(q[3], -2);
  k::generic::quantize_activations(x.data(), 1, 32, 3, q.data(), scales, scales + 1, sums);
  EXPECT_EQ(q[1], 3);  // 2 and a residual of 128 / 256: carried into slice 0
  EXPECT_EQ(q[32 + 1], -128);
  EXPECT_EQ(q[4], 1);
  EXPECT_EQ(q[32 + 4], 0);
  EXPECT_EQ(q[64 + 4], 127);
}

struct Shape {
  i64 N, K, G;
};

void expect_linear_matches(const Impl& impl, int bits, const std::vector<Shape>& shapes) {
  std::mt19937 rng(bits);
  const LinearFn fn = bits == 4 ? impl.int4 : impl.int8;
  const LinearFn reference = bits == 4 ? &k::generic::int4_a8_linear : &k::generic::int8_a8_linear;
  for (const Shape& shape : shapes)
    for (i64 M : kTokenCounts)
      for (int slices : {1, 3}) {
        const std::vector<std::uint8_t> packed = panels(bits, shape.N, shape.K, shape.G, rng);
        const k::A8PanelWeights w{packed.data(), shape.N, shape.K, shape.G};
        const std::vector<float> x = activations(M, shape.K, rng);
        const Quantized a = quantize(&k::generic::quantize_activations, x, M, shape.K, slices);
        // The whole N, and a sub-range of panels (the last one partial when N is no multiple of 16).
        const i64 last = (shape.N - 1) / k::kA8Panel * k::kA8Panel;
        for (auto [n0, n1] : {std::pair<i64, i64>{0, shape.N}, {last, shape.N}, {0, last > 0 ? last : shape.N},
                              {last > 16 ? 16 : 0, shape.N}}) {
          SCOPED_TRACE(std::string(impl.name) + " int" + std::to_string(bits) + " N " + std::to_string(shape.N) +
                       " K " + std::to_string(shape.K) + " G " + std::to_string(shape.G) + " M " +
                       std::to_string(M) + " slices " + std::to_string(slices) + " n " + std::to_string(n0) +
                       ".." + std::to_string(n1));
          std::vector<float> want(M * shape.N, -7.f), got(M * shape.N, -7.f);
          reference(a.view, w, want.data(), n0, n1);
          fn(a.view, w, got.data(), n0, n1);
          EXPECT_TRUE(same_bytes(got, want)) << first_difference(got, want);
        }
      }
}

TEST_P(A8Isa, Int4MatchesGeneric) {
  expect_linear_matches(GetParam(), 4, {{16, 32, 32}, {40, 256, 32}, {33, 256, 64}, {72, 256, 128}, {7, 128, 128}});
}

TEST_P(A8Isa, Int8MatchesGeneric) {
  expect_linear_matches(GetParam(), 8, {{16, 32, 32}, {40, 256, 32}, {33, 256, 64}, {72, 256, 128}, {24, 96, 96},
                            {9, 160, 160}});
}

// The integer dot products' extremes, built directly: activation codes -127 / 127 in slice 0 and
// -128 in the lower ones against the largest weight codes (int4 15, int8 +-127): no int16 pair or
// sum may saturate.
TEST_P(A8Isa, ExtremeCodesMatchGeneric) {
  const Impl& impl = GetParam();
  const i64 N = 32, K = 128, M = 5, blocks = M * K / 32;
  for (int bits : {4, 8}) {
    std::mt19937 rng(11);
    std::vector<std::uint8_t> packed = panels(bits, N, K, 32, rng);
    const i64 block_bytes = 64 * bits, group_bytes = block_bytes + 64;
    for (i64 g = 0; g < (N / 16) * (K / 32); ++g)
      for (i64 i = 0; i < block_bytes; ++i) {
        const bool negative = (g + i / 64) % 2;
        packed[g * group_bytes + i] = bits == 4 ? 0xff : negative ? 1 : 255;  // int8: q = -127 or 127
      }
    for (int slices : {1, 3}) {
      std::vector<std::int8_t> q(slices * M * K);
      std::vector<std::int32_t> sums(slices * blocks, 0);
      std::vector<float> scales(2 * blocks);
      for (int j = 0; j < slices; ++j)
        for (i64 i = 0; i < M * K; ++i) {
          const int token = static_cast<int>(i / K);
          const std::int8_t v = j == 0 ? (token % 2 ? 127 : -127) : token == 3 ? 127 : -128;
          q[j * M * K + i] = v;
          sums[j * blocks + i / 32] += v;
        }
      for (i64 b = 0; b < blocks; ++b) {
        scales[b] = 0.01f * static_cast<float>(b + 1);
        scales[blocks + b] = scales[b] * k::slice_sum(sums.data() + b, blocks, slices);
      }
      const k::Int8Activations a{q.data(), scales.data(), scales.data() + blocks, sums.data(), M, K, slices};
      const k::A8PanelWeights w{packed.data(), N, K, 32};
      std::vector<float> want(M * N), got(M * N);
      (bits == 4 ? k::generic::int4_a8_linear : k::generic::int8_a8_linear)(a, w, want.data(), 0, N);
      SCOPED_TRACE(std::string(impl.name) + " int" + std::to_string(bits) + " slices " + std::to_string(slices));
      std::fill(got.begin(), got.end(), -7.f);
      (bits == 4 ? impl.int4 : impl.int8)(a, w, got.data(), 0, N);
      EXPECT_TRUE(same_bytes(got, want)) << first_difference(got, want);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Implementations, A8Isa, testing::ValuesIn(kImpls),
                         [](const testing::TestParamInfo<Impl>& info) { return std::string(info.param.name); });

}  // namespace
