#include <gtest/gtest.h>

#include "utf8.h"

namespace torchchat::utf8 {
namespace {

TEST(Utf8, ValidTextIsUnchanged) {
  const std::string text = "héllo 漢字 😀 e\xCC\x81";
  EXPECT_EQ(to_valid_lossy(text), text);
  EXPECT_EQ(to_valid_per_byte(text), text);
}

TEST(Utf8, LossyReplacesMaximalSubparts) {
  // Like Python's bytes.decode("utf-8", "replace"): a truncated 3-byte sequence is one U+FFFD.
  EXPECT_EQ(to_valid_lossy("a\xE6\xBC" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(to_valid_lossy("\xFF\xFE"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(to_valid_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(to_valid_lossy("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong
}

TEST(Utf8, PerByteReplacesEachByte) {
  EXPECT_EQ(to_valid_per_byte("a\xE6\xBC" "b"), "a\xEF\xBF\xBD\xEF\xBF\xBD" "b");
}

TEST(Utf8Streamer, HoldsBackSplitCharacters) {
  Streamer streamer;
  const std::string emoji = "😀";  // F0 9F 98 80
  EXPECT_EQ(streamer.push("a"), "a");
  EXPECT_EQ(streamer.push(emoji.substr(0, 1)), "");
  EXPECT_EQ(streamer.push(emoji.substr(1, 2)), "");
  EXPECT_EQ(streamer.push(emoji.substr(3) + "b"), emoji + "b");
  EXPECT_EQ(streamer.flush(), "");
}

TEST(Utf8Streamer, EveryByteSplitGivesTheWholeText) {
  const std::string text = "Zoë 漢字 😀👍🏽 ok";
  for (std::size_t chunk = 1; chunk <= 4; ++chunk) {
    Streamer streamer;
    std::string out;
    for (std::size_t pos = 0; pos < text.size(); pos += chunk) {
      const std::string piece = streamer.push(text.substr(pos, chunk));
      // Every chunk handed out is itself valid UTF-8.
      EXPECT_EQ(to_valid_lossy(piece), piece);
      out += piece;
    }
    out += streamer.flush();
    EXPECT_EQ(out, text);
  }
}

TEST(Utf8Streamer, InvalidBytesBecomeReplacementCharacters) {
  Streamer streamer;
  EXPECT_EQ(streamer.push("\xFF" "a"), "\xEF\xBF\xBD" "a");
  EXPECT_EQ(streamer.push("\xE6\xBC"), "");
  EXPECT_EQ(streamer.push("x"), "\xEF\xBF\xBD" "x");  // the unfinished character can no longer complete
  EXPECT_EQ(streamer.push("\xF0\x9F"), "");
  EXPECT_EQ(streamer.flush(), "\xEF\xBF\xBD");
}

}  // namespace
}  // namespace torchchat::utf8
