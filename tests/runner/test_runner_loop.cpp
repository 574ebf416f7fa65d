// The generate and chat loops, driven by a scripted backend.

#include <gtest/gtest.h>

#include "fakes.h"
#include "torchchat/error.h"
#include "torchchat/runner.h"

namespace torchchat {
namespace {

using testing::FakeTokenizer;
using testing::ScriptedBackend;

const FakeTokenizer kTokens({"<s>", "</s>", "<|im_start|>", "<|im_end|>"});
constexpr int kBos = 256, kEos = 257, kImEnd = 259;

ModelMetadata metadata(int max_seq_len, ChatTemplateKind chat_template = ChatTemplateKind::Llama2) {
  ModelMetadata m;
  m.vocab_size = kTokens.vocab_size();
  m.max_seq_len = max_seq_len;
  m.bos_id = kBos;
  m.add_bos = true;
  m.stop_ids = {kEos};
  m.chat_template = chat_template;
  return m;
}

std::vector<int> bytes(const std::string& text) { return kTokens.encode(text); }

GenerationConfig greedy(int max_positions = 0) {
  GenerationConfig config;
  config.max_positions = max_positions;
  config.sampler.temperature = 0;
  return config;
}

std::vector<int> concat(std::vector<int> a, const std::vector<int>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(Generate, PrefillsThePromptInOneCallAndStopsAtEos) {
  ScriptedBackend backend(metadata(64), concat(bytes("Hi!"), {kEos}), kEos);
  Generator generator(backend, kTokens, greedy());
  std::string streamed;
  const auto result = generator.generate("Say", [&](std::string_view t) { streamed += t; return true; });
  EXPECT_EQ(streamed, "Hi!");
  EXPECT_EQ(result.stop_reason, StopReason::StopToken);
  EXPECT_EQ(result.tokens, concat(bytes("Hi!"), {kEos}));
  ASSERT_EQ(backend.calls.size(), 4u);
  EXPECT_EQ(backend.calls[0].tokens, (std::vector<std::int64_t>{kBos, 'S', 'a', 'y'}));
  EXPECT_EQ(backend.calls[0].start_pos, 0);
  // The stop token is never fed.
  EXPECT_EQ(backend.history(), concat(concat({kBos}, bytes("Say")), bytes("Hi!")));
  EXPECT_EQ(result.stats.prompt_tokens, 4);
  EXPECT_EQ(result.stats.generated_tokens, 4);
}

TEST(Generate, StepLimitCountsPromptPositions) {
  ScriptedBackend backend(metadata(64), {}, 'x');
  Generator generator(backend, kTokens, greedy(6));  // BOS + "ab" = 3 positions, so 4 more tokens
  std::string streamed;
  const auto result = generator.generate("ab", [&](std::string_view t) { streamed += t; return true; });
  EXPECT_EQ(result.stop_reason, StopReason::StepLimit);
  EXPECT_EQ(streamed, "xxxx");
  EXPECT_EQ(backend.history().size(), 6u);
}

TEST(Generate, ContextFullAtMaxSeqLen) {
  ScriptedBackend backend(metadata(5), {}, 'x');
  Generator generator(backend, kTokens, greedy(0));
  const auto result = generator.generate("ab", nullptr);
  EXPECT_EQ(result.stop_reason, StopReason::ContextFull);
  EXPECT_EQ(backend.history().size(), 5u);
}

TEST(Generate, PromptTooLongIsAnError) {
  ScriptedBackend backend(metadata(4), {}, 'x');
  Generator generator(backend, kTokens, greedy());
  EXPECT_THROW(generator.generate("abcdef", nullptr), Error);
  Generator limited(backend, kTokens, greedy(2));
  EXPECT_THROW(limited.generate("abc", nullptr), Error);
  EXPECT_TRUE(backend.calls.empty());
}

TEST(Generate, CallbackCanCancel) {
  ScriptedBackend backend(metadata(64), {}, 'x');
  Generator generator(backend, kTokens, greedy());
  int calls = 0;
  const auto result = generator.generate("a", [&](std::string_view) { return ++calls < 3; });
  EXPECT_EQ(result.stop_reason, StopReason::Cancelled);
  EXPECT_EQ(calls, 3);
}

TEST(Generate, StreamsWholeUtf8Characters) {
  const std::string emoji = "😀";  // 4 byte tokens
  std::vector<int> script;
  for (const char c : "é" + emoji) script.push_back(static_cast<unsigned char>(c));
  script.push_back(kEos);
  ScriptedBackend backend(metadata(64), script, kEos);
  Generator generator(backend, kTokens, greedy());
  std::vector<std::string> chunks;
  generator.generate("a", [&](std::string_view t) { chunks.emplace_back(t); return true; });
  EXPECT_EQ(chunks, (std::vector<std::string>{"é", emoji}));
}

TEST(Generate, NeverSamplesPaddedVocabRows) {
  ModelMetadata m = metadata(64);
  m.vocab_size = kTokens.vocab_size() + 8;  // the model's output layer is padded
  ScriptedBackend backend(m, {kTokens.vocab_size() + 3, kEos}, kEos);
  Generator generator(backend, kTokens, greedy());
  const auto result = generator.generate("a", nullptr);
  ASSERT_FALSE(result.tokens.empty());
  EXPECT_LT(result.tokens.front(), kTokens.vocab_size());
}

TEST(Generate, EmptyPromptWithoutBosIsAnError) {
  ModelMetadata m = metadata(64);
  m.add_bos = false;
  ScriptedBackend backend(m, {}, 'x');
  Generator generator(backend, kTokens, greedy());
  EXPECT_THROW(generator.generate("", nullptr), Error);
}

TEST(Generate, SameSeedSameText) {
  const auto run = [](std::uint64_t seed) {
    // A backend with flat logits: every token equally likely, so the text is the RNG's.
    ScriptedBackend backend(metadata(64), {}, 0);
    GenerationConfig config;
    config.sampler = {1.0f, 1.0f, seed};
    config.max_positions = 20;
    Generator generator(backend, kTokens, config);
    return generator.generate("a", nullptr).tokens;
  };
  EXPECT_EQ(run(5), run(5));
}

TEST(Chat, HistoryIsTheConcatenatedTemplate) {
  // Replies "ok" then EOS, twice.
  const std::vector<int> reply = concat(bytes("ok"), {kEos});
  ScriptedBackend backend(metadata(256), concat(reply, reply), kEos);
  ChatSession chat(backend, kTokens, greedy(), "Sys");
  std::string first, second;
  const auto r1 = chat.reply("Hi", [&](std::string_view t) { first += t; return true; });
  const auto r2 = chat.reply("Bye", [&](std::string_view t) { second += t; return true; });
  EXPECT_EQ(first, "ok");
  EXPECT_EQ(second, "ok");
  EXPECT_EQ(r1.stop_reason, StopReason::StopToken);
  EXPECT_EQ(r2.stop_reason, StopReason::StopToken);
  EXPECT_EQ(kTokens.decode(backend.history()),
            "<s>[INST] <<SYS>>\nSys\n<</SYS>>\n\nHi [/INST]ok</s><s>[INST] Bye [/INST]ok");
}

TEST(Chat, ChatMlStopsOnImEndAndContinuesAfterIt) {
  ModelMetadata m = metadata(256, ChatTemplateKind::ChatML);
  m.add_bos = false;
  m.stop_ids = {kImEnd};
  const std::vector<int> reply = concat(bytes("yo"), {kImEnd});
  ScriptedBackend backend(m, concat(reply, reply), kImEnd);
  ChatSession chat(backend, kTokens, greedy(), "");
  chat.reply("a", nullptr);
  chat.reply("b", nullptr);
  EXPECT_EQ(kTokens.decode(backend.history()),
            "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nb<|im_end|>\n"
            "<|im_start|>assistant\nyo");
}

TEST(Chat, ContextFullEndsTheSession) {
  ScriptedBackend backend(metadata(30), {}, 'x');  // never stops by itself
  ChatSession chat(backend, kTokens, greedy(), "");
  const auto r1 = chat.reply("Hi", nullptr);
  EXPECT_EQ(r1.stop_reason, StopReason::ContextFull);
  EXPECT_TRUE(chat.over());
  EXPECT_EQ(chat.position(), 30);
  const std::size_t calls = backend.calls.size();
  EXPECT_EQ(chat.reply("more", nullptr).stop_reason, StopReason::ContextFull);
  EXPECT_EQ(backend.calls.size(), calls);
}

TEST(Chat, NoRoomForTheNextTurn) {
  const std::vector<int> reply = concat(bytes("ok"), {kEos});
  ScriptedBackend backend(metadata(24), reply, kEos);
  ChatSession chat(backend, kTokens, greedy(), "");
  EXPECT_EQ(chat.reply("Hi", nullptr).stop_reason, StopReason::StopToken);  // 18 + 2 positions
  try {
    chat.reply("Again", nullptr);
    ADD_FAILURE() << "a turn that does not fit was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the message is too long"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(chat.over());
}

TEST(Stats, SummaryNamesEveryFigure) {
  Stats stats;
  stats.prompt_tokens = 10;
  stats.generated_tokens = 5;
  stats.first_token_seconds = 0.5;
  stats.decode_seconds = 2;
  stats.prefill_seconds = 0.4;
  const std::string line = stats.summary();
  EXPECT_NE(line.find("prompt tokens: 10"), std::string::npos);
  EXPECT_NE(line.find("generated tokens: 5"), std::string::npos);
  EXPECT_NE(line.find("time to first token: 0.500 s"), std::string::npos);
  EXPECT_NE(line.find("2.00 tokens/s"), std::string::npos);
  EXPECT_NE(line.find("prefill 25.00 tokens/s"), std::string::npos);
}

}  // namespace
}  // namespace torchchat
