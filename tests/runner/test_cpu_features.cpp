// The CPU features an artifact needs against this CPU, with /proc/cpuinfo (the kernel's view of
// CPUID and of the registers the OS saves) as the independent reference.

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "torchchat/cpu_features.h"
#include "torchchat/error.h"

namespace torchchat {
namespace {

[[maybe_unused]] std::set<std::string> cpuinfo_flags() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    return flags;
  }
  return {};
}

// GCC's names (what artifacts record) -> the kernel's.
const std::map<std::string, std::string> kCpuinfoName = {
    {"avx", "avx"},           {"avx2", "avx2"},           {"fma", "fma"},           {"f16c", "f16c"},
    {"bmi", "bmi1"},          {"bmi2", "bmi2"},           {"lzcnt", "abm"},         {"avx512f", "avx512f"},
    {"avx512bw", "avx512bw"}, {"avx512cd", "avx512cd"},   {"avx512dq", "avx512dq"}, {"avx512vl", "avx512vl"},
    {"avx512vnni", "avx512_vnni"}, {"avx512bf16", "avx512_bf16"}, {"avx512fp16", "avx512_fp16"},
    {"avx512vbmi", "avx512vbmi"}, {"avx512vbmi2", "avx512_vbmi2"}, {"avx512ifma", "avx512ifma"},
    {"avx512bitalg", "avx512_bitalg"}, {"avx512vpopcntdq", "avx512_vpopcntdq"}, {"avxvnni", "avx_vnni"},
    {"amx-tile", "amx_tile"}, {"amx-int8", "amx_int8"}, {"amx-bf16", "amx_bf16"}, {"sha", "sha_ni"},
    {"aes", "aes"}};

#if defined(__x86_64__)
TEST(CpuFeatures, AgreeWithProcCpuinfo) {
  const std::set<std::string> flags = cpuinfo_flags();
  if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo flags";
  for (const auto& [name, cpuinfo] : kCpuinfoName) {
    const bool lacking = !missing_cpu_features({name}).empty();
    EXPECT_EQ(lacking, flags.count(cpuinfo) == 0) << name;
  }
}

#endif

TEST(CpuFeatures, NothingNeededNothingMissing) {
  EXPECT_TRUE(missing_cpu_features({}).empty());
  ModelMetadata m;
  EXPECT_NO_THROW(require_cpu_features(m, "old.so"));  // exported before features were recorded
}

std::string error_of(const ModelMetadata& m) {
  try {
    require_cpu_features(m, "model.so");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#if defined(__x86_64__)
TEST(CpuFeatures, AnUnknownNameIsRefusedNotIgnored) {
  ModelMetadata m;
  m.target_cpu = "native";
  m.cpu_features = {"avx2", "avx99"};
  EXPECT_EQ(missing_cpu_features(m.cpu_features), std::vector<std::string>{"avx99"});
  EXPECT_EQ(error_of(m), "model.so: needs CPU features this runner cannot check: avx99");
}

TEST(CpuFeatures, TheErrorNamesEveryMissingFeature) {
  const std::set<std::string> flags = cpuinfo_flags();
  if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo flags";
  ModelMetadata m;
  m.target_cpu = "native";
  std::string lacking;
  for (const auto& [name, cpuinfo] : kCpuinfoName) {
    m.cpu_features.push_back(name);
    if (!flags.count(cpuinfo)) lacking += (lacking.empty() ? "" : ", ") + name;
  }
  if (lacking.empty()) {
    EXPECT_EQ(error_of(m), "");
  } else {
    EXPECT_EQ(error_of(m), "model.so: compiled for native CPUs; this CPU lacks " + lacking +
                               " (export with --target-cpu avx2 for any x86-64 CPU with AVX2)");
  }
}

#else
// Off x86-64 the features are another machine's: an artifact naming any is refused in one line.
TEST(CpuFeatures, AnX86ArtifactIsRefusedOffX86) {
  ModelMetadata m;
  m.target_cpu = "avx2";
  m.cpu_features = {"avx2", "fma", "f16c"};
  EXPECT_EQ(error_of(m), "model.so: compiled for avx2 x86-64 CPUs (avx2, fma, f16c); this runner is not on x86-64: "
                         "export it on this machine, or use an ExecuTorch .pte");
}
#endif

}  // namespace
}  // namespace torchchat
