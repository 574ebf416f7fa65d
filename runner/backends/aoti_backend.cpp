#include "aoti_backend.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Logging.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/inductor/aoti_runner/model_container_runner_cpu.h>

#include "torchchat/error.h"

namespace torchchat {
namespace {

constexpr char kSoMagic[] = "TCHMETA1";  // torchchat/metadata.py SO_MAGIC
constexpr char kPt2Key[] = "torchchat";  // torchchat/metadata.py PT2_KEY

enum class Format { So, Pt2 };

Format sniff(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open the model file");
  char head[4] = {};
  f.read(head, 4);
  if (f.gcount() == 4 && std::memcmp(head, "\x7f" "ELF", 4) == 0) return Format::So;
  if (f.gcount() == 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) return Format::Pt2;
  throw Error(path + ": not an AOT Inductor model (neither a shared library nor a .pt2 package)");
}

// c10::Error messages run over many lines (with a C++ stack trace); keep the first.
std::string first_line(const std::exception& e) {
  const std::string s = e.what();
  return s.substr(0, s.find('\n'));
}

}  // namespace

std::string read_so_metadata(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return "";
  const auto size = static_cast<std::uint64_t>(f.tellg());
  if (size < 16) return "";
  char tail[16];
  f.seekg(static_cast<std::streamoff>(size - 16));
  f.read(tail, 16);
  if (std::memcmp(tail + 8, kSoMagic, 8) != 0) return "";
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(tail[i]);  // little-endian u64
  if (n > size - 16 || n > (1u << 20)) return "";
  std::string json(n, '\0');
  f.seekg(static_cast<std::streamoff>(size - 16 - n));
  f.read(json.data(), static_cast<std::streamsize>(n));
  return f ? json : "";
}

struct AotiBackend::Model {
  std::unique_ptr<torch::inductor::AOTIModelContainerRunnerCpu> so;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> pt2;
  at::Tensor logits;  // the last call's output, alive while the caller reads it

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) {
    return so ? so->run(inputs) : pt2->run(inputs);
  }
};

AotiBackend::AotiBackend(const BackendOptions& options) : model_(std::make_unique<Model>()) {
  const std::string& path = options.model_path;
  const Format format = sniff(path);
  std::string json;
  try {
    if (format == Format::So) {
      // Metadata first: a truncated library has lost its trailer, and a foreign one
      // never had it; either way we stop before dlopen.
      json = read_so_metadata(path);
      if (json.empty())
        throw Error(path + ": no torchchat metadata (truncated, or not exported by `torchchat.py export`)");
      // dlopen searches the library path for a bare file name: make it a path.
      const std::string so_path = path.find('/') == std::string::npos ? "./" + path : path;
      model_->so = std::make_unique<torch::inductor::AOTIModelContainerRunnerCpu>(so_path, 1);
    } else {
      // The loader logs warnings about foreign zips before it throws; the error we
      // raise says it in one line.
      const int log_level = FLAGS_caffe2_log_level;
      FLAGS_caffe2_log_level = std::max(log_level, 2);  // errors only
      try {
        model_->pt2 = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path);
      } catch (...) {
        FLAGS_caffe2_log_level = log_level;
        throw;
      }
      FLAGS_caffe2_log_level = log_level;
      const auto meta = model_->pt2->get_metadata();
      const auto it = meta.find(kPt2Key);
      if (it == meta.end()) throw Error(path + ": no torchchat metadata (not exported by `torchchat.py export`)");
      json = it->second;
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(path + ": cannot load the model: " + first_line(e));
  }
  try {
    metadata_ = parse_metadata_json(json);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  // For tests: every forward() call appended as a JSON line (what the model was fed).
  if (const char* trace = std::getenv("TORCHCHAT_AOTI_TRACE")) trace_path_ = trace;
}

AotiBackend::~AotiBackend() = default;

std::span<const float> AotiBackend::forward(const std::int64_t* tokens, int n, int start_pos) {
  // Checked here because the compiled model reports out-of-range indices with a
  // stack trace on stderr before it throws.
  if (n < 1 || start_pos < 0 || start_pos + n > metadata_.max_seq_len) {
    throw Error(std::to_string(n) + " tokens at position " + std::to_string(start_pos) +
                " do not fit the model's context of " + std::to_string(metadata_.max_seq_len));
  }
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= metadata_.vocab_size)
      throw Error("token id " + std::to_string(tokens[i]) + " is outside the model's vocabulary");
  }
  if (!trace_path_.empty()) {
    std::ofstream trace(trace_path_, std::ios::app);
    trace << "{\"start_pos\": " << start_pos << ", \"tokens\": [";
    for (int i = 0; i < n; ++i) trace << (i ? ", " : "") << tokens[i];
    trace << "]}\n";
  }
  try {
    const at::Tensor ids = at::from_blob(const_cast<std::int64_t*>(tokens), {1, n}, at::kLong);
    const at::Tensor pos = at::arange(start_pos, start_pos + n, at::kLong);
    const std::vector<at::Tensor> out = model_->run({ids, pos});
    model_->logits = out.at(0).select(1, n - 1).to(at::kFloat).contiguous();  // [1, vocab]
  } catch (const std::exception& e) {
    throw Error("the model failed: " + first_line(e));
  }
  return {model_->logits.data_ptr<float>(), static_cast<std::size_t>(metadata_.vocab_size)};
}

}  // namespace torchchat
