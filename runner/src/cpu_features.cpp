#include "torchchat/cpu_features.h"

#include <algorithm>

#include "torchchat/error.h"

namespace torchchat {
namespace {

struct Feature {
  const char* name;
  bool (*present)();
};

#if defined(__x86_64__) || defined(__i386__)
// __builtin_cpu_supports takes a literal, hence one function per name. GCC's cpuinfo also
// checks that the OS saves the AVX and AVX-512 registers (XCR0). The twin of this table is
// torchchat/target_cpu.py FEATURES.
#define TORCHCHAT_FEATURE(name) {name, [] { return __builtin_cpu_supports(name) != 0; }}
const Feature kFeatures[] = {
    TORCHCHAT_FEATURE("avx"),          TORCHCHAT_FEATURE("avx2"),         TORCHCHAT_FEATURE("fma"),
    TORCHCHAT_FEATURE("f16c"),         TORCHCHAT_FEATURE("bmi"),          TORCHCHAT_FEATURE("bmi2"),
    TORCHCHAT_FEATURE("lzcnt"),        TORCHCHAT_FEATURE("avx512f"),      TORCHCHAT_FEATURE("avx512bw"),
    TORCHCHAT_FEATURE("avx512cd"),     TORCHCHAT_FEATURE("avx512dq"),     TORCHCHAT_FEATURE("avx512vl"),
    TORCHCHAT_FEATURE("avx512vnni"),   TORCHCHAT_FEATURE("avx512bf16"),   TORCHCHAT_FEATURE("avx512fp16"),
    TORCHCHAT_FEATURE("avx512vbmi"),   TORCHCHAT_FEATURE("avx512vbmi2"),  TORCHCHAT_FEATURE("avx512ifma"),
    TORCHCHAT_FEATURE("avx512bitalg"), TORCHCHAT_FEATURE("avx512vpopcntdq"), TORCHCHAT_FEATURE("avxvnni"),
    TORCHCHAT_FEATURE("amx-tile"),     TORCHCHAT_FEATURE("amx-int8"),     TORCHCHAT_FEATURE("amx-bf16"),
    TORCHCHAT_FEATURE("sha"),          TORCHCHAT_FEATURE("aes"),
};
#undef TORCHCHAT_FEATURE
#else
const Feature kFeatures[] = {{"", [] { return false; }}};  // no x86 features to check
#endif

const Feature* find(const std::string& name) {
  const auto* it = std::find_if(std::begin(kFeatures), std::end(kFeatures),
                                [&](const Feature& f) { return name == f.name; });
  return it == std::end(kFeatures) ? nullptr : it;
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& name : names) out += (out.empty() ? "" : ", ") + name;
  return out;
}

}  // namespace

std::vector<std::string> missing_cpu_features(const std::vector<std::string>& needed) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();  // needed if this runs before the static initializers that would call it
#endif
  std::vector<std::string> missing;
  for (const std::string& name : needed) {
    const Feature* feature = find(name);
    if (feature == nullptr || !feature->present()) missing.push_back(name);
  }
  return missing;
}

void require_cpu_features(const ModelMetadata& metadata, const std::string& path) {
#if !defined(__x86_64__) && !defined(__i386__)
  // The features are x86 ones (torchchat/target_cpu.py): an artifact that records any holds
  // x86-64 machine code. Portable programs (.pte) record none.
  if (!metadata.cpu_features.empty())
    throw Error(path + ": compiled for " + (metadata.target_cpu.empty() ? "" : metadata.target_cpu + " ") +
                "x86-64 CPUs (" + joined(metadata.cpu_features) +
                "); this runner is not on x86-64: export it on this machine, or use an ExecuTorch .pte");
#endif
  std::vector<std::string> unknown;
  for (const std::string& name : metadata.cpu_features)
    if (find(name) == nullptr) unknown.push_back(name);
  if (!unknown.empty()) throw Error(path + ": needs CPU features this runner cannot check: " + joined(unknown));
  const std::vector<std::string> missing = missing_cpu_features(metadata.cpu_features);
  if (missing.empty()) return;
  const std::string target = metadata.target_cpu.empty() ? "another" : metadata.target_cpu;
  throw Error(path + ": compiled for " + target + " CPUs; this CPU lacks " + joined(missing) +
              " (export with --target-cpu avx2 for any x86-64 CPU with AVX2)");
}

}  // namespace torchchat
