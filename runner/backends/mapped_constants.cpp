#include "mapped_constants.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "torchchat/error.h"

namespace torchchat {
namespace {

constexpr char kMagic[] = "TCHCNST1";       // torchchat/mapped_constants.py MAGIC
constexpr std::uint64_t kBlockAlign = 16384;  // BLOCK_ALIGN: the data's file offset

std::uint64_t align_up(std::uint64_t n, std::uint64_t to) { return (n + to - 1) / to * to; }

at::ScalarType scalar_type(const std::string& name) {
  static const std::unordered_map<std::string, at::ScalarType> types = {
      {"float32", at::kFloat}, {"bfloat16", at::kBFloat16}, {"float16", at::kHalf}, {"int8", at::kChar},
      {"uint8", at::kByte},    {"int32", at::kInt},         {"int64", at::kLong},   {"bool", at::kBool}};
  const auto it = types.find(name);
  if (it == types.end()) throw Error("unknown constant dtype '" + name + "'");
  return it->second;
}

// A tensor of zeros, filled by this thread. at::zeros fills through an OpenMP parallel region:
// at load time, with the tokenizer parsed on the other core, each of the model's dozens of KV
// caches then waited for a worker thread to be scheduled, and burned a core spinning meanwhile.
at::Tensor zeros(std::int64_t numel, at::TensorOptions options) {
  at::Tensor t = at::empty({numel}, options);
  std::memset(t.data_ptr(), 0, t.nbytes());
  return t;
}

}  // namespace

MappedConstants::MappedConstants(const std::string& path, std::uint64_t at) {
  std::ifstream f(path, std::ios::binary);
  char head[16];
  f.seekg(static_cast<std::streamoff>(at));
  if (!f.read(head, 16) || std::memcmp(head, kMagic, 8) != 0) return;  // no block: constants inside the .so
  std::uint64_t n;
  std::memcpy(&n, head + 8, 8);
  f.seekg(0, std::ios::end);
  const auto file_size = static_cast<std::uint64_t>(f.tellg());
  if (n == 0 || at + 16 + n > file_size) throw Error(path + ": truncated constants index");
  std::string text(n, '\0');
  f.seekg(static_cast<std::streamoff>(at + 16));
  f.read(text.data(), static_cast<std::streamsize>(n));
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text);
    if (index.at("version").get<int>() != 1) throw Error("unsupported constants block version");
    const std::uint64_t data_start = align_up(at + 16 + n, kBlockAlign);
    data_bytes_ = index.at("data_bytes").get<std::uint64_t>();
    if (data_start + data_bytes_ > file_size)
      throw Error("the file is shorter than its constants (truncated?)");
    if (data_bytes_ > 0) {
      const int fd = ::open(path.c_str(), O_RDONLY);
      if (fd < 0) throw Error("cannot open the file");
      // Private and writable: the model never writes its weights, but if it did, the
      // write would land in a private page, not in the file (and would not fault).
      data_ = ::mmap(nullptr, data_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, static_cast<off_t>(data_start));
      ::close(fd);
      if (data_ == MAP_FAILED) {
        data_ = nullptr;
        throw Error("cannot map the constants");
      }
    }
    auto* base = static_cast<std::uint8_t*>(data_);
    for (const auto& e : index.at("constants")) {
      const auto dtype = scalar_type(e.at("dtype").get<std::string>());
      const auto nbytes = e.at("nbytes").get<std::uint64_t>();
      const auto sizes = e.at("sizes").get<std::vector<std::int64_t>>();
      const auto strides = e.at("strides").get<std::vector<std::int64_t>>();
      const auto offset = e.at("storage_offset").get<std::int64_t>();
      if (sizes.size() != strides.size()) throw Error("constant with mismatched sizes and strides");
      const auto itemsize = static_cast<std::uint64_t>(c10::elementSize(dtype));
      // The furthest element must lie inside the storage.
      std::uint64_t last = static_cast<std::uint64_t>(offset);
      bool any = true;
      for (std::size_t d = 0; d < sizes.size(); ++d) {
        if (sizes[d] < 0 || strides[d] < 0 || offset < 0) throw Error("constant with a negative size or stride");
        if (sizes[d] == 0) any = false;
        else last += static_cast<std::uint64_t>(sizes[d] - 1) * static_cast<std::uint64_t>(strides[d]);
      }
      if (any && (last + 1) * itemsize > nbytes) throw Error("constant larger than its storage");
      at::Tensor storage;
      if (e.value("zeros", false)) {
        storage = zeros(static_cast<std::int64_t>(nbytes / itemsize), at::TensorOptions().dtype(dtype));
        zero_names_.push_back(e.at("name").get<std::string>());
      } else {
        const auto where = e.at("data").get<std::uint64_t>();
        if (where + nbytes > data_bytes_) throw Error("constant outside the data");
        storage = at::from_blob(base + where, {static_cast<std::int64_t>(nbytes / itemsize)},
                                at::TensorOptions().dtype(dtype));
      }
      tensors_.emplace(e.at("name").get<std::string>(), storage.as_strided(sizes, strides, offset));
    }
  } catch (const nlohmann::json::exception& e) {
    release();
    throw Error(path + ": malformed constants index (" + e.what() + ")");
  } catch (const Error& e) {
    release();
    throw Error(path + ": " + e.what());
  }
}

MappedConstants::~MappedConstants() { release(); }

std::unordered_map<std::string, at::Tensor> MappedConstants::new_zeros() const {
  std::unordered_map<std::string, at::Tensor> zeros;
  for (const std::string& name : zero_names_) {
    const at::Tensor& t = tensors_.at(name);
    const auto numel = static_cast<std::int64_t>(t.storage().nbytes() / t.element_size());
    zeros.emplace(name, torchchat::zeros(numel, t.options()).as_strided(t.sizes(), t.strides(), t.storage_offset()));
  }
  return zeros;
}

void MappedConstants::release() {
  tensors_.clear();
  zero_names_.clear();
  if (data_ != nullptr) ::munmap(data_, data_bytes_);
  data_ = nullptr;
}

}  // namespace torchchat
