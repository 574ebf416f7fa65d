// Tokenizer files from memory: format detection, a hand-built tokenizer.bin,
// and malformed inputs of every format giving a one-line Error.

#include <gtest/gtest.h>

#include <cstring>

#include "torchchat/error.h"
#include "torchchat/tokenizer.h"

namespace torchchat {
namespace {

struct BinPiece {
  std::string text;
  float score;
};

std::string make_bin(const std::vector<BinPiece>& pieces) {
  std::string out(4, '\0');
  std::int32_t max_len = 0;
  for (const auto& p : pieces) max_len = std::max<std::int32_t>(max_len, static_cast<std::int32_t>(p.text.size()));
  std::memcpy(out.data(), &max_len, 4);
  for (const auto& p : pieces) {
    char header[8];
    const auto len = static_cast<std::int32_t>(p.text.size());
    std::memcpy(header, &p.score, 4);
    std::memcpy(header + 4, &len, 4);
    out.append(header, 8);
    out += p.text;
  }
  return out;
}

// <unk>, <s>, </s>, 256 byte pieces, then a few normal pieces.
std::string small_sentencepiece_bin() {
  std::vector<BinPiece> pieces = {{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    pieces.push_back({name, 0});
  }
  for (const char* normal : {" ", "a", "b", "c", " a", "ab", " ab", "abc"}) pieces.push_back({normal, -float(pieces.size())});
  return make_bin(pieces);
}

std::string error_of(const std::string& content) {
  try {
    parse_tokenizer(content, "'test'");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(SentencePieceBin, EncodesWithMergesAndByteFallback) {
  const auto tok = parse_tokenizer(small_sentencepiece_bin(), "'test'");
  EXPECT_EQ(tok->kind(), TokenizerKind::SentencePiece);
  EXPECT_EQ(tok->vocab_size(), 3 + 256 + 8);
  const int first_normal = 259;
  // "abc" -> " abc" (dummy prefix): " ab" has a better score than "abc" built later? scores are -index, so
  // " a" (263) beats "ab" (264); then " ab" (265) is formed; "c" stays.
  const auto ids = tok->encode("abc");
  EXPECT_EQ(ids, (std::vector<int>{first_normal + 6, first_normal + 3}));
  EXPECT_EQ(tok->decode(ids), "abc");
  // 'z' is not in the vocabulary: byte fallback to <0x7A> = id 3 + 0x7A.
  EXPECT_EQ(tok->encode("z"), (std::vector<int>{first_normal, 3 + 0x7A}));
  EXPECT_EQ(tok->decode(tok->encode("z")), "z");
  EXPECT_TRUE(tok->encode("").empty());
  EXPECT_EQ(tok->special_token_id("<s>"), 1);
  EXPECT_EQ(tok->special_token_id("</s>"), 2);
  // Streaming: the dummy prefix is dropped after BOS only.
  EXPECT_EQ(tok->decode_token(first_normal + 6, 1), "ab");
  EXPECT_EQ(tok->decode_token(first_normal + 6, first_normal), " ab");
}

TEST(TokenizerLoading, EmptyOrTruncatedBinIsAnError) {
  const std::string good = small_sentencepiece_bin();
  EXPECT_NE(error_of("").find("is empty"), std::string::npos);
  EXPECT_NE(error_of(good.substr(0, 3)).find("truncated"), std::string::npos);
  for (const std::size_t cut : {good.size() - 1, good.size() - 3, std::size_t{10}, std::size_t{6}}) {
    EXPECT_NE(error_of(good.substr(0, cut)).find("truncated"), std::string::npos) << cut;
  }
  EXPECT_NE(error_of(good.substr(0, 4)).find("no tokens"), std::string::npos);
}

TEST(TokenizerLoading, GarbageIsAnError) {
  EXPECT_NE(error_of(std::string("\xff\xff\xff\xff garbage", 12)).find("max_token_length"), std::string::npos);
  EXPECT_NE(error_of("hello world, not a tokenizer").find("tokenizer"), std::string::npos);
  EXPECT_NE(error_of(std::string("\x0a\x05\x0a\x03\x61\x62\x63", 7)).find("utils/tokenizer.py"), std::string::npos);
}

TEST(TokenizerLoading, BadTiktokenIsAnError) {
  EXPECT_NE(error_of("IQ== 0\nIg== x\n").find("line 2"), std::string::npos);
  EXPECT_NE(error_of("IQ== 0\n\nIg== 1\n").find("line 2 is empty"), std::string::npos);
  EXPECT_NE(error_of("IQ== 0\nIQ== 1\n").find("same token"), std::string::npos);
  EXPECT_NE(error_of("IQ== 0\nIg== 2\n").find("missing rank 1"), std::string::npos);
  EXPECT_NE(error_of("IQ== 0\nI!== 1\n").find("base64"), std::string::npos);
  EXPECT_NE(error_of("IQ== 0\n").find("no token for byte"), std::string::npos);
}

TEST(TokenizerLoading, BadJsonIsAnError) {
  EXPECT_NE(error_of("{\"model\": ").find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of("{}").find("unexpected structure"), std::string::npos);
  EXPECT_NE(error_of(R"({"model":{"type":"Unigram","vocab":[]}})").find("Unigram"), std::string::npos);
  const std::string no_byte_level = R"({"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]},"pre_tokenizer":null})";
  EXPECT_NE(error_of(no_byte_level).find("byte-level"), std::string::npos);
  const std::string bad_merge = R"({"model":{"type":"BPE","vocab":{"a":0},"merges":["a c"]},"pre_tokenizer":{"type":"ByteLevel"}})";
  EXPECT_NE(error_of(bad_merge).find("missing from the vocab"), std::string::npos);
  const std::string normalizer = R"({"normalizer":{"type":"NFKC"},"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"pre_tokenizer":{"type":"ByteLevel"}})";
  EXPECT_NE(error_of(normalizer).find("NFKC"), std::string::npos);
}

// The vocab and the merges are read two ways: straight into the tables when they have their usual
// shape, through the DOM otherwise. Every spelling of one tokenizer must give the same tokenizer.
TEST(TokenizerLoading, EverySpellingOfAJsonTokenizerReadsAlike) {
  const std::string byte_level = R"("pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false})";
  const std::vector<std::string> spellings = {
      R"({"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2,"abab":3},"merges":["a b","ab ab"]},)" + byte_level + "}",
      R"({"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2,"abab":3},"merges":[["a","b"],["ab","ab"]]},)" + byte_level + "}",
      // ids written as floats, a merge list of mixed forms: the DOM route
      R"({"model":{"type":"BPE","vocab":{"a":0.0,"b":1,"ab":2,"abab":3e0},"merges":["a b",["ab","ab"]]},)" + byte_level + "}",
      // other key orders
      "{" + byte_level + R"(,"model":{"merges":["a b","ab ab"],"vocab":{"abab":3,"ab":2,"b":1,"a":0},"type":"BPE"}})",
  };
  for (const std::string& json : spellings) {
    const auto tok = parse_tokenizer(json, "'test'");
    EXPECT_EQ(tok->kind(), TokenizerKind::HfBpe) << json;
    EXPECT_EQ(tok->vocab_size(), 4) << json;
    EXPECT_EQ(tok->encode("ababab"), (std::vector<int>{3, 2})) << json;
    EXPECT_EQ(tok->encode("ba"), (std::vector<int>{1, 0})) << json;
    EXPECT_EQ(tok->decode(std::vector<int>{3, 2, 1}), "abababb") << json;
  }
}

TEST(TokenizerLoading, BadJsonVocabOrMergesIsAnError) {
  const std::string byte_level = R"("pre_tokenizer":{"type":"ByteLevel"})";
  const auto with_model = [&](const std::string& model) { return R"({"model":{"type":"BPE",)" + model + "}," + byte_level + "}"; };
  EXPECT_NE(error_of(with_model(R"("vocab":{"a":0},"vocab":{"b":0},"merges":[])")).find("appears twice"), std::string::npos);
  EXPECT_NE(error_of(with_model(R"("vocab":{"a":0},"merges":[],"merges":[])")).find("appears twice"), std::string::npos);
  EXPECT_NE(error_of(with_model(R"("vocab":{"a":0,"b":1,"a":2},"merges":[])")).find("appears twice"), std::string::npos);
  EXPECT_NE(error_of(with_model(R"("vocab":{"a":16777216},"merges":[])")).find("out of range"), std::string::npos);
  EXPECT_NE(error_of(with_model(R"("vocab":{"a":-1},"merges":[])")).find("out of range"), std::string::npos);
  EXPECT_NE(error_of(with_model(R"("vocab":{"a":"0"},"merges":[])")).find("unexpected structure"), std::string::npos);
  EXPECT_NE(error_of(with_model(R"("vocab":{"a":0},"merges":["a a a"])")).find("one space"), std::string::npos);
  EXPECT_NE(error_of(with_model(R"("vocab":{"a":0},"merges":[["a","a","a"]])")).find("unexpected structure"), std::string::npos);
  EXPECT_NE(error_of(with_model(R"("vocab":{"a":0},"merges":[["a","b"]])")).find("missing from the vocab"), std::string::npos);
  EXPECT_NE(error_of(with_model(R"("vocab":{"a":0},"merges":["a a"]},)")).find("not valid JSON"), std::string::npos);
}

TEST(TokenizerLoading, MessagesAreOneLine) {
  for (const std::string& bad : {std::string(""), std::string("{\"model\": "), std::string("IQ== 0\nIg== x\n"),
                                  small_sentencepiece_bin().substr(0, 20)}) {
    EXPECT_EQ(error_of(bad).find('\n'), std::string::npos) << error_of(bad);
  }
}

TEST(TokenizerLoading, MissingFileIsAnError) {
  EXPECT_THROW(load_tokenizer("/nonexistent/tokenizer.bin"), Error);
  EXPECT_THROW(load_tokenizer("/"), Error);
}

}  // namespace
}  // namespace torchchat
