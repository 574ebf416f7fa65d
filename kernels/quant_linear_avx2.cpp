// AVX2 + FMA + F16C kernels for fp32 activations (quant_linear.h). PLACEHOLDER: forwards to the
// portable code until the vector code lands.
#include "quant_linear.h"

namespace torchchat::kernels::avx2 {

void float_linear(const float* x, std::int64_t M, const FloatWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  generic::float_linear(x, M, w, y, n0, n1);
}
void panel_linear(const float* x, std::int64_t M, const PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  generic::panel_linear(x, M, w, y, n0, n1);
}
void int8_linear(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0, std::int64_t n1) {
  generic::int8_linear(x, M, w, y, n0, n1);
}
void int4_linear(const float* x, std::int64_t M, const Int4Weights& w, float* y, std::int64_t n0, std::int64_t n1) {
  generic::int4_linear(x, M, w, y, n0, n1);
}

}  // namespace torchchat::kernels::avx2
