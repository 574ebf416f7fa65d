// AVX2 + FMA attention (attention.h). PLACEHOLDER: forwards to the portable code until the vector
// code lands.
#include "attention.h"

namespace torchchat::kernels::avx2 {

void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const float* k, const float* v,
            std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc) {
  generic::attend(q, G, D, scale, k, v, l0, l1, m, z, acc);
}
void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const std::uint16_t* k,
            const std::uint16_t* v, std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc) {
  generic::attend(q, G, D, scale, k, v, l0, l1, m, z, acc);
}

}  // namespace torchchat::kernels::avx2
