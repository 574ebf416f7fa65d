// The kernels inside the ExecuTorch runtime: the out variants that torchchat/export/executorch.py's export
// leaves in a .pte for linear:int8 / linear:int4 (kernels/torch_ops.cpp declares them to
// PyTorch), registered with ExecuTorch's kernel registry when this library is loaded:
//   torchchat::int8_weight_linear.out(Tensor x, Tensor weight, Tensor scales, *, Tensor(a!) out)
//   torchchat::int4_a8_weight_linear.out(Tensor x, Tensor panels, int N, int groupsize, *, Tensor(a!) out)
//   torchchat::int8_a8_weight_linear.out(Tensor x, Tensor panels, int N, *, Tensor(a!) out)
//   torchchat::int4_panel_weight_linear.out(Tensor x, Tensor panels, int N, int groupsize, *, Tensor(a!) out)
//   torchchat::int8_panel_weight_linear.out(Tensor x, Tensor panels, int N, *, Tensor(a!) out)
//   torchchat::cache_attention.out(Tensor q, Tensor k_cache, Tensor v_cache, Tensor input_pos, *, Tensor(a!) out)
// et_run links this library (CMakeLists.txt, torchchat_et_kernels); Python loads it into
// ExecuTorch's runtime before running such a program (torchchat/kernels.py load_executorch).
//
// The same functions as PyTorch's operators (quant_linear.h), the output rows split over
// ExecuTorch's thread pool (the one XNNPACK uses), or over OpenMP's threads where the host has
// turned that pool off for the calling thread (below), so a program computes the same bits as
// eager PyTorch and AOT Inductor. fp32 activations in and out only: the export refuses the schemes
// with other dtypes for ExecuTorch (torchchat/quantize.py).
#include <algorithm>
#include <array>
#include <atomic>

#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/extension/threadpool/threadpool_guard.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>
#include <executorch/runtime/platform/platform.h>

#include "attention.h"
#include "quant_linear.h"
#include "thread_buffers.h"

namespace torchchat::kernels::et {
namespace {

using ::executorch::aten::ScalarType;
using ::executorch::aten::SizesType;
using ::executorch::aten::Tensor;
using ::executorch::runtime::Error;
using ::executorch::runtime::KernelRuntimeContext;
using ::executorch::runtime::kTensorDimensionLimit;
using ::executorch::runtime::resize_tensor;
using ::executorch::runtime::tensor_is_contiguous;

// Output rows per task, as in torch_ops.cpp.
constexpr std::int64_t kGrainRows = 64;

// Where f(i0, i1) runs over [begin, end): ExecuTorch's thread pool, unless the calling thread
// has turned it off (NoThreadPoolGuard): then OpenMP's threads, split as at::parallel_for splits.
// et_run turns the pool off for programs whose linears all run here (runner/backends/
// et_backend.cpp): XNNPACK then runs their small elementwise work inline, and our calls cross
// OpenMP's spinning barrier instead of the pool's two futex system calls per call (about 250
// pool calls per SmolLM2 decode step; about 1.05x decode).
bool own_threads() { return ::executorch::extension::threadpool::NoThreadPoolGuard::is_enabled(); }

std::int64_t thread_count() {
  return own_threads() ? omp_get_max_threads() : ::executorch::extension::get_thread_count();
}

// false if f threw: an exception must not leave a worker thread (std::terminate), nor a kernel
// (ExecuTorch reports failures through the context).
template <class F>
bool parallel_range(std::int64_t begin, std::int64_t end, std::int64_t grain, const F& f) {
  std::atomic<bool> failed{false};
  const auto task = [&](std::int64_t i0, std::int64_t i1) {
    try {
      f(i0, i1);
    } catch (...) {
      failed = true;
    }
  };
  if (!own_threads()) return ::executorch::extension::parallel_for(begin, end, grain, task) && !failed;
  const std::int64_t n = end - begin;
  if (n <= 0) return true;
  const std::int64_t threads = std::min<std::int64_t>(omp_get_max_threads(), (n + grain - 1) / grain);
  if (threads <= 1) {
    task(begin, end);
    return !failed;
  }
  const std::int64_t chunk = (n + threads - 1) / threads;
#pragma omp parallel num_threads(static_cast<int>(threads))
  {
    const std::int64_t i0 = begin + omp_get_thread_num() * chunk, i1 = std::min(end, i0 + chunk);
    if (i0 < i1) task(i0, i1);
  }
  return !failed;
}

// A tensor the program left without memory (a damaged program) is refused, not read.
bool has_data(const Tensor& t) { return t.numel() == 0 || t.const_data_ptr() != nullptr; }

// Checks x [..., K] (fp32) and out, and resizes out to [..., N] (the prompt length is dynamic).
// false (and the context's failure set, with the reason in the log) when something is wrong.
bool prepare(KernelRuntimeContext& ctx, const char* op, const Tensor& x, std::int64_t K, std::int64_t N,
             Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, x.dim() >= 1 && x.size(x.dim() - 1) == K, InvalidArgument, false,
                      "%s: x has %zd features, the weight %lld", op,
                      x.dim() >= 1 ? static_cast<ssize_t>(x.size(x.dim() - 1)) : static_cast<ssize_t>(0),
                      static_cast<long long>(K));
  ET_KERNEL_CHECK_MSG(ctx, x.scalar_type() == ScalarType::Float && out.scalar_type() == ScalarType::Float,
                      InvalidArgument, false, "%s: x and out must be fp32 (export in fp32)", op);
  ET_KERNEL_CHECK_MSG(ctx, out.dim() == x.dim(), InvalidArgument, false, "%s: out has rank %zd, x %zd", op,
                      static_cast<ssize_t>(out.dim()), static_cast<ssize_t>(x.dim()));
  ET_KERNEL_CHECK_MSG(ctx, tensor_is_contiguous(x) && tensor_is_contiguous(out), InvalidArgument, false,
                      "%s: x and out must be contiguous", op);
  ET_KERNEL_CHECK_MSG(ctx, has_data(x), InvalidArgument, false, "%s: x has no data", op);
  std::array<SizesType, kTensorDimensionLimit> sizes{};
  for (ssize_t i = 0; i < x.dim(); ++i) sizes[i] = x.size(i);
  sizes[x.dim() - 1] = static_cast<SizesType>(N);
  ET_KERNEL_CHECK_MSG(ctx, resize_tensor(out, {sizes.data(), static_cast<size_t>(x.dim())}) == Error::Ok,
                      InvalidArgument, false, "%s: cannot resize out to the output's shape", op);
  return true;
}

Tensor& int8_weight_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight,
                               const Tensor& scales, Tensor& out) {
  constexpr const char* op = "torchchat::int8_weight_linear.out";
  ET_KERNEL_CHECK_MSG(ctx,
                      weight.dim() == 2 && weight.scalar_type() == ScalarType::Char && tensor_is_contiguous(weight) &&
                          has_data(weight),
                      InvalidArgument, out, "%s: weight must be a contiguous int8 [N, K] matrix", op);
  const std::int64_t N = weight.size(0), K = weight.size(1);
  const bool per_row = int8_row_scales(N, scales.dim(), scales.dim() >= 1 ? scales.size(0) : 0,
                                       scales.dim() == 2 ? scales.size(1) : 1);
  ET_KERNEL_CHECK_MSG(ctx, scales.scalar_type() == ScalarType::Float && tensor_is_contiguous(scales) && per_row &&
                               has_data(scales),
                      InvalidArgument, out, "%s: scales must be contiguous fp32 [N] or [N, 1] (one per output row)",
                      op);
  if (!prepare(ctx, op, x, K, N, out)) return out;
  const std::int64_t M = K ? x.numel() / K : 0;
  const Int8Weights w{weight.const_data_ptr<std::int8_t>(), scales.const_data_ptr<float>(), N, K};
  const float* xp = x.const_data_ptr<float>();
  float* yp = out.mutable_data_ptr<float>();
  const bool ok =
      parallel_range(0, N, kGrainRows, [&](std::int64_t n0, std::int64_t n1) { int8_linear(xp, M, w, yp, n0, n1); });
  ET_KERNEL_CHECK_MSG(ctx, ok, Internal, out, "%s: the thread pool failed", op);
  return out;
}

// x (checked by prepare) split into int8 slices per block of 32 (1: int8 activations, 3: fp32
// ones), then w's kernel over whole panels of the N outputs, into out.
template <int kBits>
Tensor& sliced_linear(KernelRuntimeContext& ctx, const char* op, const Tensor& x, const A8PanelWeights& w, int slices,
                      Tensor& out) {
  const Int8Activations xa = quantize_in_thread_buffers(x.const_data_ptr<float>(), x.numel() / w.K, w.K, slices);
  float* yp = out.mutable_data_ptr<float>();
  const bool ok = parallel_range(
      0, (w.N + kA8Panel - 1) / kA8Panel, 1, [&](std::int64_t p0, std::int64_t p1) {
        const std::int64_t n0 = p0 * kA8Panel, n1 = std::min(p1 * kA8Panel, w.N);
        if constexpr (kBits == 4) int4_a8_linear(xa, w, yp, n0, n1);
        else int8_a8_linear(xa, w, yp, n0, n1);
      });
  ET_KERNEL_CHECK_MSG(ctx, ok, Internal, out, "%s: the thread pool failed", op);
  return out;
}

Tensor& int4_panels_out(KernelRuntimeContext& ctx, const char* op, const Tensor& x, const Tensor& panels,
                        std::int64_t N, std::int64_t groupsize, int slices, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, groupsize >= 32 && groupsize % 32 == 0, InvalidArgument, out,
                      "%s: groupsize %lld must be a multiple of 32", op, static_cast<long long>(groupsize));
  const std::int64_t K =
      panels.dim() == 3 ? int4_panel_k(N, groupsize, panels.size(0), panels.size(1), panels.size(2)) : 0;
  ET_KERNEL_CHECK_MSG(ctx, panels.scalar_type() == ScalarType::Byte && tensor_is_contiguous(panels) && K > 0 &&
                               has_data(panels),
                      InvalidArgument, out, "%s: panels must be a contiguous uint8 [ceil(N / 16), K / G, 8G + 64] tensor",
                      op);
  if (!prepare(ctx, op, x, K, N, out)) return out;
  return sliced_linear<4>(ctx, op, x, A8PanelWeights{panels.const_data_ptr<std::uint8_t>(), N, K, groupsize}, slices,
                          out);
}

Tensor& int8_panels_out(KernelRuntimeContext& ctx, const char* op, const Tensor& x, const Tensor& panels,
                        std::int64_t N, int slices, Tensor& out) {
  const std::int64_t G =
      panels.dim() == 3 ? int8_panel_groupsize(N, panels.size(0), panels.size(1), panels.size(2)) : 0;
  ET_KERNEL_CHECK_MSG(ctx, panels.scalar_type() == ScalarType::Byte && tensor_is_contiguous(panels) && G > 0 &&
                               has_data(panels),
                      InvalidArgument, out,
                      "%s: panels must be a contiguous uint8 [ceil(N / 16), K / G, 16G + 64] tensor (G a multiple of 32)",
                      op);
  const A8PanelWeights w{panels.const_data_ptr<std::uint8_t>(), N, panels.size(1) * G, G};
  if (!prepare(ctx, op, x, w.K, N, out)) return out;
  return sliced_linear<8>(ctx, op, x, w, slices, out);
}

Tensor& int4_a8_weight_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& panels, std::int64_t N,
                                  std::int64_t groupsize, Tensor& out) {
  return int4_panels_out(ctx, "torchchat::int4_a8_weight_linear.out", x, panels, N, groupsize, 1, out);
}

Tensor& int8_a8_weight_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& panels, std::int64_t N,
                                  Tensor& out) {
  return int8_panels_out(ctx, "torchchat::int8_a8_weight_linear.out", x, panels, N, 1, out);
}

Tensor& int4_panel_weight_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& panels,
                                     std::int64_t N, std::int64_t groupsize, Tensor& out) {
  return int4_panels_out(ctx, "torchchat::int4_panel_weight_linear.out", x, panels, N, groupsize, 3, out);
}

Tensor& int8_panel_weight_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& panels,
                                     std::int64_t N, Tensor& out) {
  return int8_panels_out(ctx, "torchchat::int8_panel_weight_linear.out", x, panels, N, 3, out);
}

bool fp32_or_bf16(const Tensor& t) {
  return t.scalar_type() == ScalarType::Float || t.scalar_type() == ScalarType::BFloat16;
}

// attention.h over ExecuTorch's tensors, with torch_ops.cpp's checks.
Tensor& cache_attention_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& input_pos, Tensor& out) {
  constexpr const char* op = "torchchat::cache_attention.out";
  ET_KERNEL_CHECK_MSG(ctx, q.dim() == 4 && q.size(0) == 1 && fp32_or_bf16(q) && tensor_is_contiguous(q) && has_data(q),
                      InvalidArgument, out, "%s: q must be a contiguous fp32 or bf16 [1, T, H, D] tensor", op);
  const std::int64_t T = q.size(1), H = q.size(2), D = q.size(3);
  for (const Tensor* c : {&k_cache, &v_cache})
    ET_KERNEL_CHECK_MSG(ctx, c->dim() == 4 && c->size(0) == 1 && c->size(1) == k_cache.size(1) &&
                                 c->size(2) == k_cache.size(2) && c->size(3) == D && fp32_or_bf16(*c) &&
                                 c->scalar_type() == k_cache.scalar_type() && tensor_is_contiguous(*c) && has_data(*c),
                        InvalidArgument, out,
                        "%s: the caches must be contiguous fp32 or bf16 [1, Hkv, S, D] tensors alike", op);
  const std::int64_t Hkv = k_cache.size(1), S = k_cache.size(2);
  ET_KERNEL_CHECK_MSG(ctx, Hkv >= 1 && H % Hkv == 0, InvalidArgument, out,
                      "%s: %lld query heads do not share %lld KV heads evenly", op, static_cast<long long>(H),
                      static_cast<long long>(Hkv));
  ET_KERNEL_CHECK_MSG(ctx, input_pos.dim() == 1 && input_pos.size(0) == T && input_pos.scalar_type() == ScalarType::Long &&
                               tensor_is_contiguous(input_pos) && has_data(input_pos),
                      InvalidArgument, out, "%s: input_pos must be int64 [T]", op);
  const std::int64_t* p = input_pos.const_data_ptr<std::int64_t>();
  const std::int64_t outside = position_outside(p, T, S);
  ET_KERNEL_CHECK_MSG(ctx, outside == T, InvalidArgument, out, "%s: position %lld is outside the cache of %lld", op,
                      static_cast<long long>(p[outside]), static_cast<long long>(S));
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == q.scalar_type() && resize_tensor(out, q.sizes()) == Error::Ok &&
                               tensor_is_contiguous(out),
                      InvalidArgument, out, "%s: out must be a contiguous tensor of q's shape and dtype", op);
  // Computed in fp32 (ATen's .to() in torch_ops.cpp): a bf16 q is widened into this thread's
  // buffers, and the result rounded back from them.
  const bool bf16_q = q.scalar_type() == ScalarType::BFloat16;
  const float* qf = bf16_q ? nullptr : q.const_data_ptr<float>();
  float* of = bf16_q ? nullptr : out.mutable_data_ptr<float>();
  if (bf16_q) {
    const Fp32Buffers f = fp32_in_thread_buffers(static_cast<const std::uint16_t*>(q.const_data_ptr()), q.numel());
    qf = f.in;
    of = f.out;
  }
  AttentionArgs a = attention_args(qf, k_cache.const_data_ptr(), v_cache.const_data_ptr(),
                                   k_cache.scalar_type() == ScalarType::BFloat16, p, of, T, H, Hkv, D, S * D,
                                   thread_count());
  a.partials = attention_partials_in_thread_buffers(a);
  const bool ok =
      parallel_range(0, attention_tasks(a), 1, [&](std::int64_t i0, std::int64_t i1) { attention(a, i0, i1); });
  ET_KERNEL_CHECK_MSG(ctx, ok, Internal, out, "%s: the thread pool failed", op);
  if (a.splits > 1) attention_merge(a, 0, T * Hkv);
  if (bf16_q) {
    std::uint16_t* o = static_cast<std::uint16_t*>(out.mutable_data_ptr());
    for (std::int64_t i = 0; i < q.numel(); ++i) o[i] = bf16_bits(of[i]);
  }
  return out;
}

}  // namespace
}  // namespace torchchat::kernels::et

// Registered by static initializers when the library is loaded: a program that calls them
// finds them by name ("torchchat::int8_weight_linear.out") at method load.
EXECUTORCH_LIBRARY(torchchat, "int8_weight_linear.out", torchchat::kernels::et::int8_weight_linear_out);
EXECUTORCH_LIBRARY(torchchat, "int4_a8_weight_linear.out", torchchat::kernels::et::int4_a8_weight_linear_out);
EXECUTORCH_LIBRARY(torchchat, "int8_a8_weight_linear.out", torchchat::kernels::et::int8_a8_weight_linear_out);
EXECUTORCH_LIBRARY(torchchat, "int4_panel_weight_linear.out", torchchat::kernels::et::int4_panel_weight_linear_out);
EXECUTORCH_LIBRARY(torchchat, "int8_panel_weight_linear.out", torchchat::kernels::et::int8_panel_weight_linear_out);
EXECUTORCH_LIBRARY(torchchat, "cache_attention.out", torchchat::kernels::et::cache_attention_out);

// The kernels' level and TORCHCHAT_KERNELS' error (quant_linear.h isa, isa_error), for the host
// that loaded this library: et_run's backend and torchchat/kernels.py load_executorch. Exported
// by name, because this library keeps everything else hidden and holds the one dispatch choice.
extern "C" __attribute__((visibility("default"))) const char* torchchat_kernels_isa() {
  return torchchat::kernels::isa();
}
extern "C" __attribute__((visibility("default"))) const char* torchchat_kernels_isa_error() {
  return torchchat::kernels::isa_error();
}

// For a host that keeps ExecuTorch's own log (torchchat/backends/executorch.py): a fatal check in
// the runtime (a damaged program: "EValue is not a Tensor") ends the process with one line and
// exit 1 instead of abort(), and the errors logged are counted (ExecuTorch 1.5.1 can log one while
// loading a method and still succeed). et_run's backend registers its own handlers instead.
namespace {
pal_emit_log_message_method previous_log = nullptr;  // the host's, for everything else
std::string fatal_message, last_error;
int logged_errors = 0;
int fatal_fd = 2;  // where the one line goes: the host's stderr, even while it silences fd 2

std::string trimmed(const char* message, size_t length) {
  std::string text(message, length);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

void log_counting_errors(et_timestamp_t timestamp, et_pal_log_level_t level, const char* filename,
                         const char* function, size_t line, const char* message, size_t length) {
  if (level == kFatal) {
    fatal_message = trimmed(message, length);
    return;
  }
  if (level == kError) {
    last_error = trimmed(message, length);
    ++logged_errors;
  }
  if (previous_log != nullptr) previous_log(timestamp, level, filename, function, line, message, length);
}

[[noreturn]] void exit_on_abort() {
  std::fflush(stdout);
  dprintf(fatal_fd, "error: the ExecuTorch runtime stopped (damaged program?):%s%s\n",
          fatal_message.empty() || fatal_message.front() == ' ' ? "" : " ", fatal_message.c_str());
  std::_Exit(1);
}
}  // namespace

extern "C" __attribute__((visibility("default"))) bool torchchat_et_exit_on_fatal(int stderr_fd) {
  namespace rt = ::executorch::runtime;
  fatal_fd = stderr_fd;
  previous_log = rt::get_pal_impl()->emit_log_message;
  return rt::register_pal(rt::PalImpl::create(nullptr, exit_on_abort, nullptr, nullptr, log_counting_errors, nullptr,
                                              nullptr, __FILE__));
}

// The number of error-level messages logged since torchchat_et_exit_on_fatal, and the last one.
extern "C" __attribute__((visibility("default"))) int torchchat_et_logged_errors() { return logged_errors; }
extern "C" __attribute__((visibility("default"))) const char* torchchat_et_last_error() { return last_error.c_str(); }
