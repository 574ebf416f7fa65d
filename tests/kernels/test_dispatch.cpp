// The level the kernels choose, and TORCHCHAT_KERNELS forcing one (in child processes: the choice
// is made once per process).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "quant_linear.h"

namespace {

TEST(Dispatch, BestLevelNeedsNoFallbackOnAnAvx2Cpu) {
  if (std::getenv("TORCHCHAT_KERNELS")) GTEST_SKIP() << "TORCHCHAT_KERNELS is set";
  const std::string level = torchchat::kernels::isa();
  EXPECT_EQ(torchchat::kernels::isa_error(), nullptr);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    EXPECT_NE(level, "generic");
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
    EXPECT_EQ(level.rfind("avx512", 0), 0u);
  }
}

TEST(Dispatch, ForcedLevels) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // a new process, which has not chosen yet
  EXPECT_EXIT(
      {
        setenv("TORCHCHAT_KERNELS", "generic", 1);
        std::exit(std::string(torchchat::kernels::isa()) == "generic" && !torchchat::kernels::isa_error() ? 0 : 1);
      },
      testing::ExitedWithCode(0), "portable fallback");
  EXPECT_EXIT(
      {
        setenv("TORCHCHAT_KERNELS", "sse9", 1);
        std::exit(torchchat::kernels::isa_error() ? 0 : 1);
      },
      testing::ExitedWithCode(0), "");
  if (!__builtin_cpu_supports("avx512f")) {
    EXPECT_EXIT(
        {
          setenv("TORCHCHAT_KERNELS", "avx512", 1);
          const char* e = torchchat::kernels::isa_error();
          std::exit(e && std::string(e).find("lacks AVX-512") != std::string::npos ? 0 : 1);
        },
        testing::ExitedWithCode(0), "");
  }
}

}  // namespace
