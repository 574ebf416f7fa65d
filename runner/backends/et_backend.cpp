#include "et_backend.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <numeric>
#include <optional>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/threadpool/threadpool_guard.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/platform/platform.h>

#include "torchchat/cpu_features.h"
#include "torchchat/error.h"

// In libtorchchat_et_kernels (kernels/executorch_ops.cpp), which et_run links.
extern "C" const char* torchchat_kernels_isa();
extern "C" const char* torchchat_kernels_isa_error();

namespace torchchat {
namespace {

namespace et = ::executorch::runtime;
using ::executorch::extension::Module;

constexpr char kMetadataMethod[] = "get_metadata_json";  // torchchat/metadata.py PTE_METHOD

// ExecuTorch logs to stderr (CPU probing at load, and the details of every failure).
// The runner's errors are one line, so the log is kept instead, and the last
// error-level message completes our message. TORCHCHAT_ET_LOG=1 shows everything.
std::mutex log_mutex;
std::string last_log_error;
int log_errors = 0;  // error-level messages so far
bool log_verbose = false;

void emit_log(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
              const char* message, size_t length) {
  if (log_verbose) {
    std::fprintf(stderr, "[%s:%zu] %.*s\n", filename, line, static_cast<int>(length), message);
    return;
  }
  std::string text(message, length);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (level == kFatal) {
    // The runtime aborts right after (pal_abort, below): this is the user's one line.
    std::fflush(stdout);
    std::fprintf(stderr, "error: the ExecuTorch runtime stopped (damaged program?):%s%s\n",
                 text.empty() || text.front() == ' ' ? "" : " ", text.c_str());
    return;
  }
  if (level == kError) {
    std::lock_guard<std::mutex> lock(log_mutex);
    last_log_error = std::move(text);
    ++log_errors;
  }
}

// Replaces abort() (and its "Aborted", exit 134): emit_log has said what failed.
[[noreturn]] void pal_stop() {
  std::fflush(stdout);
  std::_Exit(1);
}

void install_log_handler() {
  static const bool installed = [] {
    const char* verbose = std::getenv("TORCHCHAT_ET_LOG");
    log_verbose = verbose != nullptr && std::strcmp(verbose, "0") != 0;
    return et::register_pal(et::PalImpl::create(nullptr, pal_stop, nullptr, nullptr, emit_log, nullptr, nullptr,
                                                __FILE__));
  }();
  (void)installed;
}

int logged_errors() {
  std::lock_guard<std::mutex> lock(log_mutex);
  return log_errors;
}

// "what failed: Error::X (the runtime's last logged error)".
std::string describe(const std::string& what, et::Error error) {
  std::string detail;
  {
    std::lock_guard<std::mutex> lock(log_mutex);
    detail.swap(last_log_error);
  }
  return what + ": " + et::to_string(error) + (detail.empty() ? "" : " (" + detail + ")");
}

// ExecuTorch 1.5.1 can log an error while it loads a method and still return Ok (Method::init
// lets a later instruction's success overwrite an earlier operator index out of range), leaving an
// instruction without a kernel: the call would jump to garbage. An error logged while loading
// refuses the program too.
et::Error checked_load(et::Error result, int errors_before) {
  return result == et::Error::Ok && logged_errors() > errors_before ? et::Error::InvalidProgram : result;
}

// A .pte is a flatbuffer with the file identifier "ET" + two digits at bytes 4..8.
void sniff(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open the model file");
  char head[8] = {};
  f.read(head, 8);
  if (f.gcount() < 8 || head[4] != 'E' || head[5] != 'T')
    throw Error(path + ": not an ExecuTorch program (.pte)");
}

// ExecuTorch's thread pool off for this thread while it lives, when `off`.
class PoolOff {
 public:
  explicit PoolOff(bool off) {
    if (off) guard_.emplace();
  }

 private:
  std::optional<::executorch::extension::threadpool::NoThreadPoolGuard> guard_;
};

class EtBackend final : public Backend {
 public:
  explicit EtBackend(const BackendOptions& options);
  const ModelMetadata& metadata() const override { return metadata_; }
  std::span<const float> forward(const std::int64_t* tokens, int n, int start_pos) override;
  std::string kernels() const override { return runs_our_kernels(metadata_) ? torchchat_kernels_isa() : ""; }

  // Conversations of their own: the forward method's planned memory (the KV cache, and the
  // activations with it) is ours, and a state is a copy of it, swapped in and out by copying.
  std::unique_ptr<KvState> new_kv_state() override;
  void use_kv_state(KvState& state) override;
  void release_kv_state(KvState& state) override;

 private:
  void allocate_planned_memory();
  std::vector<std::vector<std::uint8_t>> planned_;
  std::vector<et::Span<std::uint8_t>> planned_spans_;
  std::unique_ptr<et::HierarchicalAllocator> planned_memory_;
  // The planned memory as loaded (the cache's initial zeros), for new states: the non-zero
  // pages only, by buffer and offset.
  struct Page {
    std::size_t buffer, offset;
    std::vector<std::uint8_t> bytes;
  };
  std::vector<Page> initial_pages_;
  KvState* active_kv_ = nullptr;  // the state whose contents are in planned_
  friend class EtKvState;

  std::unique_ptr<Module> module_;
  ModelMetadata metadata_;
  std::vector<std::int64_t> tokens_, positions_;
  std::int64_t n_logits_value_ = 0;  // the n_logits input's one element (its length, 1, is what the program reads)
  ::executorch::extension::TensorPtr n_logits_;
  std::vector<float> logits_;  // the last position's row, valid until the next call
  // Every linear runs on our kernels (linears_on_our_kernels), so XNNPACK has only small
  // elementwise work left: it runs that inline, with ExecuTorch's thread pool off for the calling
  // thread, and our kernels split their rows over OpenMP's threads (kernels/executorch_ops.cpp
  // parallel_range, which says why).
  bool own_threads_ = false;
};

EtBackend::EtBackend(const BackendOptions& options) {
  // TORCHCHAT_KERNELS naming a level that is unknown or that this CPU lacks.
  if (const char* error = torchchat_kernels_isa_error()) throw Error(error);
  install_log_handler();
  const std::string& path = options.model_path;
  sniff(path);
  // Mmap: weights are paged in from the file, not copied; XNNPACK packs them at load.
  module_ = std::make_unique<Module>(path, Module::LoadMode::Mmap);
  Module& module = *module_;
  // Full verification (the flatbuffer verifier and the tensors' consistency): a truncated or damaged
  // file fails here, not inside a method.
  const int errors_before = logged_errors();
  if (const et::Error e = checked_load(module.load(et::Program::Verification::InternalConsistency), errors_before);
      e != et::Error::Ok)
    throw Error(describe(path + ": cannot load the ExecuTorch program (truncated or damaged?)", e));
  const auto names = module.method_names();
  if (!names.ok()) throw Error(describe(path + ": cannot read the program's methods", names.error()));
  if (!names->count(kMetadataMethod) || !names->count("forward"))
    throw Error(path + ": no torchchat metadata (export it with `torchchat.py export --output-pte-path`)");

  const auto meta = module.execute(kMetadataMethod);
  if (!meta.ok() || meta->size() != 1 || !meta->at(0).isString())
    throw Error(path + ": the get_metadata_json method does not return the metadata string");
  try {
    metadata_ = parse_metadata_json(std::string(meta->at(0).toString()));
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  require_cpu_features(metadata_, path);  // ours need nothing ("any"): XNNPACK and our kernels choose at run time
  own_threads_ = linears_on_our_kernels(metadata_);
  const PoolOff pool_off(own_threads_);  // XNNPACK takes its thread pool when it is set up
  allocate_planned_memory();
  if (const et::Error e = checked_load(module.load_method("forward", planned_memory_.get()), errors_before);
      e != et::Error::Ok)
    throw Error(describe(path + ": cannot load the forward method", e));
  const auto forward_meta = module.method_meta("forward");
  if (!forward_meta.ok()) throw Error(describe(path + ": cannot read the forward method's inputs", forward_meta.error()));
  // (tokens, input_pos, kv_len = None, n_logits): Transformer.forward's inputs, kv_len left out
  // (whole-cache attention).
  if (forward_meta->num_inputs() != 4) throw Error(path + ": exported by an older version; export again");
  n_logits_ = ::executorch::extension::from_blob(&n_logits_value_, {1}, et::etensor::ScalarType::Long);
  constexpr std::size_t kPage = 4096;
  for (std::size_t b = 0; b < planned_.size(); ++b) {
    const std::vector<std::uint8_t>& buffer = planned_[b];
    for (std::size_t at = 0; at < buffer.size(); at += kPage) {
      const std::size_t n = std::min(kPage, buffer.size() - at);
      const auto* p = buffer.data() + at;
      if (std::any_of(p, p + n, [](std::uint8_t v) { return v != 0; })) initial_pages_.push_back({b, at, {p, p + n}});
    }
  }
}

void EtBackend::allocate_planned_memory() {
  const auto meta = module_->method_meta("forward");
  if (!meta.ok()) throw Error(describe("cannot read the forward method", meta.error()));
  for (std::size_t i = 0; i < meta->num_memory_planned_buffers(); ++i) {
    const auto size = meta->memory_planned_buffer_size(i);
    if (!size.ok()) throw Error(describe("cannot read the forward method's planned memory", size.error()));
    planned_.emplace_back(static_cast<std::size_t>(*size));
  }
  for (auto& buffer : planned_) planned_spans_.emplace_back(buffer.data(), buffer.size());
  planned_memory_ = std::make_unique<et::HierarchicalAllocator>(
      et::Span<et::Span<std::uint8_t>>(planned_spans_.data(), planned_spans_.size()));
}

std::span<const float> EtBackend::forward(const std::int64_t* tokens, int n, int start_pos) {
  check_forward_args(metadata_, tokens, n, start_pos);  // the program would index out of range
  tokens_.assign(tokens, tokens + n);
  positions_.resize(n);
  std::iota(positions_.begin(), positions_.end(), std::int64_t{start_pos});
  const auto ids = ::executorch::extension::from_blob(tokens_.data(), {1, n}, et::etensor::ScalarType::Long);
  const auto pos = ::executorch::extension::from_blob(positions_.data(), {n}, et::etensor::ScalarType::Long);
  const PoolOff pool_off(own_threads_);
  // The last position's logits only: [1, 1, vocab].
  const auto out = module_->forward({ids, pos, et::EValue(), n_logits_});
  if (!out.ok()) throw Error(describe("the model failed", out.error()));
  const auto& logits = out->at(0).toTensor();
  const std::size_t vocab = static_cast<std::size_t>(metadata_.vocab_size);
  if (logits.scalar_type() != et::etensor::ScalarType::Float || static_cast<std::size_t>(logits.numel()) != vocab)
    throw Error("the model returned logits of an unexpected shape or type");
  logits_.assign(logits.const_data_ptr<float>(), logits.const_data_ptr<float>() + vocab);
  return logits_;
}

// A conversation's planned memory while another one's is in use; empty while it is in use,
// or while it is new (then it is the memory as loaded).
class EtKvState final : public KvState {
 public:
  explicit EtKvState(EtBackend& backend) : backend_(backend) {}
  ~EtKvState() override {
    if (backend_.active_kv_ == this) backend_.active_kv_ = nullptr;
  }
  std::vector<std::span<std::byte>> bytes() override {
    if (copies.empty()) {  // new: the memory as loaded
      for (const auto& buffer : backend_.planned_) copies.emplace_back(buffer.size());
      for (const auto& page : backend_.initial_pages_)
        std::copy(page.bytes.begin(), page.bytes.end(), copies[page.buffer].begin() + static_cast<std::ptrdiff_t>(page.offset));
    }
    std::vector<std::span<std::byte>> spans;
    for (auto& copy : copies) spans.emplace_back(reinterpret_cast<std::byte*>(copy.data()), copy.size());
    return spans;
  }
  std::vector<std::vector<std::uint8_t>> copies;

 private:
  EtBackend& backend_;
};

std::unique_ptr<KvState> EtBackend::new_kv_state() { return std::make_unique<EtKvState>(*this); }

void EtBackend::use_kv_state(KvState& state) {
  if (active_kv_ == &state) return;
  if (active_kv_ != nullptr) release_kv_state(*active_kv_);
  auto& kv = static_cast<EtKvState&>(state);
  if (kv.copies.empty()) {
    for (auto& buffer : planned_) std::fill(buffer.begin(), buffer.end(), std::uint8_t{0});
    for (const auto& page : initial_pages_)
      std::copy(page.bytes.begin(), page.bytes.end(), planned_[page.buffer].begin() + static_cast<std::ptrdiff_t>(page.offset));
  } else {
    for (std::size_t b = 0; b < planned_.size(); ++b) std::copy(kv.copies[b].begin(), kv.copies[b].end(), planned_[b].begin());
    kv.copies = {};  // in use: its contents live in planned_
  }
  active_kv_ = &state;
}

void EtBackend::release_kv_state(KvState& state) {
  if (active_kv_ != &state) return;
  static_cast<EtKvState&>(state).copies = planned_;
  active_kv_ = nullptr;
}

}  // namespace

std::unique_ptr<Backend> make_et_backend(const BackendOptions& options) {
  return std::make_unique<EtBackend>(options);
}

}  // namespace torchchat
