#include <gtest/gtest.h>

#include "unicode_regex.h"
#include "torchchat/error.h"

namespace torchchat {
namespace {

std::vector<std::string> pieces(const Regex& regex, const std::string& text) {
  std::vector<std::string> out;
  for (const auto& [begin, end] : regex.find_all(text)) out.push_back(text.substr(begin, end - begin));
  return out;
}

TEST(Regex, WhitespaceClassIsUnicodeWhiteSpace) {
  const Regex regex(R"(\s+)");
  // U+3000 ideographic space is whitespace; U+180E (Mongolian vowel separator) no longer is.
  EXPECT_EQ(pieces(regex, "a\u3000b\u180Ec"), std::vector<std::string>{"\u3000"});
}

TEST(Regex, TranslatesInsideAndOutsideClasses) {
  EXPECT_EQ(translate_pattern_for_pcre2(R"(\p{L}+)"), R"(\p{L}+)");
  const std::string inside = translate_pattern_for_pcre2(R"([^\s\p{L}])");
  EXPECT_EQ(inside.find("[^\\t-\\r "), 0u);
  EXPECT_NE(translate_pattern_for_pcre2(R"(\S)").find("[^"), std::string::npos);
  EXPECT_EQ(translate_pattern_for_pcre2(R"([]\s])").rfind("[]", 0), 0u);
}

TEST(Regex, Gpt2PatternWithLookahead) {
  const Regex regex(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
  EXPECT_EQ(pieces(regex, "Hello  world's 42!"),
            (std::vector<std::string>{"Hello", " ", " world", "'s", " 42", "!"}));
}

TEST(Regex, BadPatternIsAnError) { EXPECT_THROW(Regex("(unclosed"), Error); }

TEST(Regex, EscapeMatchesLiterally) {
  const Regex regex(escape_regex("a.b*"));
  EXPECT_EQ(pieces(regex, "axb a.b*"), std::vector<std::string>{"a.b*"});
}

}  // namespace
}  // namespace torchchat
