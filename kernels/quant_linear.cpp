// Choosing the implementation at run time (quant_linear.h).
#include "quant_linear.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace torchchat::kernels {
namespace {

enum class Isa { Generic, Avx512 };

Isa detect() {
  const char* forced = std::getenv("TORCHCHAT_KERNELS");
  const bool has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  if (forced && std::strcmp(forced, "generic") == 0) {
    std::fprintf(stderr, "torchchat kernels: portable fallback (TORCHCHAT_KERNELS=generic)\n");
    return Isa::Generic;
  }
  if (!has_avx512) {
    std::fprintf(stderr, "torchchat kernels: this CPU lacks AVX-512 (F/BW/VL); using the portable fallback (slower)\n");
    return Isa::Generic;
  }
  return Isa::Avx512;
}

Isa active() {
  static const Isa isa = detect();  // thread-safe, once
  return isa;
}

// The int8-activation kernels also need VNNI (AVX-512 CPUs before Cascade Lake lack it).
bool vnni() {
  static const bool has = [] {
    const bool ok = active() == Isa::Avx512 && __builtin_cpu_supports("avx512vnni");
    if (active() == Isa::Avx512 && !ok)
      std::fprintf(stderr, "torchchat kernels: this CPU lacks AVX-512 VNNI; int8-activation linears use the portable fallback (slower)\n");
    return ok;
  }();
  return has;
}

}  // namespace

const char* isa() { return active() == Isa::Avx512 ? "avx512" : "generic"; }

void float_linear(const float* x, std::int64_t M, const FloatWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  if (active() == Isa::Avx512) return avx512::float_linear(x, M, w, y, n0, n1);
  generic::float_linear(x, M, w, y, n0, n1);
}

void panel_linear(const float* x, std::int64_t M, const PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  if (active() == Isa::Avx512) return avx512::panel_linear(x, M, w, y, n0, n1);
  generic::panel_linear(x, M, w, y, n0, n1);
}

void int8_linear(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0, std::int64_t n1) {
  if (active() == Isa::Avx512) return avx512::int8_linear(x, M, w, y, n0, n1);
  generic::int8_linear(x, M, w, y, n0, n1);
}

void int4_linear(const float* x, std::int64_t M, const Int4Weights& w, float* y, std::int64_t n0, std::int64_t n1) {
  if (active() == Isa::Avx512) return avx512::int4_linear(x, M, w, y, n0, n1);
  generic::int4_linear(x, M, w, y, n0, n1);
}

void quantize_activations(const float* x, std::int64_t M, std::int64_t K, int slices, std::int8_t* q, float* scale,
                          float* scaled_sum, std::int32_t* sum) {
  if (vnni()) return avx512vnni::quantize_activations(x, M, K, slices, q, scale, scaled_sum, sum);
  generic::quantize_activations(x, M, K, slices, q, scale, scaled_sum, sum);
}

void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  if (vnni()) return avx512vnni::int4_a8_linear(x, w, y, n0, n1);
  generic::int4_a8_linear(x, w, y, n0, n1);
}

void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  if (vnni()) return avx512vnni::int8_a8_linear(x, w, y, n0, n1);
  generic::int8_a8_linear(x, w, y, n0, n1);
}

}  // namespace torchchat::kernels
