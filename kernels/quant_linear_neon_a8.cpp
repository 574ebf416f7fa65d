// int4 / int8 panels times int8 activations on plain Advanced SIMD (quant_linear.h): smull
// multiplies 8 weight codes by 8 activation codes into int16 (within +-16384: no overflow), sadalp
// adds neighbouring pairs into int32 lanes, and a final addp gives each row's 4-product sums. For
// aarch64 CPUs without the dot-product extension (Cortex-A53/A72, Raspberry Pi 3/4).
#pragma GCC optimize("O3", "fp-contract=off")  // only the fmas written out: the bits every ISA shares
#include <arm_neon.h>

#include "a8_neon.h"
#include "quant_linear.h"

namespace torchchat::kernels::neon {
namespace {

struct MullDot {
  // Rows 4r, 4r + 1 (lo) and 4r + 2, 4r + 3 (hi), two int32 sums per row each.
  struct Acc {
    int32x4_t lo, hi;
  };
  static Acc zero() { return {vdupq_n_s32(0), vdupq_n_s32(0)}; }
  static void add(Acc& acc, int8x16_t w, int8x16_t x) {
    acc.lo = vpadalq_s16(acc.lo, vmull_s8(vget_low_s8(w), vget_low_s8(x)));
    acc.hi = vpadalq_s16(acc.hi, vmull_high_s8(w, x));
  }
  static int32x4_t sums(const Acc& acc) { return vpaddq_s32(acc.lo, acc.hi); }
};

}  // namespace

void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  a8::linear<MullDot, 4>(x, w, y, n0, n1);
}

void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  a8::linear<MullDot, 8>(x, w, y, n0, n1);
}

}  // namespace torchchat::kernels::neon
