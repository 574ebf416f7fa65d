// Choosing the implementation at run time (quant_linear.h): the best level the CPU has, or the
// one TORCHCHAT_KERNELS names, decided once.
#include "quant_linear.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace torchchat::kernels {
namespace {

#if defined(__x86_64__)
enum class Level { Generic, Avx2, Avx2Vnni, Avx512, Avx512Vnni };
constexpr const char* kNames[] = {"generic", "avx2", "avx2-vnni", "avx512", "avx512-vnni"};

// __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0), as it must.
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
bool supported(Level level) {
  switch (level) {
    case Level::Generic: return true;
    case Level::Avx2: return has_avx2();
    case Level::Avx2Vnni: return has_avx2() && __builtin_cpu_supports("avxvnni");
    case Level::Avx512: return has_avx512();
    case Level::Avx512Vnni: return has_avx512() && __builtin_cpu_supports("avx512vnni");
  }
  return false;
}
constexpr const char* kNeeds[] = {"", "AVX2, FMA and F16C", "AVX2, FMA, F16C and AVX-VNNI",
                                  "AVX-512 F/BW/VL, FMA and F16C", "AVX-512 F/BW/VL/VNNI, FMA and F16C"};

constexpr const char* kExpected = "generic, avx2, avx2-vnni, avx512 or avx512-vnni";
constexpr const char* kFallbackNotice = "this CPU lacks AVX2/FMA/F16C";

Level best() {
  for (Level level : {Level::Avx512Vnni, Level::Avx512, Level::Avx2Vnni, Level::Avx2})
    if (supported(level)) return level;
  return Level::Generic;
}
#elif defined(__aarch64__)
// Advanced SIMD (NEON) is part of every aarch64 Linux CPU, the dot-product extension (sdot,
// Armv8.2's optional ASIMDDP: Cortex-A55/A75 and later, Apple M1) is not; the kernel says which
// through the auxiliary vector.
enum class Level { Generic, Neon, NeonDotprod };
constexpr const char* kNames[] = {"generic", "neon", "neon-dotprod"};
#if defined(__linux__)  // Linux and Android
bool has_neon() { return (getauxval(AT_HWCAP) & HWCAP_ASIMD) && (getauxval(AT_HWCAP) & HWCAP_FP); }
bool has_dotprod() { return getauxval(AT_HWCAP) & HWCAP_ASIMDDP; }
#elif defined(__APPLE__)
bool has_neon() { return true; }
bool has_dotprod() {
  int value = 0;
  size_t size = sizeof value;
  return sysctlbyname("hw.optional.arm.FEAT_DotProd", &value, &size, nullptr, 0) == 0 && value == 1;
}
#else
bool has_neon() { return true; }  // part of the aarch64 base architecture
bool has_dotprod() { return false; }
#endif
bool supported(Level level) {
  switch (level) {
    case Level::Generic: return true;
    case Level::Neon: return has_neon();
    case Level::NeonDotprod: return has_neon() && has_dotprod();
  }
  return false;
}
constexpr const char* kNeeds[] = {"", "Advanced SIMD (asimd)", "the dot-product extension (asimddp)"};
constexpr const char* kExpected = "generic, neon or neon-dotprod";
constexpr const char* kFallbackNotice = "this CPU lacks Advanced SIMD";

Level best() {
  for (Level level : {Level::NeonDotprod, Level::Neon})
    if (supported(level)) return level;
  return Level::Generic;
}
#else
enum class Level { Generic };
constexpr const char* kNames[] = {"generic"};
bool supported(Level) { return true; }
constexpr const char* kNeeds[] = {""};
constexpr const char* kExpected = "generic";
constexpr const char* kFallbackNotice = "no vector kernels for this CPU architecture";
Level best() { return Level::Generic; }
#endif
constexpr int kLevels = static_cast<int>(sizeof kNames / sizeof kNames[0]);

struct Choice {
  Level level;
  std::string error;  // TORCHCHAT_KERNELS could not be honoured
};

Choice choose() {
  const char* forced = std::getenv("TORCHCHAT_KERNELS");
  if (forced && *forced) {
    for (int i = 0; i < kLevels; ++i) {
      if (std::strcmp(forced, kNames[i]) != 0) continue;
      const Level level = static_cast<Level>(i);
      if (!supported(level))
        return {best(), std::string("TORCHCHAT_KERNELS=") + forced + ": this CPU lacks " + kNeeds[i]};
      if (level == Level::Generic)
        std::fprintf(stderr, "torchchat kernels: portable fallback (TORCHCHAT_KERNELS=generic)\n");
      return {level, ""};
    }
    return {best(), std::string("TORCHCHAT_KERNELS=") + forced + ": unknown kernels (expected " + kExpected + ")"};
  }
  const Level level = best();
  if (level == Level::Generic)
    std::fprintf(stderr, "torchchat kernels: %s; using the portable fallback (slower)\n", kFallbackNotice);
  return {level, ""};
}

const Choice& chosen() {
  static const Choice choice = choose();  // thread-safe, once
  return choice;
}
Level active() { return chosen().level; }

}  // namespace

const char* isa() { return kNames[static_cast<int>(active())]; }

const char* isa_error() { return chosen().error.empty() ? nullptr : chosen().error.c_str(); }

#if defined(__x86_64__)

void float_linear(const float* x, std::int64_t M, const FloatWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  switch (active()) {
    case Level::Avx512Vnni: case Level::Avx512: return avx512::float_linear(x, M, w, y, n0, n1);
    case Level::Avx2Vnni: case Level::Avx2: return avx2::float_linear(x, M, w, y, n0, n1);
    case Level::Generic: return generic::float_linear(x, M, w, y, n0, n1);
  }
}

void panel_linear(const float* x, std::int64_t M, const PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  switch (active()) {
    case Level::Avx512Vnni: case Level::Avx512: return avx512::panel_linear(x, M, w, y, n0, n1);
    case Level::Avx2Vnni: case Level::Avx2: return avx2::panel_linear(x, M, w, y, n0, n1);
    case Level::Generic: return generic::panel_linear(x, M, w, y, n0, n1);
  }
}

void int8_linear(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0, std::int64_t n1) {
  switch (active()) {
    case Level::Avx512Vnni: case Level::Avx512: return avx512::int8_linear(x, M, w, y, n0, n1);
    case Level::Avx2Vnni: case Level::Avx2: return avx2::int8_linear(x, M, w, y, n0, n1);
    case Level::Generic: return generic::int8_linear(x, M, w, y, n0, n1);
  }
}

void quantize_activations(const float* x, std::int64_t M, std::int64_t K, int slices, std::int8_t* q, float* scale,
                          float* scaled_sum, std::int32_t* sum) {
  switch (active()) {
    case Level::Avx512Vnni: return avx512vnni::quantize_activations(x, M, K, slices, q, scale, scaled_sum, sum);
    case Level::Avx512: case Level::Avx2Vnni: case Level::Avx2:
      return avx2::quantize_activations(x, M, K, slices, q, scale, scaled_sum, sum);
    case Level::Generic: return generic::quantize_activations(x, M, K, slices, q, scale, scaled_sum, sum);
  }
}

// AVX-512 CPUs without AVX-512 VNNI (Skylake-X) run the AVX2 int8-activation kernels; AVX-VNNI
// without AVX-512 VNNI is no CPU we know of, but the choice would be right for it too.
void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  switch (active()) {
    case Level::Avx512Vnni: return avx512vnni::int4_a8_linear(x, w, y, n0, n1);
    case Level::Avx512:
      return supported(Level::Avx2Vnni) ? avx2vnni::int4_a8_linear(x, w, y, n0, n1) : avx2::int4_a8_linear(x, w, y, n0, n1);
    case Level::Avx2Vnni: return avx2vnni::int4_a8_linear(x, w, y, n0, n1);
    case Level::Avx2: return avx2::int4_a8_linear(x, w, y, n0, n1);
    case Level::Generic: return generic::int4_a8_linear(x, w, y, n0, n1);
  }
}

void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  switch (active()) {
    case Level::Avx512Vnni: return avx512vnni::int8_a8_linear(x, w, y, n0, n1);
    case Level::Avx512:
      return supported(Level::Avx2Vnni) ? avx2vnni::int8_a8_linear(x, w, y, n0, n1) : avx2::int8_a8_linear(x, w, y, n0, n1);
    case Level::Avx2Vnni: return avx2vnni::int8_a8_linear(x, w, y, n0, n1);
    case Level::Avx2: return avx2::int8_a8_linear(x, w, y, n0, n1);
    case Level::Generic: return generic::int8_a8_linear(x, w, y, n0, n1);
  }
}

#elif defined(__aarch64__)
// neon-dotprod differs from neon only in the int8-activation kernels' dot products.
void float_linear(const float* x, std::int64_t M, const FloatWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  if (active() == Level::Generic) return generic::float_linear(x, M, w, y, n0, n1);
  neon::float_linear(x, M, w, y, n0, n1);
}

void panel_linear(const float* x, std::int64_t M, const PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  if (active() == Level::Generic) return generic::panel_linear(x, M, w, y, n0, n1);
  neon::panel_linear(x, M, w, y, n0, n1);
}

void int8_linear(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0, std::int64_t n1) {
  if (active() == Level::Generic) return generic::int8_linear(x, M, w, y, n0, n1);
  neon::int8_linear(x, M, w, y, n0, n1);
}

void quantize_activations(const float* x, std::int64_t M, std::int64_t K, int slices, std::int8_t* q, float* scale,
                          float* scaled_sum, std::int32_t* sum) {
  if (active() == Level::Generic) return generic::quantize_activations(x, M, K, slices, q, scale, scaled_sum, sum);
  neon::quantize_activations(x, M, K, slices, q, scale, scaled_sum, sum);
}

void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  switch (active()) {
    case Level::NeonDotprod: return neondotprod::int4_a8_linear(x, w, y, n0, n1);
    case Level::Neon: return neon::int4_a8_linear(x, w, y, n0, n1);
    case Level::Generic: return generic::int4_a8_linear(x, w, y, n0, n1);
  }
}

void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  switch (active()) {
    case Level::NeonDotprod: return neondotprod::int8_a8_linear(x, w, y, n0, n1);
    case Level::Neon: return neon::int8_a8_linear(x, w, y, n0, n1);
    case Level::Generic: return generic::int8_a8_linear(x, w, y, n0, n1);
  }
}
#else
void float_linear(const float* x, std::int64_t M, const FloatWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  generic::float_linear(x, M, w, y, n0, n1);
}
void panel_linear(const float* x, std::int64_t M, const PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  generic::panel_linear(x, M, w, y, n0, n1);
}
void int8_linear(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0, std::int64_t n1) {
  generic::int8_linear(x, M, w, y, n0, n1);
}
void quantize_activations(const float* x, std::int64_t M, std::int64_t K, int slices, std::int8_t* q, float* scale,
                          float* scaled_sum, std::int32_t* sum) {
  generic::quantize_activations(x, M, K, slices, q, scale, scaled_sum, sum);
}
void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  generic::int4_a8_linear(x, w, y, n0, n1);
}
void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  generic::int8_a8_linear(x, w, y, n0, n1);
}
#endif

}  // namespace torchchat::kernels
