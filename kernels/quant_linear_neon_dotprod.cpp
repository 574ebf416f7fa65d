// int4 / int8 panels times int8 activations with the dot-product extension (quant_linear.h): sdot
// multiplies 4 signed bytes of the weights by 4 of the activations and adds them into each int32
// lane without overflow, the layout of the panels. Called only when the CPU has it (HWCAP_ASIMDDP,
// quant_linear.cpp); free of standard-library headers (their inline functions would be compiled
// for the dot-product extension here and could be picked by the linker for the other code too).
#pragma GCC target("arch=armv8.2-a+dotprod")
#pragma GCC optimize("O3", "fp-contract=off")  // only the fmas written out: the bits every ISA shares
#include <arm_neon.h>

#include "a8_neon.h"
#include "quant_linear.h"

namespace torchchat::kernels::neondotprod {
namespace {

struct SdotDot {
  using Acc = int32x4_t;
  static Acc zero() { return vdupq_n_s32(0); }
  static void add(Acc& acc, int8x16_t w, int8x16_t x) { acc = vdotq_s32(acc, w, x); }
  static int32x4_t sums(Acc acc) { return acc; }
};

}  // namespace

void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  a8::linear<SdotDot, 4>(x, w, y, n0, n1);
}

void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  a8::linear<SdotDot, 8>(x, w, y, n0, n1);
}

}  // namespace torchchat::kernels::neondotprod
