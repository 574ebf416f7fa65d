// Portable fallback: plain loops in the order of float operations every implementation follows
// (quant_linear.h), for CPUs without AVX2 (and the reference the tests compare the vector code
// against, bit for bit). Clarity before speed: each output is computed on its own.
// Only the fmas written out (std::fma): the order of float operations every ISA shares.
#pragma GCC optimize("fp-contract=off")
#include <cmath>
#include <cstring>

#include "bf16.h"
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
  return bf16 ? bf16_value(static_cast<const std::uint16_t*>(w)[i]) : static_cast<const float*>(w)[i];
}

// One output of the row-major kernels before any scale (quant_linear.h): 16 lanes, lane l taking
// k = l mod 16 in k order with fma, the last partial block padded with zeros, then the lanes summed
// by the fixed tree.
template <typename Weight>
float row_dot(const float* x, const Weight& weight, std::int64_t K) {
  float acc[16] = {};
  for (std::int64_t k0 = 0; k0 < K; k0 += 16)
    for (std::int64_t l = 0; l < 16; ++l) {
      const std::int64_t k = k0 + l;
      acc[l] = k < K ? std::fma(x[k], weight(k), acc[l]) : std::fma(0.f, 0.f, acc[l]);
    }
  float s8[8], s4[4], s2[2];
  for (int i = 0; i < 8; ++i) s8[i] = acc[i] + acc[i + 8];
  for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
  for (int i = 0; i < 2; ++i) s2[i] = s4[i] + s4[i + 2];
  return s2[0] + s2[1];
}

// int4 (kBits 4) or int8 (kBits 8) panels times int8-sliced activations, one output at a time, in
// the VNNI kernel's order of operations (quant_linear.h).
template <int kBits>
void a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  constexpr std::int64_t kBlockBytes = 64 * kBits;
  const std::int64_t groups = w.K / w.G, group_bytes = w.G / 32 * kBlockBytes + 64, blocks = w.K / 32;
  for (std::int64_t m = 0; m < x.M; ++m) {
    for (std::int64_t n = n0; n < n1; ++n) {
      const std::int64_t lane = n % kA8Panel;
      const std::uint8_t* panel = w.w + (n / kA8Panel) * groups * group_bytes;
      float acc = 0.f;
      for (std::int64_t b = 0; b < blocks; ++b) {
        const std::int64_t g = b * 32 / w.G, at = m * blocks + b;
        const std::uint8_t* group = panel + g * group_bytes;
        const std::uint8_t* block = group + (b - g * (w.G / 32)) * kBlockBytes;
        const std::uint8_t* trailer = group + w.G / 32 * kBlockBytes;
        float dot = 0.f;
        for (int j = x.slices - 1; j >= 0; --j) {
          const std::int8_t* xq = x.q + j * x.M * w.K + m * w.K;
          std::int32_t d = 0;
          if constexpr (kBits == 4) {
            for (int c = 0; c < 4; ++c)
              for (int i = 0; i < 4; ++i) {
                const std::uint8_t byte = block[64 * c + 4 * lane + i];
                d += (byte & 15) * xq[32 * b + 4 * c + i] + (byte >> 4) * xq[32 * b + 16 + 4 * c + i];
              }
          } else {
            for (int c = 0; c < 8; ++c)
              for (int i = 0; i < 4; ++i) d += block[64 * c + 4 * lane + i] * xq[32 * b + 4 * c + i];
            d -= 128 * x.sum[j * x.M * blocks + at];  // the codes are stored + 128
          }
          const float f = static_cast<float>(d);
          dot = x.slices == 1 ? f : j == x.slices - 1 ? f * kSliceUnit[j] : std::fma(f, kSliceUnit[j], dot);
        }
        if constexpr (kBits == 4) {
          const std::uint16_t* sm = reinterpret_cast<const std::uint16_t*>(trailer);
          acc = std::fma(dot, half_to_float(sm[lane]) * x.scale[at], acc);
          acc = std::fma(half_to_float(sm[kA8Panel + lane]), x.scaled_sum[at], acc);
        } else {
          float scale;
          std::memcpy(&scale, trailer + 4 * lane, sizeof scale);
          acc = std::fma(dot, scale * x.scale[at], acc);
        }
      }
      y[m * w.N + n] = acc;
    }
  }
}

// v rounded half to even (the current rounding mode, as cvtps2dq and torch.round), within [lo, hi].
std::int32_t round_within(float v, float lo, float hi) {
  return static_cast<std::int32_t>(std::fmin(std::fmax(std::nearbyint(v), lo), hi));
}

}  // namespace

void float_linear(const float* x, std::int64_t M, const FloatWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  for (std::int64_t m = 0; m < M; ++m)
    for (std::int64_t n = n0; n < n1; ++n)
      y[m * w.N + n] = row_dot(x + m * w.K, [&](std::int64_t k) { return float_at(w.w, w.bf16, n * w.K + k); }, w.K);
}

void panel_linear(const float* x, std::int64_t M, const PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  for (std::int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * w.K;
    for (std::int64_t n = n0; n < n1; ++n) {
      const std::int64_t column = (n / kPanel) * w.K * kPanel + n % kPanel;
      float acc = 0.f;
      for (std::int64_t k = 0; k < w.K; ++k) acc = std::fma(xm[k], float_at(w.w, w.bf16, column + k * kPanel), acc);
      y[m * w.N + n] = acc;
    }
  }
}

void int8_linear(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0, std::int64_t n1) {
  for (std::int64_t m = 0; m < M; ++m)
    for (std::int64_t n = n0; n < n1; ++n) {
      const std::int8_t* q = w.q + n * w.K;
      y[m * w.N + n] = row_dot(x + m * w.K, [&](std::int64_t k) { return static_cast<float>(q[k]); }, w.K) * w.scale[n];
    }
}

void quantize_activations(const float* x, std::int64_t M, std::int64_t K, int slices, std::int8_t* q, float* scale,
                          float* scaled_sum, std::int32_t* sum) {
  const std::int64_t blocks = M * (K / 32);  // K is a multiple of 32: blocks never span tokens
  for (std::int64_t b = 0; b < blocks; ++b) {
    const float* xb = x + 32 * b;
    float amax = 0.f;
    for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(xb[i]));
    const float s = amax / 127.f, s1 = s * kSliceUnit[1], s2 = s * kSliceUnit[2];
    std::int32_t total[3] = {0, 0, 0};
    for (int i = 0; i < 32; ++i) {
      std::int32_t d[3] = {0, 0, 0};
      if (s != 0.f) {
        d[0] = round_within(xb[i] / s, -127.f, 127.f);
        if (slices == 3 && s >= kSmallestSplit) {
          const float r1 = std::fma(static_cast<float>(-d[0]), s, xb[i]);  // exact
          d[1] = round_within(r1 / s1, -256.f, 256.f);
          const float r2 = std::fma(static_cast<float>(-d[1]), s1, r1);
          d[2] = round_within(r2 / s2, -128.f, 127.f);
          // |r1| <= s / 2, so d1 may round to +-128: carry it into d0 (which stays in [-127, 127]:
          // d0 + 1 only when x / s >= d0 + 1/2; the guards and the clamp only keep int8 safe).
          if (d[1] > 127 && d[0] < 127) d[0] += 1, d[1] -= 256;
          if (d[1] < -128 && d[0] > -127) d[0] -= 1, d[1] += 256;
          d[1] = d[1] > 127 ? 127 : d[1] < -128 ? -128 : d[1];
        }
      }
      for (int j = 0; j < slices; ++j) {
        q[j * M * K + 32 * b + i] = static_cast<std::int8_t>(d[j]);
        total[j] += d[j];
      }
    }
    for (int j = 0; j < slices; ++j) sum[j * blocks + b] = total[j];
    scale[b] = s;
    scaled_sum[b] = s * slice_sum(sum + b, blocks, slices);
  }
}

void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  a8_linear<4>(x, w, y, n0, n1);
}

void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1) {
  a8_linear<8>(x, w, y, n0, n1);
}

}  // namespace torchchat::kernels::generic
