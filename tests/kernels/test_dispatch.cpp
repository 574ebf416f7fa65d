// The level the kernels choose, and TORCHCHAT_KERNELS forcing one (in child processes: the choice
// is made once per process).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "quant_linear.h"

#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

namespace {

#if defined(__x86_64__)

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

#elif defined(__aarch64__)
// One choice per process, and under qemu-user a test cannot start itself again: ctest runs this
// with TORCHCHAT_KERNELS unset, set to each level, to an unknown one, and on a CPU model without
// the dot-product extension (tests/kernels/CMakeLists.txt).
TEST(Dispatch, TheChoiceFollowsTheCpuAndTorchchatKernels) {
  const bool dotprod = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
  const char* forced = std::getenv("TORCHCHAT_KERNELS");
  const std::string level = torchchat::kernels::isa(), best = dotprod ? "neon-dotprod" : "neon";
  const char* error = torchchat::kernels::isa_error();
  const std::string message = error ? error : "";
  if (!forced || !*forced) {
    EXPECT_EQ(level, best);
    EXPECT_EQ(error, nullptr);
  } else if (std::string(forced) == "generic" || std::string(forced) == "neon") {
    EXPECT_EQ(level, forced);
    EXPECT_EQ(error, nullptr);
  } else if (std::string(forced) == "neon-dotprod") {
    if (dotprod) {
      EXPECT_EQ(level, "neon-dotprod");
      EXPECT_EQ(error, nullptr);
    } else {
      EXPECT_EQ(level, "neon");  // never an instruction the CPU lacks
      EXPECT_EQ(message, "TORCHCHAT_KERNELS=neon-dotprod: this CPU lacks the dot-product extension (asimddp)");
    }
  } else {
    EXPECT_EQ(level, best);
    EXPECT_EQ(message, std::string("TORCHCHAT_KERNELS=") + forced +
                           ": unknown kernels (expected generic, neon or neon-dotprod)");
  }
}
#endif

}  // namespace
