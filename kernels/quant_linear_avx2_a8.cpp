// AVX2 int8-activation kernels (quant_linear.h). PLACEHOLDER: forwards to the portable code until
// the vector code lands.
#include "quant_linear.h"

namespace torchchat::kernels::avx2 {

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

}  // namespace torchchat::kernels::avx2
