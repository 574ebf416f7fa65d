// The kernels as PyTorch operators, for eager PyTorch, torch.export and AOT Inductor:
//   torchchat::float_weight_linear(Tensor x, Tensor weight) -> Tensor
//   torchchat::panel_weight_linear(Tensor x, Tensor panels, int N) -> Tensor
//   torchchat::int8_weight_linear(Tensor x, Tensor weight, Tensor scales) -> Tensor
//     (row-major int8, scales [N] or [N, 1]: one per output row)
//   torchchat::int4_a8_weight_linear(Tensor x, Tensor panels, int N, int groupsize) -> Tensor
//   torchchat::int8_a8_weight_linear(Tensor x, Tensor panels, int N) -> Tensor
//     (int4 / int8 weights times activations quantized to int8 per block of 32, on the fly)
//   torchchat::int4_panel_weight_linear(Tensor x, Tensor panels, int N, int groupsize) -> Tensor
//   torchchat::int8_panel_weight_linear(Tensor x, Tensor panels, int N) -> Tensor
//     (the same panels times fp32 activations, split on the fly into three int8 slices per
//     block of 32: fp32 accuracy with integer dot products, quant_linear.h)
//   torchchat::cache_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor input_pos) -> Tensor
//     (causal grouped-query attention over a KV cache, attention.h: q [1, T, H, D] fp32 or bf16,
//     caches [1, Hkv, S, D] fp32 or bf16, token t attends positions [0, input_pos[t]]; out
//     [1, T, H, D] in q's dtype)
// and their out variants (`.out`, the same arguments then `*, Tensor(a!) out`), which
// ExecuTorch's export puts in the program (to_executorch's out-variant pass) and which
// kernels/executorch_ops.cpp implements inside the ExecuTorch runtime.
// x [..., K] (any float dtype; computed in fp32, returned in x's dtype); weight/scales in the
// formats of quant_linear.h. Shapes for tracing (fake tensors) are registered in
// torchchat/kernels.py. AOT Inductor calls the C functions at the bottom directly
// (aot_inductor.custom_ops_to_c_shims), so an exported model needs this library loaded with
// its symbols global: aoti_run links it, Python loads it with RTLD_GLOBAL.
#include <algorithm>

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>
#include <torch/library.h>

#include "attention.h"
#include "quant_linear.h"
#include "thread_buffers.h"

namespace torchchat::kernels {
namespace {

// Output rows per task: enough work per thread to amortise the pool's wake-up (a few us).
constexpr std::int64_t kGrainRows = 64;

// A decode step calls these wrappers ~150 times, between kernels of 5-25 us, while the other
// threads wait: each dispatcher call (reshape, to, view, empty) costs a few hundred ns, so the
// fp32 path below makes none. On SmolLM2 int4 decode with int8 activations (2 threads) the time
// a step spends outside parallel regions fell from 450-560 to 380-430 us (measured on SmolLM2).

// x's values as contiguous fp32, read as an [M = numel / K, K] matrix: x itself when it is one.
at::Tensor activations(const at::Tensor& x, std::int64_t K, const char* op) {
  TORCH_CHECK(x.defined(), op, ": x is undefined");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, op, ": x has ", x.size(-1), " features, the weight ", K);
  TORCH_CHECK(x.is_floating_point() && x.device().is_cpu(), op, ": x must be a float CPU tensor");
  if (x.scalar_type() == at::kFloat && x.is_contiguous()) return x;
  return x.to(at::kFloat).contiguous();
}

std::int64_t rows(const at::Tensor& xf, std::int64_t K) { return K > 0 ? xf.numel() / K : 0; }

// The fp32 result: x's shape with N features last.
at::Tensor new_output(const at::Tensor& x, std::int64_t N) {
  at::DimVector shape(x.sizes());
  shape.back() = N;
  return at::detail::empty_cpu(shape, at::kFloat);
}

at::Tensor output(const at::Tensor& x, const at::Tensor& y) {
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

at::Tensor float_weight_linear(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(weight.defined() && weight.dim() == 2 && (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16) &&
                  weight.is_contiguous(),
              "float_weight_linear: weight must be a contiguous fp32 or bf16 [N, K] matrix");
  const std::int64_t N = weight.size(0), K = weight.size(1);
  const at::Tensor xf = activations(x, K, "float_weight_linear");
  const std::int64_t M = rows(xf, K);
  at::Tensor y = new_output(x, N);
  const FloatWeights w{weight.const_data_ptr(), weight.scalar_type() == at::kBFloat16, N, K};
  const float* xp = xf.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  at::parallel_for(0, N, kGrainRows, [&](std::int64_t n0, std::int64_t n1) { float_linear(xp, M, w, yp, n0, n1); });
  return output(x, y);
}

at::Tensor panel_weight_linear(const at::Tensor& x, const at::Tensor& panels, std::int64_t N) {
  TORCH_CHECK(panels.defined() && panels.dim() == 3 && panels.size(2) == kPanel && panels.is_contiguous() &&
                  (panels.scalar_type() == at::kFloat || panels.scalar_type() == at::kBFloat16),
              "panel_weight_linear: panels must be a contiguous fp32 or bf16 [ceil(N / 32), K, 32] tensor");
  TORCH_CHECK(N >= 1 && (N + kPanel - 1) / kPanel == panels.size(0), "panel_weight_linear: ", panels.size(0),
              " panels do not hold N = ", N, " outputs");
  const std::int64_t K = panels.size(1);
  const at::Tensor xf = activations(x, K, "panel_weight_linear");
  const std::int64_t M = rows(xf, K);
  at::Tensor y = new_output(x, N);
  const PanelWeights w{panels.const_data_ptr(), panels.scalar_type() == at::kBFloat16, N, K};
  const float* xp = xf.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  // Whole panels per task.
  at::parallel_for(0, panels.size(0), 1, [&](std::int64_t p0, std::int64_t p1) {
    panel_linear(xp, M, w, yp, p0 * kPanel, std::min(p1 * kPanel, N));
  });
  return output(x, y);
}

at::Tensor int8_weight_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales) {
  TORCH_CHECK(weight.defined() && scales.defined() && weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.is_contiguous(),
              "int8_weight_linear: weight must be a contiguous int8 [N, K] matrix");
  const std::int64_t N = weight.size(0), K = weight.size(1);
  const bool per_row = int8_row_scales(N, scales.dim(), scales.dim() >= 1 ? scales.size(0) : 0,
                                       scales.dim() == 2 ? scales.size(1) : 1);
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && per_row,
              "int8_weight_linear: scales must be contiguous fp32 [N] or [N, 1] (one per output row), got ",
              scales.scalar_type(), " ", scales.sizes());
  const at::Tensor xf = activations(x, K, "int8_weight_linear");
  const std::int64_t M = rows(xf, K);
  at::Tensor y = new_output(x, N);
  const Int8Weights w{weight.const_data_ptr<std::int8_t>(), scales.const_data_ptr<float>(), N, K};
  const float* xp = xf.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  at::parallel_for(0, N, kGrainRows, [&](std::int64_t n0, std::int64_t n1) { int8_linear(xp, M, w, yp, n0, n1); });
  return output(x, y);
}

// int4 panels (quant_linear.h) for N outputs and groupsize G, checked.
A8PanelWeights int4_panels(const char* op, const at::Tensor& panels, std::int64_t N, std::int64_t groupsize) {
  TORCH_CHECK(groupsize >= 32 && groupsize % 32 == 0, op, ": groupsize must be a multiple of 32, got ", groupsize);
  const std::int64_t K =
      panels.defined() && panels.dim() == 3 ? int4_panel_k(N, groupsize, panels.size(0), panels.size(1), panels.size(2)) : 0;
  TORCH_CHECK(panels.scalar_type() == at::kByte && panels.is_contiguous() && K > 0, op,
              ": panels must be a contiguous uint8 [ceil(N / 16), K / G, 8G + 64] tensor for N = ", N, " and G = ",
              groupsize, ", got ", panels.sizes());
  return {panels.const_data_ptr<std::uint8_t>(), N, K, groupsize};
}

// int8 panels (quant_linear.h) for N outputs, checked.
A8PanelWeights int8_panels(const char* op, const at::Tensor& panels, std::int64_t N) {
  const std::int64_t G =
      panels.defined() && panels.dim() == 3 ? int8_panel_groupsize(N, panels.size(0), panels.size(1), panels.size(2)) : 0;
  TORCH_CHECK(panels.scalar_type() == at::kByte && panels.is_contiguous() && G > 0, op,
              ": panels must be a contiguous uint8 [ceil(N / 16), K / G, 16G + 64] tensor (G a multiple of 32) for "
              "N = ", N, ", got ", panels.sizes());
  return {panels.const_data_ptr<std::uint8_t>(), N, panels.size(1) * G, G};
}

// x split into int8 slices per block of 32 (1: int8 activations, 3: fp32 ones), then w's kernel
// over whole panels of the N outputs.
template <int kBits>
at::Tensor sliced_linear(const at::Tensor& x, const A8PanelWeights& w, int slices, const char* op) {
  const at::Tensor xf = activations(x, w.K, op);
  const Int8Activations xa = quantize_in_thread_buffers(xf.const_data_ptr<float>(), rows(xf, w.K), w.K, slices);
  at::Tensor y = new_output(x, w.N);
  float* yp = y.mutable_data_ptr<float>();
  at::parallel_for(0, (w.N + kA8Panel - 1) / kA8Panel, 1, [&](std::int64_t p0, std::int64_t p1) {
    const std::int64_t n0 = p0 * kA8Panel, n1 = std::min(p1 * kA8Panel, w.N);
    if constexpr (kBits == 4) int4_a8_linear(xa, w, yp, n0, n1);
    else int8_a8_linear(xa, w, yp, n0, n1);
  });
  return output(x, y);
}

at::Tensor int4_a8_weight_linear(const at::Tensor& x, const at::Tensor& panels, std::int64_t N,
                                 std::int64_t groupsize) {
  constexpr const char* op = "int4_a8_weight_linear";
  return sliced_linear<4>(x, int4_panels(op, panels, N, groupsize), 1, op);
}

at::Tensor int8_a8_weight_linear(const at::Tensor& x, const at::Tensor& panels, std::int64_t N) {
  constexpr const char* op = "int8_a8_weight_linear";
  return sliced_linear<8>(x, int8_panels(op, panels, N), 1, op);
}

at::Tensor int4_panel_weight_linear(const at::Tensor& x, const at::Tensor& panels, std::int64_t N,
                                    std::int64_t groupsize) {
  constexpr const char* op = "int4_panel_weight_linear";
  return sliced_linear<4>(x, int4_panels(op, panels, N, groupsize), 3, op);
}

at::Tensor int8_panel_weight_linear(const at::Tensor& x, const at::Tensor& panels, std::int64_t N) {
  constexpr const char* op = "int8_panel_weight_linear";
  return sliced_linear<8>(x, int8_panels(op, panels, N), 3, op);
}

bool fp32_or_bf16(const at::Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16; }

at::Tensor cache_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& input_pos) {
  constexpr const char* op = "cache_attention";
  TORCH_CHECK(q.defined() && k_cache.defined() && v_cache.defined() && input_pos.defined(), op,
              ": an input is undefined");
  TORCH_CHECK(q.dim() == 4 && q.size(0) == 1 && fp32_or_bf16(q), op, ": q must be an fp32 or bf16 [1, T, H, D] tensor, got ",
              q.scalar_type(), " ", q.sizes());
  const std::int64_t T = q.size(1), H = q.size(2), D = q.size(3);
  for (const at::Tensor* c : {&k_cache, &v_cache})
    TORCH_CHECK(c->dim() == 4 && c->size(0) == 1 && c->size(3) == D && fp32_or_bf16(*c) &&
                    c->scalar_type() == k_cache.scalar_type() && c->stride(3) == 1 && c->stride(2) == D &&
                    c->sizes() == k_cache.sizes() && c->strides() == k_cache.strides(),
                op, ": the caches must be fp32 or bf16 [1, Hkv, S, D] tensors alike, each position's D values "
                "contiguous, got ", c->scalar_type(), " ", c->sizes(), " for D = ", D);
  const std::int64_t Hkv = k_cache.size(1), S = k_cache.size(2);
  TORCH_CHECK(Hkv >= 1 && H % Hkv == 0, op, ": ", H, " query heads do not share ", Hkv, " KV heads evenly");
  TORCH_CHECK(input_pos.dim() == 1 && input_pos.size(0) == T && input_pos.scalar_type() == at::kLong, op,
              ": input_pos must be int64 [T = ", T, "]");
  const at::Tensor pos = input_pos.contiguous();
  const std::int64_t* p = pos.const_data_ptr<std::int64_t>();
  const std::int64_t outside = position_outside(p, T, S);
  TORCH_CHECK(outside == T, op, ": position ", p[outside], " is outside the cache of ", S);
  // Computed in fp32: a bf16 q (T * H * D values, few beside the cache) is widened, and the result
  // rounded back to it. A strided q (AOT Inductor passes q as a view of the rotated q and k heads)
  // is copied: for a prompt only, as a decode step's single token is contiguous.
  const at::Tensor qf = q.to(at::kFloat).contiguous();
  at::Tensor out = at::detail::empty_cpu(q.sizes(), at::kFloat);
  AttentionArgs a = attention_args(qf.const_data_ptr<float>(), k_cache.const_data_ptr(), v_cache.const_data_ptr(),
                                   k_cache.scalar_type() == at::kBFloat16, p, out.mutable_data_ptr<float>(), T, H,
                                   Hkv, D, k_cache.stride(1), at::get_num_threads());
  a.partials = attention_partials_in_thread_buffers(a);
  at::parallel_for(0, attention_tasks(a), 1, [&](std::int64_t i0, std::int64_t i1) { attention(a, i0, i1); });
  if (a.splits > 1) attention_merge(a, 0, T * Hkv);  // a few hundred floats: not worth waking the pool
  return q.scalar_type() == at::kFloat ? out : out.to(q.scalar_type());
}

// The out variants: the same computation, written into `out` (resized to x's shape with N last).
at::Tensor& into(at::Tensor& out, const at::Tensor& y) {
  out.resize_(y.sizes());
  out.copy_(y);
  return out;
}

at::Tensor& int8_weight_linear_out(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                                   at::Tensor& out) {
  return into(out, int8_weight_linear(x, weight, scales));
}

at::Tensor& int4_a8_weight_linear_out(const at::Tensor& x, const at::Tensor& panels, std::int64_t N,
                                      std::int64_t groupsize, at::Tensor& out) {
  return into(out, int4_a8_weight_linear(x, panels, N, groupsize));
}

at::Tensor& int8_a8_weight_linear_out(const at::Tensor& x, const at::Tensor& panels, std::int64_t N, at::Tensor& out) {
  return into(out, int8_a8_weight_linear(x, panels, N));
}

at::Tensor& int4_panel_weight_linear_out(const at::Tensor& x, const at::Tensor& panels, std::int64_t N,
                                         std::int64_t groupsize, at::Tensor& out) {
  return into(out, int4_panel_weight_linear(x, panels, N, groupsize));
}

at::Tensor& int8_panel_weight_linear_out(const at::Tensor& x, const at::Tensor& panels, std::int64_t N,
                                         at::Tensor& out) {
  return into(out, int8_panel_weight_linear(x, panels, N));
}

at::Tensor& cache_attention_out(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& input_pos, at::Tensor& out) {
  return into(out, cache_attention(q, k_cache, v_cache, input_pos));
}

// Shapes only, for export's fake tensors (the functional ops' are in torchchat/kernels.py):
// out takes x's shape with N outputs last.
at::Tensor& linear_out_meta(const at::Tensor& x, std::int64_t N, at::Tensor& out) {
  auto shape = x.sizes().vec();
  shape.back() = N;
  out.resize_(shape);
  return out;
}

at::Tensor& int8_weight_linear_out_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor&,
                                        at::Tensor& out) {
  return linear_out_meta(x, weight.size(0), out);
}

at::Tensor& int4_a8_weight_linear_out_meta(const at::Tensor& x, const at::Tensor&, std::int64_t N, std::int64_t,
                                           at::Tensor& out) {
  return linear_out_meta(x, N, out);
}

at::Tensor& int8_a8_weight_linear_out_meta(const at::Tensor& x, const at::Tensor&, std::int64_t N, at::Tensor& out) {
  return linear_out_meta(x, N, out);
}

at::Tensor& cache_attention_out_meta(const at::Tensor& q, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     at::Tensor& out) {
  out.resize_(q.sizes());
  return out;
}

std::string isa_op() { return isa(); }
std::string isa_error_op() { return isa_error() ? isa_error() : ""; }  // "": none

}  // namespace
}  // namespace torchchat::kernels

TORCH_LIBRARY(torchchat, m) {
  m.def("float_weight_linear(Tensor x, Tensor weight) -> Tensor");
  m.def("panel_weight_linear(Tensor x, Tensor panels, int N) -> Tensor");
  m.def("int8_weight_linear(Tensor x, Tensor weight, Tensor scales) -> Tensor");
  m.def("int4_a8_weight_linear(Tensor x, Tensor panels, int N, int groupsize) -> Tensor");
  m.def("int8_a8_weight_linear(Tensor x, Tensor panels, int N) -> Tensor");
  m.def("int4_panel_weight_linear(Tensor x, Tensor panels, int N, int groupsize) -> Tensor");
  m.def("int8_panel_weight_linear(Tensor x, Tensor panels, int N) -> Tensor");
  m.def("int8_weight_linear.out(Tensor x, Tensor weight, Tensor scales, *, Tensor(a!) out) -> Tensor(a!)");
  m.def("int4_a8_weight_linear.out(Tensor x, Tensor panels, int N, int groupsize, *, Tensor(a!) out) -> Tensor(a!)");
  m.def("int8_a8_weight_linear.out(Tensor x, Tensor panels, int N, *, Tensor(a!) out) -> Tensor(a!)");
  m.def("int4_panel_weight_linear.out(Tensor x, Tensor panels, int N, int groupsize, *, Tensor(a!) out) "
        "-> Tensor(a!)");
  m.def("int8_panel_weight_linear.out(Tensor x, Tensor panels, int N, *, Tensor(a!) out) -> Tensor(a!)");
  m.def("cache_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor input_pos) -> Tensor");
  m.def("cache_attention.out(Tensor q, Tensor k_cache, Tensor v_cache, Tensor input_pos, *, Tensor(a!) out) "
        "-> Tensor(a!)");
  m.def("kernels_isa() -> str", &torchchat::kernels::isa_op);
  m.def("kernels_isa_error() -> str", &torchchat::kernels::isa_error_op);
}

TORCH_LIBRARY_IMPL(torchchat, CPU, m) {
  m.impl("float_weight_linear", &torchchat::kernels::float_weight_linear);
  m.impl("panel_weight_linear", &torchchat::kernels::panel_weight_linear);
  m.impl("int8_weight_linear", &torchchat::kernels::int8_weight_linear);
  m.impl("int4_a8_weight_linear", &torchchat::kernels::int4_a8_weight_linear);
  m.impl("int8_a8_weight_linear", &torchchat::kernels::int8_a8_weight_linear);
  m.impl("int8_weight_linear.out", &torchchat::kernels::int8_weight_linear_out);
  m.impl("int4_a8_weight_linear.out", &torchchat::kernels::int4_a8_weight_linear_out);
  m.impl("int8_a8_weight_linear.out", &torchchat::kernels::int8_a8_weight_linear_out);
  m.impl("int4_panel_weight_linear", &torchchat::kernels::int4_panel_weight_linear);
  m.impl("int8_panel_weight_linear", &torchchat::kernels::int8_panel_weight_linear);
  m.impl("int4_panel_weight_linear.out", &torchchat::kernels::int4_panel_weight_linear_out);
  m.impl("int8_panel_weight_linear.out", &torchchat::kernels::int8_panel_weight_linear_out);
  m.impl("cache_attention", &torchchat::kernels::cache_attention);
  m.impl("cache_attention.out", &torchchat::kernels::cache_attention_out);
}

TORCH_LIBRARY_IMPL(torchchat, Meta, m) {
  m.impl("int8_weight_linear.out", &torchchat::kernels::int8_weight_linear_out_meta);
  m.impl("int4_a8_weight_linear.out", &torchchat::kernels::int4_a8_weight_linear_out_meta);
  m.impl("int8_a8_weight_linear.out", &torchchat::kernels::int8_a8_weight_linear_out_meta);
  m.impl("int4_panel_weight_linear.out", &torchchat::kernels::int4_a8_weight_linear_out_meta);  // same shapes
  m.impl("int8_panel_weight_linear.out", &torchchat::kernels::int8_a8_weight_linear_out_meta);
  m.impl("cache_attention.out", &torchchat::kernels::cache_attention_out_meta);
}

// C shims for AOT Inductor: declarations in torchchat/kernels.py (AOTI_C_SHIMS) must match.
using torch::aot_inductor::new_tensor_handle;
using torch::aot_inductor::tensor_handle_to_tensor_pointer;

namespace {

// AOT Inductor passes a null handle for a constant it was never given (it only warns): refused
// here, not read.
const at::Tensor& arg(AtenTensorHandle handle) {
  TORCH_CHECK(handle != nullptr, "torchchat kernel: an input tensor is missing (a constant the model was not given?)");
  return *tensor_handle_to_tensor_pointer(handle);
}

}  // namespace

extern "C" AOTITorchError aoti_torch_cpu_float_weight_linear(AtenTensorHandle x, AtenTensorHandle weight,
                                                             AtenTensorHandle* ret) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret = new_tensor_handle(torchchat::kernels::float_weight_linear(arg(x), arg(weight)));
  });
}

extern "C" AOTITorchError aoti_torch_cpu_panel_weight_linear(AtenTensorHandle x, AtenTensorHandle panels, int64_t N,
                                                             AtenTensorHandle* ret) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret = new_tensor_handle(torchchat::kernels::panel_weight_linear(arg(x), arg(panels), N));
  });
}

extern "C" AOTITorchError aoti_torch_cpu_int8_weight_linear(AtenTensorHandle x, AtenTensorHandle weight,
                                                            AtenTensorHandle scales, AtenTensorHandle* ret) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret = new_tensor_handle(torchchat::kernels::int8_weight_linear(arg(x), arg(weight), arg(scales)));
  });
}

extern "C" AOTITorchError aoti_torch_cpu_int4_a8_weight_linear(AtenTensorHandle x, AtenTensorHandle panels, int64_t N,
                                                               int64_t groupsize, AtenTensorHandle* ret) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret = new_tensor_handle(torchchat::kernels::int4_a8_weight_linear(arg(x), arg(panels), N, groupsize));
  });
}

extern "C" AOTITorchError aoti_torch_cpu_int8_a8_weight_linear(AtenTensorHandle x, AtenTensorHandle panels, int64_t N,
                                                               AtenTensorHandle* ret) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret = new_tensor_handle(torchchat::kernels::int8_a8_weight_linear(arg(x), arg(panels), N));
  });
}

extern "C" AOTITorchError aoti_torch_cpu_int4_panel_weight_linear(AtenTensorHandle x, AtenTensorHandle panels,
                                                                  int64_t N, int64_t groupsize,
                                                                  AtenTensorHandle* ret) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret = new_tensor_handle(torchchat::kernels::int4_panel_weight_linear(arg(x), arg(panels), N, groupsize));
  });
}

extern "C" AOTITorchError aoti_torch_cpu_int8_panel_weight_linear(AtenTensorHandle x, AtenTensorHandle panels,
                                                                  int64_t N, AtenTensorHandle* ret) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret = new_tensor_handle(torchchat::kernels::int8_panel_weight_linear(arg(x), arg(panels), N));
  });
}

extern "C" AOTITorchError aoti_torch_cpu_cache_attention(AtenTensorHandle q, AtenTensorHandle k_cache,
                                                         AtenTensorHandle v_cache, AtenTensorHandle input_pos,
                                                         AtenTensorHandle* ret) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret = new_tensor_handle(torchchat::kernels::cache_attention(arg(q), arg(k_cache), arg(v_cache), arg(input_pos)));
  });
}
