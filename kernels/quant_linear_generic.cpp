// Portable fallback: plain loops, for CPUs without AVX-512 (and the reference the tests
// compare the vector code against).
#include <cstring>

#include "quant_linear.h"

namespace torchchat::kernels::generic {
namespace {

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // normal: rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // zero
  } else {  // subnormal half: normalise
    exp = 113;
    while (!(mant & 0x400u)) { mant <<= 1; --exp; }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Element i of fp32 or bf16 (the top half of an fp32) weights.
float float_at(const void* w, bool bf16, std::int64_t i) {
  if (!bf16) return static_cast<const float*>(w)[i];
  const std::uint32_t bits = static_cast<std::uint32_t>(static_cast<const std::uint16_t*>(w)[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Each group summed on its own, then scaled into the row's sum (the AVX-512 kernel's order).
void int8_linear_groupwise(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0,
                           std::int64_t n1) {
  const std::int64_t groups = w.K / w.G;
  for (std::int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * w.K;
    for (std::int64_t n = n0; n < n1; ++n) {
      const std::int8_t* q = w.q + n * w.K;
      const float* scale = w.scale + n * groups;
      float acc = 0.f;
      for (std::int64_t g = 0; g < groups; ++g) {
        float group = 0.f;
        for (std::int64_t k = g * w.G; k < (g + 1) * w.G; ++k) group += xm[k] * static_cast<float>(q[k]);
        acc += group * scale[g];
      }
      y[m * w.N + n] = acc;
    }
  }
}

}  // namespace

void float_linear(const float* x, std::int64_t M, const FloatWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  for (std::int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * w.K;
    for (std::int64_t n = n0; n < n1; ++n) {
      float acc = 0.f;
      for (std::int64_t k = 0; k < w.K; ++k) acc += xm[k] * float_at(w.w, w.bf16, n * w.K + k);
      y[m * w.N + n] = acc;
    }
  }
}

void panel_linear(const float* x, std::int64_t M, const PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  for (std::int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * w.K;
    for (std::int64_t n = n0; n < n1; ++n) {
      const std::int64_t panel = (n / kPanel) * w.K * kPanel, col = n % kPanel;
      float acc = 0.f;
      for (std::int64_t k = 0; k < w.K; ++k) acc += xm[k] * float_at(w.w, w.bf16, panel + k * kPanel + col);
      y[m * w.N + n] = acc;
    }
  }
}

void int8_linear(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0, std::int64_t n1) {
  if (w.G != w.K) return int8_linear_groupwise(x, M, w, y, n0, n1);
  for (std::int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * w.K;
    for (std::int64_t n = n0; n < n1; ++n) {
      const std::int8_t* q = w.q + n * w.K;
      float acc = 0.f;
      for (std::int64_t k = 0; k < w.K; ++k) acc += xm[k] * static_cast<float>(q[k]);
      y[m * w.N + n] = acc * w.scale[n];
    }
  }
}

void int4_linear(const float* x, std::int64_t M, const Int4Weights& w, float* y, std::int64_t n0, std::int64_t n1) {
  const std::int64_t groups = w.K / w.G;
  for (std::int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * w.K;
    for (std::int64_t n = n0; n < n1; ++n) {
      const std::uint8_t* q = w.q + n * (w.K / 2);
      const std::uint16_t* sm = w.scale_min + n * groups * 2;
      float acc = 0.f;
      for (std::int64_t k = 0; k < w.K; k += 32) {
        const std::int64_t g = k / w.G;
        const float scale = half_to_float(sm[2 * g]), min = half_to_float(sm[2 * g + 1]);
        for (int j = 0; j < 16; ++j) {
          const std::uint8_t b = q[k / 2 + j];
          acc += xm[k + j] * (static_cast<float>(b & 15) * scale + min);
          acc += xm[k + 16 + j] * (static_cast<float>(b >> 4) * scale + min);
        }
      }
      y[m * w.N + n] = acc;
    }
  }
}

}  // namespace torchchat::kernels::generic
