#include "aoti_backend.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/DynamicLibrary.h>
#include <c10/util/Logging.h>
#include <caffe2/serialize/inline_container.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/inductor/aoti_runner/model_container_runner_cpu.h>

#include "mapped_constants.h"
#include "quant_linear.h"
#include "torchchat/cpu_features.h"
#include "torchchat/error.h"

namespace torchchat {
namespace {

// torchchat/metadata.py SO_MAGIC: a block right after the ELF content of the .so
// (before any weights AOTI appended), then the JSON length (u64 LE) and the JSON.
constexpr char kSoMagic[] = "TCHMETA1";
constexpr std::uint64_t kSoBlockAlign = 16384;  // SO_BLOCK_ALIGN: the block's length is a multiple
// SO_CHECKSUMS: right after the JSON, CRC-32s of the ELF content and of the JSON (u32 LE each).
constexpr char kSoChecksums[] = "TCHCRC32";
constexpr char kPt2Key[] = "torchchat";  // torchchat/metadata.py PT2_KEY
// torchchat/mapped_constants.py PT2_BLOCK_AT: the constants block, when the package has one.
constexpr std::uint64_t kPt2ConstantsAt = 16384;

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

namespace {

template <typename T>
T load_le(const char* p) {  // the ELF files we read are little-endian, as is this machine
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Offset just past everything the ELF headers describe (segments, sections, header
// tables); 0 if this is not a 64-bit little-endian ELF. Twin of torchchat/metadata.py elf_end.
std::uint64_t elf_end(std::ifstream& f) {
  char h[64];
  f.seekg(0);
  if (!f.read(h, 64) || std::memcmp(h, "\x7f" "ELF", 4) != 0 || h[4] != 2 || h[5] != 1) return 0;
  const auto phoff = load_le<std::uint64_t>(h + 0x20), shoff = load_le<std::uint64_t>(h + 0x28);
  const auto phentsize = load_le<std::uint16_t>(h + 0x36), phnum = load_le<std::uint16_t>(h + 0x38);
  const auto shentsize = load_le<std::uint16_t>(h + 0x3a), shnum = load_le<std::uint16_t>(h + 0x3c);
  if (phentsize < 56 || shentsize < 64) return 0;
  std::uint64_t end = std::max<std::uint64_t>({64, phoff + std::uint64_t{phentsize} * phnum, shoff + std::uint64_t{shentsize} * shnum});
  std::vector<char> table(std::max<std::size_t>(std::size_t{phentsize} * phnum, std::size_t{shentsize} * shnum));
  f.seekg(static_cast<std::streamoff>(phoff));
  if (!f.read(table.data(), static_cast<std::streamsize>(std::size_t{phentsize} * phnum))) return 0;
  for (int i = 0; i < phnum; ++i) {
    const char* e = table.data() + std::size_t{phentsize} * i;
    end = std::max(end, load_le<std::uint64_t>(e + 8) + load_le<std::uint64_t>(e + 32));  // p_offset + p_filesz
  }
  f.seekg(static_cast<std::streamoff>(shoff));
  if (!f.read(table.data(), static_cast<std::streamsize>(std::size_t{shentsize} * shnum))) return 0;
  for (int i = 0; i < shnum; ++i) {
    const char* e = table.data() + std::size_t{shentsize} * i;
    if (load_le<std::uint32_t>(e + 4) != 8)  // SHT_NOBITS (.bss) takes no room in the file
      end = std::max(end, load_le<std::uint64_t>(e + 24) + load_le<std::uint64_t>(e + 32));  // sh_offset + sh_size
  }
  return end;
}

}  // namespace

namespace {

// CRC-32 (IEEE 802.3, reflected, as zlib.crc32) continued from `crc` over [data, data + n).
// Eight bytes a step ("slicing by 8"): table[k][b] is the CRC contribution of byte b followed by
// k zero bytes, so the eight lookups of a step are independent of each other. A byte a step was
// a chain of dependent lookups, ~5 ms for a model library's 2 MB before it may be loaded.
std::uint32_t crc32(const char* data, std::size_t n, std::uint32_t crc = 0) {
  static const auto table = [] {
    std::array<std::array<std::uint32_t, 256>, 8> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (std::size_t k = 1; k < 8; ++k)
      for (std::uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFF];
    return t;
  }();
  const auto* p = reinterpret_cast<const std::uint8_t*>(data);
  crc = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    const std::uint32_t low = crc ^ load_le<std::uint32_t>(reinterpret_cast<const char*>(p));
    const std::uint32_t high = load_le<std::uint32_t>(reinterpret_cast<const char*>(p + 4));
    crc = table[7][low & 0xFF] ^ table[6][(low >> 8) & 0xFF] ^ table[5][(low >> 16) & 0xFF] ^ table[4][low >> 24] ^
          table[3][high & 0xFF] ^ table[2][(high >> 8) & 0xFF] ^ table[1][(high >> 16) & 0xFF] ^ table[0][high >> 24];
  }
  for (; n > 0; --n, ++p) crc = table[0][(crc ^ *p) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

// CRC-32 of the file's first n bytes.
std::uint32_t file_crc32(std::ifstream& f, std::uint64_t n) {
  std::vector<char> buffer(1 << 20);
  std::uint32_t crc = 0;
  f.clear();
  f.seekg(0);
  while (n > 0 && f) {
    const auto chunk = static_cast<std::streamsize>(std::min<std::uint64_t>(n, buffer.size()));
    f.read(buffer.data(), chunk);
    crc = crc32(buffer.data(), static_cast<std::size_t>(f.gcount()), crc);
    n -= static_cast<std::uint64_t>(f.gcount());
    if (f.gcount() == 0) break;
  }
  return crc;
}

}  // namespace

std::string read_so_metadata(const std::string& path, std::uint64_t* block_end) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return "";
  const std::uint64_t at = elf_end(f);
  if (at == 0) return "";
  char head[16];
  f.clear();
  f.seekg(static_cast<std::streamoff>(at));
  if (!f.read(head, 16) || std::memcmp(head, kSoMagic, 8) != 0) return "";
  const auto n = load_le<std::uint64_t>(head + 8);
  if (n == 0 || n > (1u << 20)) return "";
  std::string json(n, '\0');
  if (!f.read(json.data(), static_cast<std::streamsize>(n))) return "";
  char checksums[16] = {};
  const bool has_checksums = f.read(checksums, 16) && std::memcmp(checksums, kSoChecksums, 8) == 0;
  if (has_checksums &&
      (file_crc32(f, at) != load_le<std::uint32_t>(checksums + 8) ||
       crc32(json.data(), json.size()) != load_le<std::uint32_t>(checksums + 12)))
    throw Error(path + ": damaged shared library (its checksum does not match)");
  const std::uint64_t block = 16 + n + (has_checksums ? 16 : 0);
  if (block_end != nullptr) *block_end = at + (block + kSoBlockAlign - 1) / kSoBlockAlign * kSoBlockAlign;
  return json;
}

namespace {

// A .pt2's zip records carry CRC-32s that PyTorch's reader does not check, and a flipped byte in
// the package's library would run: every stored record is checked here before it is loaded, but
// our constants (weights: checked against their index and the model, see check_stored_constants).
// Throws torchchat::Error for a mismatch; leaves a zip it cannot parse to the package loader.
void check_pt2_checksums(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  f.seekg(0, std::ios::end);
  const auto size = static_cast<std::uint64_t>(f.tellg());
  const auto read_at = [&](std::uint64_t at, std::size_t n) {
    std::string out(n, '\0');
    f.clear();
    f.seekg(static_cast<std::streamoff>(at));
    if (at + n > size || !f.read(out.data(), static_cast<std::streamsize>(n))) out.clear();
    return out;
  };
  // The end of central directory record, within the last 64 KiB + 22 bytes.
  const std::uint64_t tail_at = size > 65557 ? size - 65557 : 0;
  const std::string tail = read_at(tail_at, static_cast<std::size_t>(size - tail_at));
  const std::size_t eocd = tail.rfind(std::string("PK\x05\x06", 4));
  if (eocd == std::string::npos || eocd + 22 > tail.size()) return;
  std::uint64_t entries = load_le<std::uint16_t>(tail.data() + eocd + 10);
  std::uint64_t directory_at = load_le<std::uint32_t>(tail.data() + eocd + 16);
  if (directory_at == 0xFFFFFFFFu && eocd >= 20 && tail.compare(eocd - 20, 4, std::string("PK\x06\x07", 4)) == 0) {
    const std::string zip64 = read_at(load_le<std::uint64_t>(tail.data() + eocd - 20 + 8), 56);
    if (zip64.size() != 56 || zip64.compare(0, 4, std::string("PK\x06\x06", 4)) != 0) return;
    entries = load_le<std::uint64_t>(zip64.data() + 32);
    directory_at = load_le<std::uint64_t>(zip64.data() + 48);
  }
  std::uint64_t at = directory_at;
  for (std::uint64_t i = 0; i < entries; ++i) {
    const std::string entry = read_at(at, 46);
    if (entry.size() != 46 || entry.compare(0, 4, std::string("PK\x01\x02", 4)) != 0) return;
    const auto method = load_le<std::uint16_t>(entry.data() + 10);
    const auto crc = load_le<std::uint32_t>(entry.data() + 16);
    std::uint64_t stored = load_le<std::uint32_t>(entry.data() + 20), local_at = load_le<std::uint32_t>(entry.data() + 42);
    const auto name_len = load_le<std::uint16_t>(entry.data() + 28), extra_len = load_le<std::uint16_t>(entry.data() + 30);
    const std::string name = read_at(at + 46, name_len), extra = read_at(at + 46 + name_len, extra_len);
    at += 46 + name_len + extra_len + load_le<std::uint16_t>(entry.data() + 32);
    // Zip64: the sizes and offset that do not fit 32 bits are in extra field 1, in this order.
    for (std::size_t x = 0; x + 4 <= extra.size();) {
      const auto id = load_le<std::uint16_t>(extra.data() + x), len = load_le<std::uint16_t>(extra.data() + x + 2);
      if (id == 1) {
        std::size_t y = x + 4;
        const auto next = [&](std::uint64_t& field) {
          if (field == 0xFFFFFFFFu && y + 8 <= x + 4 + len && y + 8 <= extra.size()) {
            field = load_le<std::uint64_t>(extra.data() + y);
            y += 8;
          }
        };
        std::uint64_t original = load_le<std::uint32_t>(entry.data() + 24);
        next(original);
        next(stored);
        next(local_at);
      }
      x += 4 + len;
    }
    const std::string suffix = "torchchat/constants.bin";
    if (method != 0 || (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0))
      continue;
    const std::string local = read_at(local_at, 30);
    if (local.size() != 30 || local.compare(0, 4, std::string("PK\x03\x04", 4)) != 0)
      throw Error(path + ": damaged .pt2 package (record " + name + ")");
    const std::uint64_t data_at =
        local_at + 30 + load_le<std::uint16_t>(local.data() + 26) + load_le<std::uint16_t>(local.data() + 28);
    if (data_at + stored > size) throw Error(path + ": truncated .pt2 package (record " + name + ")");
    std::vector<char> buffer(1 << 20);
    std::uint32_t actual = 0;
    f.clear();
    f.seekg(static_cast<std::streamoff>(data_at));
    for (std::uint64_t left = stored; left > 0;) {
      const auto chunk = static_cast<std::streamsize>(std::min<std::uint64_t>(left, buffer.size()));
      if (!f.read(buffer.data(), chunk)) throw Error(path + ": truncated .pt2 package (record " + name + ")");
      actual = crc32(buffer.data(), static_cast<std::size_t>(chunk), actual);
      left -= static_cast<std::uint64_t>(chunk);
    }
    if (actual != crc) throw Error(path + ": damaged .pt2 package (the checksum of " + name + " does not match)");
  }
}

// The torchchat metadata of a .pt2 read from the zip itself, without loading the package's
// shared library (AOTI's own metadata file, data/aotinductor/model/*_metadata.json, holds it
// under kPt2Key); "" if it cannot be read, and the package loader then says why.
std::string read_pt2_metadata(const std::string& path) {
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    const std::string suffix = "_metadata.json";
    for (const std::string& name : reader.getAllRecords()) {
      if (name.rfind("data/aotinductor/", 0) != 0 || name.size() < suffix.size() ||
          name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      const auto [data, size] = reader.getRecord(name);
      const auto meta = nlohmann::json::parse(static_cast<const char*>(data.get()),
                                              static_cast<const char*>(data.get()) + size, nullptr, false);
      if (meta.is_object() && meta.contains(kPt2Key) && meta.at(kPt2Key).is_string())
        return meta.at(kPt2Key).get<std::string>();
    }
  } catch (const std::exception&) {
  }
  return "";
}

// Before the model's shared library is loaded: its code may use instructions this CPU lacks
// (export --target-cpu), and loading runs some of it.
void require_cpu_for(const std::string& path, const std::string& json) {
  ModelMetadata metadata;
  try {
    metadata = parse_metadata_json(json);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  require_cpu_features(metadata, path);
}

}  // namespace

namespace {

using torch::inductor::AOTIModelContainerRunner;

// What the compiled model records about one of its constants.
struct CompiledConstant {
  std::string name;
  std::int32_t dtype;      // c10::ScalarType's value (AOTI's dtype codes are the same)
  std::size_t bytes;       // its storage's size, rounded up to 64 bytes
  bool folded;             // computed by the model itself from other constants
};

// The runner offers the constants' names and dtypes only; their sizes are in the model
// library's C interface, behind the runner's protected container handle and library, which a
// member pointer named through a derived class reads.
struct RunnerInternals : AOTIModelContainerRunner {
  static std::vector<CompiledConstant> constants(AOTIModelContainerRunner& runner) {
    AOTInductorModelContainerHandle handle = runner.*(&RunnerInternals::container_handle_);
    at::DynamicLibrary& library = *(runner.*(&RunnerInternals::model_so_));
    const auto count = reinterpret_cast<decltype(&AOTInductorModelContainerGetNumConstants)>(
        library.sym("AOTInductorModelContainerGetNumConstants"));
    const auto name = reinterpret_cast<decltype(&AOTInductorModelContainerGetConstantName)>(
        library.sym("AOTInductorModelContainerGetConstantName"));
    const auto dtype = reinterpret_cast<decltype(&AOTInductorModelContainerGetConstantDtype)>(
        library.sym("AOTInductorModelContainerGetConstantDtype"));
    const auto size = reinterpret_cast<decltype(&AOTInductorModelContainerGetConstantDataSize)>(
        library.sym("AOTInductorModelContainerGetConstantDataSize"));
    const auto folded = reinterpret_cast<decltype(&AOTInductorModelContainerGetConstantFromFolded)>(
        library.sym("AOTInductorModelContainerGetConstantFromFolded"));
    std::size_t n = 0;
    if (count(handle, &n) != AOTI_RUNTIME_SUCCESS) throw std::runtime_error("cannot count the model's constants");
    std::vector<CompiledConstant> out(n);
    for (std::size_t i = 0; i < n; ++i) {
      const char* constant_name = nullptr;
      if (name(handle, i, &constant_name) != AOTI_RUNTIME_SUCCESS || dtype(handle, i, &out[i].dtype) != AOTI_RUNTIME_SUCCESS ||
          size(handle, i, &out[i].bytes) != AOTI_RUNTIME_SUCCESS || folded(handle, i, &out[i].folded) != AOTI_RUNTIME_SUCCESS)
        throw std::runtime_error("cannot read the model's constant " + std::to_string(i));
      out[i].name = constant_name;
    }
    return out;
  }
};

// The stored constants must be exactly those the compiled model reads, with its dtypes and sizes:
// AOTI only warns about a constant it is not given (a damaged name in the index) and runs on with
// a null tensor in its place.
void check_stored_constants(AOTIModelContainerRunner& runner, const std::unordered_map<std::string, at::Tensor>& stored,
                            const std::string& path) {
  std::size_t needed = 0;
  for (const CompiledConstant& c : RunnerInternals::constants(runner)) {
    if (c.folded) continue;
    ++needed;
    const auto it = stored.find(c.name);
    if (it == stored.end()) throw Error(path + ": damaged constants: the model's constant " + c.name + " is not stored");
    const at::Tensor& t = it->second;
    if (static_cast<std::int32_t>(t.scalar_type()) != c.dtype)
      throw Error(path + ": damaged constants: " + c.name + " is stored as " + std::string(c10::toString(t.scalar_type())) +
                  ", the model reads " + std::string(c10::toString(static_cast<c10::ScalarType>(c.dtype))));
    const std::size_t bytes = (t.storage().nbytes() + 63) / 64 * 64;
    if (bytes != c.bytes)
      throw Error(path + ": damaged constants: " + c.name + " has " + std::to_string(t.storage().nbytes()) +
                  " bytes stored, the model reads " + std::to_string(c.bytes));
  }
  if (stored.size() != needed) throw Error(path + ": damaged constants: the index holds constants the model does not have");
}

// The metadata's context must fit the compiled model: its rotary table (one row per position,
// indexed by position) and its KV caches [1, Hkv, S, D] (torchchat/model.py setup_caches).
void check_context(AOTIModelContainerRunner& runner, int max_seq_len) {
  std::int64_t rope_rows = -1, cache_len = -1;
  for (const auto& [fqn, t] : runner.extract_constants_map(/*use_inactive=*/false)) {
    const auto ends_with = [&](const std::string& tail) {
      return fqn.size() >= tail.size() && fqn.compare(fqn.size() - tail.size(), tail.size(), tail) == 0;
    };
    if (fqn == "rope" && t.dim() >= 1) rope_rows = t.size(0);
    if ((ends_with("kv_cache.k") || ends_with("kv_cache.v")) && t.dim() == 4)
      cache_len = cache_len < 0 ? t.size(2) : std::min(cache_len, t.size(2));
  }
  if (rope_rows < 0 || cache_len < 0) throw Error("the model has no rotary table or KV cache (not a torchchat export?)");
  if (max_seq_len > rope_rows || max_seq_len > cache_len)
    throw Error("the metadata's max_seq_len " + std::to_string(max_seq_len) + " exceeds the compiled model's context of " +
                std::to_string(std::min(rope_rows, cache_len)) + " (damaged metadata?)");
}

}  // namespace

struct AotiBackend::Model {
  // The .so's weights, when stored after it: the model holds pointers to these tensors,
  // so they are declared first and destroyed last.
  std::unique_ptr<MappedConstants> constants;
  std::unique_ptr<torch::inductor::AOTIModelContainerRunnerCpu> so;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> pt2;
  at::Tensor logits;  // the last call's output, alive while the caller reads it
  // kv_len and n_logits are views of this, their lengths the sizes
  // (torchchat/model.py Transformer.forward; the contents are never read).
  at::Tensor lengths;

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) {
    return so ? so->run(inputs) : pt2->run(inputs);
  }
};

AotiBackend::AotiBackend(const BackendOptions& options) : model_(std::make_unique<Model>()) {
  // TORCHCHAT_KERNELS naming a level that is unknown or that this CPU lacks.
  if (const char* error = kernels::isa_error()) throw Error(error);
  const std::string& path = options.model_path;
  const Format format = sniff(path);
  std::string json;
  try {
    if (format == Format::So) {
      // Metadata first: a foreign library never had it, a truncated one may have lost
      // it; either way we stop before dlopen.
      std::uint64_t metadata_end = 0;
      json = read_so_metadata(path, &metadata_end);
      if (json.empty())
        throw Error(path + ": no torchchat metadata (truncated, or not exported by `torchchat.py export`)");
      require_cpu_for(path, json);
      model_->constants = std::make_unique<MappedConstants>(path, metadata_end);
      // dlopen searches the library path for a bare file name: make it a path.
      const std::string so_path = path.find('/') == std::string::npos ? "./" + path : path;
      model_->so = std::make_unique<torch::inductor::AOTIModelContainerRunnerCpu>(so_path, 1);
      if (!model_->constants->empty()) {
        check_stored_constants(*model_->so, model_->constants->tensors(), path);
        // user_managed: the model uses our tensors as they are (no copy); all must be given.
        model_->so->update_constant_buffer(model_->constants->tensors(), /*use_inactive=*/false,
                                           /*validate_full_updates=*/true, /*user_managed=*/true);
      }
    } else {
      // The loader logs warnings about foreign zips before it throws; the error we
      // raise says it in one line.
      check_pt2_checksums(path);
      if (const std::string early = read_pt2_metadata(path); !early.empty()) require_cpu_for(path, early);
      const int log_level = FLAGS_caffe2_log_level;
      FLAGS_caffe2_log_level = std::max(log_level, 2);  // errors only
      try {
        model_->pt2 = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path);
      } catch (...) {
        FLAGS_caffe2_log_level = log_level;
        throw;
      }
      FLAGS_caffe2_log_level = log_level;
      model_->constants = std::make_unique<MappedConstants>(path, kPt2ConstantsAt);
      if (!model_->constants->empty()) {
        check_stored_constants(*model_->pt2->get_runner(), model_->constants->tensors(), path);
        model_->pt2->update_constant_buffer(model_->constants->tensors(), /*use_inactive=*/false,
                                            /*validate_full_updates=*/true, /*user_managed=*/true);
      }
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
  try {
    check_context(model_->so ? *model_->so : *model_->pt2->get_runner(), metadata_.max_seq_len);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  } catch (const std::exception& e) {
    throw Error(path + ": cannot read the model's constants: " + first_line(e));
  }
  // Models that call our kernels (libtorchchat_kernels, linked in): report now, not
  // mid-generation, if this CPU runs their portable fallback.
  if (runs_our_kernels(metadata_)) kernels::isa();
  model_->lengths = at::empty({metadata_.max_seq_len}, at::kLong);
  // For tests: every forward() call appended as a JSON line (what the model was fed).
  if (const char* trace = std::getenv("TORCHCHAT_AOTI_TRACE")) trace_path_ = trace;
}

AotiBackend::~AotiBackend() = default;

std::string AotiBackend::kernels() const { return runs_our_kernels(metadata_) ? kernels::isa() : ""; }

std::span<const float> AotiBackend::forward(const std::int64_t* tokens, int n, int start_pos) {
  // Checked here because the compiled model reports out-of-range indices with a
  // stack trace on stderr before it throws.
  check_forward_args(metadata_, tokens, n, start_pos);
  if (!trace_path_.empty()) {
    std::ofstream trace(trace_path_, std::ios::app);
    trace << "{\"start_pos\": " << start_pos << ", \"tokens\": [";
    for (int i = 0; i < n; ++i) trace << (i ? ", " : "") << tokens[i];
    trace << "]}\n";
  }
  try {
    const at::Tensor ids = at::from_blob(const_cast<std::int64_t*>(tokens), {1, n}, at::kLong);
    const at::Tensor pos = at::arange(start_pos, start_pos + n, at::kLong);
    // Attention over the start_pos + n filled positions; logits for the last one only.
    const std::vector<at::Tensor> out =
        model_->run({ids, pos, model_->lengths.slice(0, 0, start_pos + n), model_->lengths.slice(0, 0, 1)});
    model_->logits = out.at(0).select(1, 0).to(at::kFloat).contiguous();  // [1, 1, vocab] -> [1, vocab]
  } catch (const std::exception& e) {
    throw Error("the model failed: " + first_line(e));
  }
  return {model_->logits.data_ptr<float>(), static_cast<std::size_t>(metadata_.vocab_size)};
}

// ---- Conversations of their own ----

namespace {

// One conversation's cache: tensors for the model's all-zero constants, by name.
class AotiKvState final : public KvState {
 public:
  // `base_taken`: the backend's flag, cleared when the state holding the loaded buffers goes.
  AotiKvState(std::unordered_map<std::string, at::Tensor> tensors, bool* base_taken)
      : tensors(std::move(tensors)), base_taken_(base_taken) {}
  ~AotiKvState() override {
    if (base_taken_ != nullptr) *base_taken_ = false;
  }
  std::vector<std::span<std::byte>> bytes() override {
    std::vector<std::string> names;
    for (const auto& entry : tensors) names.push_back(entry.first);
    std::sort(names.begin(), names.end());  // a fixed order for session files
    std::vector<std::span<std::byte>> spans;
    for (const std::string& name : names) {
      const at::Storage& storage = tensors.at(name).storage();
      spans.emplace_back(static_cast<std::byte*>(storage.mutable_data()), storage.nbytes());
    }
    return spans;
  }
  void zero() {
    for (auto& entry : tensors) {
      const at::Storage& storage = entry.second.storage();
      std::memset(storage.mutable_data(), 0, storage.nbytes());
    }
  }
  // The model keeps pointers to these tensors while the state is in use: the map stays put.
  std::unordered_map<std::string, at::Tensor> tensors;

 private:
  bool* base_taken_;
};

}  // namespace

std::unique_ptr<KvState> AotiBackend::new_kv_state() {
  if (!model_->constants || model_->constants->zero_names().empty()) return nullptr;
  if (!base_kv_taken_) {
    // The first conversation takes the cache the model was loaded with: one session costs nothing more.
    std::unordered_map<std::string, at::Tensor> tensors;
    for (const std::string& name : model_->constants->zero_names())
      tensors.emplace(name, model_->constants->tensors().at(name));
    base_kv_taken_ = true;
    auto state = std::make_unique<AotiKvState>(std::move(tensors), &base_kv_taken_);
    state->zero();  // an earlier conversation may have written it
    return state;
  }
  return std::make_unique<AotiKvState>(model_->constants->new_zeros(), nullptr);
}

void AotiBackend::use_kv_state(KvState& state) {
  if (active_kv_ == &state) return;
  auto& tensors = static_cast<AotiKvState&>(state).tensors;
  try {
    // user_managed: the model reads and writes these tensors in place (no copy).
    if (model_->so) model_->so->update_constant_buffer(tensors, false, false, true);
    else model_->pt2->update_constant_buffer(tensors, false, false, true);
  } catch (const std::exception& e) {
    throw Error("cannot switch the model's KV cache: " + first_line(e));
  }
  active_kv_ = &state;
}

void AotiBackend::release_kv_state(KvState& state) {
  if (active_kv_ != &state) return;
  // Back to the loaded buffers, which outlive every state: the model never keeps pointers
  // into a state that may be destroyed.
  try {
    if (model_->so) model_->so->update_constant_buffer(model_->constants->tensors(), false, false, true);
    else model_->pt2->update_constant_buffer(model_->constants->tensors(), false, false, true);
  } catch (const std::exception& e) {
    throw Error("cannot switch the model's KV cache: " + first_line(e));
  }
  active_kv_ = nullptr;
}

}  // namespace torchchat
