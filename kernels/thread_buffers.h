// Scratch memory per thread, kept between calls, for both operator wrappers (torch_ops.cpp,
// executorch_ops.cpp): a decode step quantizes the activations of ~120 linears and splits ~30
// attentions, which would otherwise be ~400 small allocations per token. Kept out of
// quant_linear.h and attention.h, which the ISA files include and which must stay free of
// standard-library headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "attention.h"
#include "bf16.h"
#include "quant_linear.h"

namespace torchchat::kernels {

// x [M, K] (K a multiple of 32) split into `slices` int8 slices (1: int8 activations, 3: fp32 ones,
// quant_linear.h) in this thread's buffers; valid until the thread's next call. The buffers keep
// the largest size seen (for a prompt of M tokens about 1.4 M K bytes with one slice, 3.6 M K with
// three).
inline Int8Activations quantize_in_thread_buffers(const float* x, std::int64_t M, std::int64_t K, int slices) {
  thread_local std::vector<std::int8_t> q;
  thread_local std::vector<float> scales;
  thread_local std::vector<std::int32_t> sums;
  q.resize(static_cast<std::size_t>(slices * M * K));
  scales.resize(static_cast<std::size_t>(2 * M * (K / 32)));
  sums.resize(static_cast<std::size_t>(slices * M * (K / 32)));
  return quantized_activations(x, M, K, slices, q.data(), scales.data(), sums.data());
}

// The partial results of a's position splits (none when it has one split), in this thread's buffer.
inline float* attention_partials_in_thread_buffers(const AttentionArgs& a) {
  thread_local std::vector<float> partials;
  partials.resize(static_cast<std::size_t>(attention_partials_size(a)));
  return partials.data();
}

// n bf16 values widened to fp32 in this thread's `in` buffer, and an `out` buffer of n floats
// (the ExecuTorch wrapper computes a bf16 attention in fp32 through them).
struct Fp32Buffers {
  float* in;
  float* out;
};
inline Fp32Buffers fp32_in_thread_buffers(const std::uint16_t* bf16, std::int64_t n) {
  thread_local std::vector<float> in, out;
  in.resize(static_cast<std::size_t>(n));
  out.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) in[static_cast<std::size_t>(i)] = bf16_value(bf16[i]);
  return {in.data(), out.data()};
}

}  // namespace torchchat::kernels
