#include "aoti_backend.h"

#include <cstring>
#include <fstream>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/inductor/aoti_runner/model_container_runner_cpu.h>

#include "torchchat/error.h"

namespace torchchat {
namespace {

constexpr char kSoMagic[] = "TCHMETA1";  // must match torchchat/metadata.py SO_MAGIC
constexpr char kPt2Key[] = "torchchat";

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
  std::string s = e.what();
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

}  // namespace

std::string read_so_metadata(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return "";
  const auto size = static_cast<uint64_t>(f.tellg());
  if (size < 16) return "";
  char tail[16];
  f.seekg(static_cast<std::streamoff>(size - 16));
  f.read(tail, 16);
  if (std::memcmp(tail + 8, kSoMagic, 8) != 0) return "";
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(tail[i]);  // little-endian
  if (n > size - 16 || n > (1u << 20)) return "";
  std::string json(n, '\0');
  f.seekg(static_cast<std::streamoff>(size - 16 - n));
  f.read(json.data(), static_cast<std::streamsize>(n));
  return f ? json : "";
}

struct AotiModel::Impl {
  std::unique_ptr<torch::inductor::AOTIModelContainerRunnerCpu> so;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> pt2;
  at::Tensor logits;  // kept alive while the caller reads the last row

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) {
    return so ? so->run(inputs) : pt2->run(inputs);
  }
};

AotiModel::AotiModel(const std::string& path) : impl_(std::make_unique<Impl>()) {
  const Format format = sniff(path);
  try {
    if (format == Format::So) {
      // Metadata first: a truncated library has lost its trailer, and dlopen of a
      // truncated ELF can fail in unhelpful ways.
      metadata_json_ = read_so_metadata(path);
      if (metadata_json_.empty())
        throw Error(path + ": no torchchat metadata (truncated, or not exported by `torchchat.py export`)");
      // dlopen searches the library path for a bare file name: make it a path.
      const std::string so_path = path.find('/') == std::string::npos ? "./" + path : path;
      impl_->so = std::make_unique<torch::inductor::AOTIModelContainerRunnerCpu>(so_path, 1);
    } else {
      impl_->pt2 = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path);
      auto meta = impl_->pt2->get_metadata();
      auto it = meta.find(kPt2Key);
      if (it == meta.end())
        throw Error(path + ": no torchchat metadata (not exported by `torchchat.py export`)");
      metadata_json_ = it->second;
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(path + ": cannot load the model: " + first_line(e));
  }
}

AotiModel::~AotiModel() = default;

const float* AotiModel::forward(const int64_t* tokens, int n, int start_pos) {
  try {
    at::Tensor ids = at::from_blob(const_cast<int64_t*>(tokens), {1, n}, at::kLong);
    at::Tensor pos = at::arange(start_pos, start_pos + n, at::kLong);
    auto out = impl_->run({ids, pos});
    // [1, n, vocab] fp32: keep the last row, contiguous.
    impl_->logits = out.at(0).select(1, n - 1).contiguous();
    return impl_->logits.data_ptr<float>();
  } catch (const std::exception& e) {
    throw Error("model run failed: " + first_line(e));
  }
}

}  // namespace torchchat
