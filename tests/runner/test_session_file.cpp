// The session file format (runner/lib/session_file.h) without a model: round trip, zero pages
// left out, and every kind of damage refused in one line.
#include "session_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "torchchat/error.h"

namespace torchchat {
namespace {

namespace fs = std::filesystem;

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

class SessionFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("tc_session_file_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    // Two buffers: one mostly zeros (an unused cache), one odd-sized and full.
    a_.assign(5 * 4096, std::byte{0});
    for (std::size_t i = 4096; i < 4096 + 100; ++i) a_[i] = std::byte(i & 0xff);
    b_.resize(1000);
    for (std::size_t i = 0; i < b_.size(); ++i) b_[i] = std::byte((i * 7 + 1) & 0xff);
    path_ = dir_ / "s.tcs";
    write_session_file(path_.string(), "{\"x\": 1}", {std::span(a_), std::span(b_)});
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string error_of(const std::string& bytes) {
    const fs::path bad = dir_ / "bad.tcs";
    write_all(bad, bytes);
    try {
      SessionFile file(bad.string());
      std::vector<std::byte> a(a_.size()), b(b_.size());
      file.read_buffers({std::span(a), std::span(b)});
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }

  fs::path dir_, path_;
  std::vector<std::byte> a_, b_;
};

TEST_F(SessionFileTest, RoundTripsAndLeavesOutZeroPages) {
  SessionFile file(path_.string());
  EXPECT_EQ(file.header(), "{\"x\": 1}");
  std::vector<std::byte> a(a_.size(), std::byte{0x55}), b(b_.size());
  file.read_buffers({std::span(a), std::span(b)});
  EXPECT_EQ(a, a_);
  EXPECT_EQ(b, b_);
  EXPECT_LT(fs::file_size(path_), 4096u + 1000u + 200u);  // 4 of the 5 pages of `a` are zeros
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);  // no temporary left
}

TEST_F(SessionFileTest, DamageIsRefusedInOneLine) {
  const std::string good = read_all(path_);
  std::string flipped = good;
  flipped[good.size() / 2] ^= 1;
  std::string version = good;
  version[8] = 9;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {good.substr(0, good.size() / 2), "checksum"}, {flipped, "checksum"}, {"", "not a torchchat session"},
      {"hello, world, this is text", "not a torchchat session"}, {version, "format version 9"},
      {good.substr(0, 20), "truncated"}};
  for (const auto& [bytes, words] : cases) {
    const std::string message = error_of(bytes);
    EXPECT_NE(message.find(words), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos);
  }
}

TEST_F(SessionFileTest, BuffersOfAnotherShapeAreRefused) {
  SessionFile file(path_.string());
  std::vector<std::byte> a(a_.size()), b(b_.size() + 1);
  EXPECT_THROW(file.read_buffers({std::span(a), std::span(b)}), Error);
  EXPECT_THROW(file.read_buffers({std::span(a)}), Error);
}

TEST_F(SessionFileTest, AnUnwritableTargetIsAnError) {
  EXPECT_THROW(write_session_file((dir_ / "no" / "such" / "dir.tcs").string(), "{}", {}), Error);
  EXPECT_THROW(SessionFile((dir_ / "missing.tcs").string()), Error);
}

TEST(Checksum, DependsOnEveryByteAndTheSeed) {
  std::vector<std::byte> data(1000, std::byte{3});
  const std::uint64_t h = checksum64(data);
  for (const std::size_t i : {0, 31, 32, 500, 999}) {
    data[i] = std::byte{4};
    EXPECT_NE(checksum64(data), h) << i;
    data[i] = std::byte{3};
  }
  EXPECT_NE(checksum64(data, 1), h);
  EXPECT_NE(checksum64(std::span(data).first(999)), h);
}

}  // namespace
}  // namespace torchchat
