// The fp32-activation linears (float_linear, panel_linear, int8_linear) of every implementation this
// CPU can run, bit for bit against the portable one, which follows quant_linear.h's order of float
// operations; and the portable one against a double-precision product, so that the order is also
// a right one. Odd shapes (K not a multiple of 16, N not of 32 or 4), 1 to 128 tokens, fp32 and
// bf16 weights, output ranges split as threads split them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bf16.h"
#include "quant_linear.h"

namespace {

namespace tk = torchchat::kernels;
using i64 = std::int64_t;

struct Impl {
  const char* name;
  bool (*runs_here)();
  decltype(&tk::generic::float_linear) float_linear;
  decltype(&tk::generic::panel_linear) panel_linear;
  decltype(&tk::generic::int8_linear) int8_linear;
};

bool always() { return true; }
#if defined(__x86_64__)
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
#endif

const Impl kGeneric{"generic", always, tk::generic::float_linear, tk::generic::panel_linear, tk::generic::int8_linear};
const Impl kVector[] = {
#if defined(__x86_64__)
    {"avx2", has_avx2, tk::avx2::float_linear, tk::avx2::panel_linear, tk::avx2::int8_linear},
    {"avx512", has_avx512, tk::avx512::float_linear, tk::avx512::panel_linear, tk::avx512::int8_linear},
#elif defined(__aarch64__)
    // Advanced SIMD: every aarch64 Linux CPU (neon-dotprod runs these too)
    {"neon", always, tk::neon::float_linear, tk::neon::panel_linear, tk::neon::int8_linear},
#else
    kGeneric,
#endif
};

// Weights of one kind, with what each layout needs: row-major values, panels, bf16 bits, int8 codes.
enum class Kind { Fp32, Bf16, Int8 };

struct Problem {
  i64 M, N, K;
  Kind kind;
  std::vector<float> x;
  std::vector<float> w;             // fp32, or the exact values of the bf16 / int8 weights
  std::vector<std::uint16_t> bf16;  // [N, K]
  std::vector<std::int8_t> q;       // [N, K]
  std::vector<float> scale;         // [N]
  std::vector<float> panels;        // fp32 [ceil(N / 32), K, 32]
  std::vector<std::uint16_t> bf16_panels;

  const void* row_major() const {
    return kind == Kind::Bf16 ? static_cast<const void*>(bf16.data()) : static_cast<const void*>(w.data());
  }
};

Problem make_problem(i64 M, i64 N, i64 K, Kind kind, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  Problem p{M, N, K, kind, {}, {}, {}, {}, {}, {}, {}};
  p.x.resize(M * K);
  for (float& v : p.x) v = normal(rng);
  p.w.resize(N * K);
  for (float& v : p.w) v = normal(rng);
  if (kind == Kind::Bf16) {
    p.bf16.resize(N * K);
    for (i64 i = 0; i < N * K; ++i) p.w[i] = tk::bf16_value(p.bf16[i] = tk::bf16_bits(p.w[i]));
  }
  if (kind == Kind::Int8) {
    p.q.resize(N * K);
    p.scale.resize(N);
    for (i64 n = 0; n < N; ++n) {
      p.scale[n] = 0.01f * (1 + n % 7);
      for (i64 k = 0; k < K; ++k) {
        p.q[n * K + k] = static_cast<std::int8_t>(std::uniform_int_distribution<int>(-127, 127)(rng));
        p.w[n * K + k] = p.q[n * K + k];  // the scale comes after the sum (quant_linear.h)
      }
    }
  }
  const i64 padded = (N + tk::kPanel - 1) / tk::kPanel * tk::kPanel;
  p.panels.assign(padded * K, 0.f);
  p.bf16_panels.assign(padded * K, 0);
  for (i64 n = 0; n < N; ++n)
    for (i64 k = 0; k < K; ++k) {
      const i64 at = (n / tk::kPanel) * K * tk::kPanel + k * tk::kPanel + n % tk::kPanel;
      p.panels[at] = p.w[n * K + k];
      if (kind == Kind::Bf16) p.bf16_panels[at] = p.bf16[n * K + k];
    }
  return p;
}

// y [M, N] from impl, its columns computed in `parts` ranges (multiples of 32 for panels: the
// threads' split); the rest of y is filled with a marker that must survive outside [0, N).
enum class Layout { Rows, Panels };

std::vector<float> run(const Impl& impl, const Problem& p, Layout layout, int parts = 1) {
  std::vector<float> y(p.M * p.N, -12345.f);
  const i64 step = layout == Layout::Panels ? tk::kPanel : 1;
  const i64 units = (p.N + step - 1) / step;
  for (int part = 0; part < parts; ++part) {
    const i64 n0 = std::min(p.N, units * part / parts * step), n1 = std::min(p.N, units * (part + 1) / parts * step);
    if (n0 >= n1) continue;
    if (layout == Layout::Panels) {
      const void* w = p.kind == Kind::Bf16 ? static_cast<const void*>(p.bf16_panels.data())
                                           : static_cast<const void*>(p.panels.data());
      impl.panel_linear(p.x.data(), p.M, tk::PanelWeights{w, p.kind == Kind::Bf16, p.N, p.K}, y.data(), n0, n1);
    } else if (p.kind == Kind::Int8) {
      impl.int8_linear(p.x.data(), p.M, tk::Int8Weights{p.q.data(), p.scale.data(), p.N, p.K}, y.data(), n0, n1);
    } else {
      impl.float_linear(p.x.data(), p.M, tk::FloatWeights{p.row_major(), p.kind == Kind::Bf16, p.N, p.K}, y.data(),
                        n0, n1);
    }
  }
  return y;
}

void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", the portable code's " << want[i];
      return;
    }
  }
}

// The portable result within fp32 rounding of the exact product: 16 lanes of K / 16 terms each
// and a tree of depth 4 round at most K / 16 + 5 times along any path.
void expect_near_exact(const Problem& p, const std::vector<float>& y, const std::string& what) {
  const double eps = std::ldexp(1.0, -24), depth = static_cast<double>(p.K / 16 + 5);
  for (i64 m = 0; m < p.M; ++m)
    for (i64 n = 0; n < p.N; ++n) {
      double exact = 0, magnitude = 0;
      for (i64 k = 0; k < p.K; ++k) {
        exact += static_cast<double>(p.x[m * p.K + k]) * p.w[n * p.K + k];
        magnitude += std::fabs(static_cast<double>(p.x[m * p.K + k]) * p.w[n * p.K + k]);
      }
      const double scale = p.kind == Kind::Int8 ? p.scale[n] : 1.0;
      const double bound = (2 * depth * eps * magnitude + eps * std::fabs(exact)) * scale + 1e-30;
      if (std::fabs(y[m * p.N + n] - exact * scale) > bound) {
        ADD_FAILURE() << what << ": y[" << m << ", " << n << "] = " << y[m * p.N + n] << ", exactly " << exact * scale;
        return;
      }
    }
}

struct Shape {
  i64 M, N, K;
};
// Odd and even sizes: K below, at and past 16 and 64 (the tiles' steps), N past the row tiles
// (3, 4) and panels (16, 32); SmolLM2's 576 and 1536.
const Shape kShapes[] = {{1, 1, 1},    {1, 7, 15},   {3, 5, 17},    {1, 37, 96},  {3, 70, 576},  {13, 33, 577},
                         {1, 4, 1536}, {13, 65, 63}, {128, 45, 40}, {128, 9, 96}, {2, 130, 160}, {7, 100, 33}};

std::string describe(const Shape& s, Kind kind, Layout layout) {
  const char* kinds[] = {"fp32", "bf16", "int8"};
  return std::string(kinds[static_cast<int>(kind)]) + (layout == Layout::Panels ? " panels" : " rows") + " M=" +
         std::to_string(s.M) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K);
}

void check_every_shape(Kind kind, Layout layout) {
  unsigned seed = 1;
  for (const Shape& s : kShapes) {
    const Problem p = make_problem(s.M, s.N, s.K, kind, seed++);
    const std::string what = describe(s, kind, layout);
    const std::vector<float> want = run(kGeneric, p, layout);
    expect_near_exact(p, want, "generic " + what);
    for (const Impl& impl : kVector) {
      if (!impl.runs_here()) continue;
      expect_same_bits(run(impl, p, layout), want, std::string(impl.name) + " " + what);
      expect_same_bits(run(impl, p, layout, 3), want, std::string(impl.name) + " in 3 ranges, " + what);
    }
  }
}

TEST(LinearIsa, Fp32Rows) { check_every_shape(Kind::Fp32, Layout::Rows); }
TEST(LinearIsa, Bf16Rows) { check_every_shape(Kind::Bf16, Layout::Rows); }
TEST(LinearIsa, Int8Rows) { check_every_shape(Kind::Int8, Layout::Rows); }
TEST(LinearIsa, Fp32Panels) { check_every_shape(Kind::Fp32, Layout::Panels); }
TEST(LinearIsa, Bf16Panels) { check_every_shape(Kind::Bf16, Layout::Panels); }

// Each implementation on its own (skipped where the CPU lacks it), so a run says which ran.
void check_one(const char* name) {
  for (const Impl& impl : kVector) {
    if (std::string(impl.name) != name) continue;
    if (!impl.runs_here()) GTEST_SKIP() << "this CPU cannot run " << name;
    for (Kind kind : {Kind::Fp32, Kind::Bf16, Kind::Int8}) {
      const Problem p = make_problem(5, 45, 200, kind, 99);
      expect_same_bits(run(impl, p, Layout::Rows), run(kGeneric, p, Layout::Rows), name);
      if (kind != Kind::Int8)
        expect_same_bits(run(impl, p, Layout::Panels), run(kGeneric, p, Layout::Panels), name);
    }
  }
}
#if defined(__x86_64__)
TEST(LinearIsa, Avx2MatchesPortable) { check_one("avx2"); }
TEST(LinearIsa, Avx512MatchesPortable) { check_one("avx512"); }
#elif defined(__aarch64__)
TEST(LinearIsa, NeonMatchesPortable) { check_one("neon"); }
#endif

// A token's outputs do not depend on the tokens beside it (prefill = decode).
TEST(LinearIsa, ATokenAloneGetsTheSameBitsAsInAPrompt) {
  for (Kind kind : {Kind::Fp32, Kind::Bf16, Kind::Int8}) {
    const Problem p = make_problem(13, 70, 100, kind, 7);
    std::vector<const Impl*> impls{&kGeneric};
    for (const Impl& impl : kVector) impls.push_back(&impl);
    for (const Impl* impl : impls) {
      if (!impl->runs_here()) continue;
      for (Layout layout : {Layout::Rows, Layout::Panels}) {
        if (kind == Kind::Int8 && layout == Layout::Panels) continue;
        const std::vector<float> all = run(*impl, p, layout);
        for (i64 m = 0; m < p.M; ++m) {
          Problem one = p;
          one.M = 1;
          one.x.assign(p.x.begin() + m * p.K, p.x.begin() + (m + 1) * p.K);
          const std::vector<float> alone = run(*impl, one, layout);
          expect_same_bits(alone, std::vector<float>(all.begin() + m * p.N, all.begin() + (m + 1) * p.N),
                           std::string(impl->name) + " token " + std::to_string(m));
        }
      }
    }
  }
}

// Products that round to -0 leave lanes at -0; the zero padding of the last block turns the lanes
// past K to +0 (fma(0, 0, -0) = +0), and the tree decides the sign of the sum: every
// implementation must give the same zero.
TEST(LinearIsa, SignedZerosFollowTheOrder) {
  for (i64 K : {i64{1}, i64{16}, i64{17}, i64{40}}) {
    Problem p = make_problem(2, 5, K, Kind::Fp32, 3);
    for (float& v : p.x) v = -1e-30f;
    for (i64 i = 0; i < static_cast<i64>(p.w.size()); ++i) p.w[i] = p.panels[i] = 0;
    for (i64 n = 0; n < p.N; ++n)
      for (i64 k = 0; k < K; ++k)
        p.panels[k * tk::kPanel + n] = p.w[n * K + k] = (k + n) % 3 == 0 ? 0.f : 1e-30f;
    const std::vector<float> rows = run(kGeneric, p, Layout::Rows), panels = run(kGeneric, p, Layout::Panels);
    EXPECT_TRUE(std::signbit(panels[1]) && panels[1] == 0);  // fma(-1e-30, 1e-30, +0) = -0
    for (const Impl& impl : kVector) {
      if (!impl.runs_here()) continue;
      expect_same_bits(run(impl, p, Layout::Rows), rows, std::string(impl.name) + " rows K=" + std::to_string(K));
      expect_same_bits(run(impl, p, Layout::Panels), panels, std::string(impl.name) + " panels K=" + std::to_string(K));
    }
  }
}

}  // namespace
