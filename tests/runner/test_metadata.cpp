#include <gtest/gtest.h>

#include "torchchat/error.h"
#include "torchchat/metadata.h"

namespace torchchat {
namespace {

const std::string kValid =
    R"({"format_version":2,"arch":"llama","vocab_size":49152,"max_seq_len":2048,"bos_id":1,"add_bos":false,)"
    R"("stop_ids":[2],"tokenizer":"hf_bpe","chat_template":"chatml","dtype":"bf16"})";

std::string with(const std::string& key, const std::string& value) {
  const std::size_t at = kValid.find("\"" + key + "\":");
  const std::size_t start = at + key.size() + 3;
  std::size_t end = start;
  int depth = 0;
  while (end < kValid.size() && !(depth == 0 && (kValid[end] == ',' || kValid[end] == '}'))) {
    if (kValid[end] == '[') ++depth;
    if (kValid[end] == ']') --depth;
    ++end;
  }
  return kValid.substr(0, start) + value + kValid.substr(end);
}

std::string error_of(const std::string& json) {
  try {
    parse_metadata_json(json);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Metadata, ChatTurns) {
  const std::string turns =
      R"({"first":[{"token":"<|im_start|>"},"user\n",{"message":"user"},{"token":"<|im_end|>"}],)"
      R"("first_with_system":[{"message":"system"},{"message":"user"}],"next":[{"token":"<|im_end|>"},{"message":"user"}]})";
  const std::string text = kValid.substr(0, kValid.size() - 1) + R"(,"chat_turns":)" + turns + "}";
  const ModelMetadata m = parse_metadata_json(text);
  ASSERT_TRUE(m.chat_template.turns);
  const ChatTurns& t = *m.chat_template.turns;
  ASSERT_EQ(t.first.size(), 4u);
  EXPECT_EQ(t.first[0].kind, ChatSegment::Kind::Token);
  EXPECT_EQ(t.first[1].text, "user\n");
  EXPECT_EQ(t.first[2].kind, ChatSegment::Kind::User);
  ASSERT_TRUE(t.first_with_system);
  EXPECT_EQ(t.first_with_system->front().kind, ChatSegment::Kind::System);
  EXPECT_EQ(parse_metadata_json(to_metadata_json(m)).chat_template.turns, m.chat_template.turns);

  auto bad = [&](const std::string& value) { return error_of(kValid.substr(0, kValid.size() - 1) + R"(,"chat_turns":)" + value + "}"); };
  EXPECT_NE(bad("[]").find("chat_turns"), std::string::npos);
  EXPECT_NE(bad(R"({"first":[]})").find("lacks \"next\""), std::string::npos);
  EXPECT_NE(bad(R"({"first":[],"next":[{"message":"user"}]})").find("closes a reply"), std::string::npos);
  EXPECT_NE(bad(R"({"first":[{"message":"system"}],"next":[{"token":"a"}]})").find("bad entry"), std::string::npos);
  EXPECT_NE(bad(R"({"first":[3],"next":[{"token":"a"}]})").find("bad entry"), std::string::npos);
}

TEST(Metadata, ParsesEveryKey) {
  const ModelMetadata m = parse_metadata_json(kValid);
  EXPECT_EQ(m.vocab_size, 49152);
  EXPECT_EQ(m.max_seq_len, 2048);
  EXPECT_EQ(m.bos_id, 1);
  EXPECT_FALSE(m.add_bos);
  EXPECT_EQ(m.stop_ids, std::vector<int>{2});
  EXPECT_EQ(m.tokenizer, TokenizerKind::HfBpe);
  EXPECT_EQ(m.chat_template.kind, ChatTemplateKind::ChatML);
  EXPECT_FALSE(m.chat_template.turns);
  EXPECT_EQ(m.dtype, "bf16");
}

TEST(Metadata, RoundTripsThroughJson) {
  const ModelMetadata m = parse_metadata_json(kValid);
  const ModelMetadata again = parse_metadata_json(to_metadata_json(m));
  EXPECT_EQ(to_metadata_json(again), to_metadata_json(m));
}

TEST(Metadata, RejectsBadValuesWithTheKeyInTheMessage) {
  EXPECT_NE(error_of("not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of("[1,2]").find("not a JSON object"), std::string::npos);
  EXPECT_NE(error_of(with("format_version", "3")).find("format_version 3"), std::string::npos);
  EXPECT_NE(error_of(with("arch", "\"gpt2\"")).find("gpt2"), std::string::npos);
  EXPECT_NE(error_of(with("vocab_size", "0")).find("vocab_size"), std::string::npos);
  EXPECT_NE(error_of(with("vocab_size", "\"big\"")).find("wrong type"), std::string::npos);
  EXPECT_NE(error_of(with("bos_id", "49152")).find("bos_id"), std::string::npos);
  EXPECT_NE(error_of(with("stop_ids", "[2, -1]")).find("stop_ids"), std::string::npos);
  EXPECT_NE(error_of(with("tokenizer", "\"wordpiece\"")).find("wordpiece"), std::string::npos);
  EXPECT_NE(error_of(with("chat_template", "\"vicuna\"")).find("vicuna"), std::string::npos);
  EXPECT_NE(error_of(with("dtype", "\"int4\"")).find("int4"), std::string::npos);
  EXPECT_NE(error_of(R"({"format_version":2})").find("lacks"), std::string::npos);
}

TEST(Metadata, QuantizeIsOptionalAndKeepsItsOrder) {
  EXPECT_EQ(parse_metadata_json(kValid).quantize, "");
  const std::string spec = R"({"linear:int4":{"groupsize":32},"embedding:int8":{"groupsize":0}})";
  const std::string quantized = kValid.substr(0, kValid.size() - 1) + R"(,"quantize":)" + spec + "}";
  const ModelMetadata m = parse_metadata_json(quantized);
  EXPECT_EQ(m.quantize, spec);
  EXPECT_EQ(parse_metadata_json(to_metadata_json(m)).quantize, spec);
  EXPECT_EQ(parse_metadata_json(kValid.substr(0, kValid.size() - 1) + R"(,"quantize":null})").quantize, "");
  EXPECT_EQ(parse_metadata_json(kValid.substr(0, kValid.size() - 1) + R"(,"quantize":{}})").quantize, "");
  EXPECT_EQ(to_metadata_json(parse_metadata_json(kValid)).find("quantize"), std::string::npos);
}

TEST(Metadata, RefusesAnOlderFormatInOneLine) {
  // Format 1 allowed a 2-input program (tokens, input_pos); this runner always passes four.
  EXPECT_EQ(error_of(with("format_version", "1")), "exported by an older version; export again");
  EXPECT_EQ(error_of(with("format_version", "0")), "exported by an older version; export again");
  EXPECT_EQ(parse_metadata_json(kValid).format_version, kFormatVersion);
}

TEST(Metadata, TargetCpuIsOptionalAndRoundTrips) {
  const ModelMetadata old = parse_metadata_json(kValid);  // exported before the keys: nothing to check
  EXPECT_EQ(old.target_cpu, "");
  EXPECT_TRUE(old.cpu_features.empty());
  EXPECT_EQ(to_metadata_json(old).find("cpu"), std::string::npos);
  const std::string body = kValid.substr(0, kValid.size() - 1);
  const ModelMetadata m = parse_metadata_json(body + R"(,"target_cpu":"avx2","cpu_features":["avx2","fma"]})");
  EXPECT_EQ(m.target_cpu, "avx2");
  EXPECT_EQ(m.cpu_features, (std::vector<std::string>{"avx2", "fma"}));
  const ModelMetadata again = parse_metadata_json(to_metadata_json(m));
  EXPECT_EQ(again.target_cpu, "avx2");
  EXPECT_EQ(again.cpu_features, m.cpu_features);
  const ModelMetadata any = parse_metadata_json(body + R"(,"target_cpu":"any","cpu_features":[]})");
  EXPECT_EQ(parse_metadata_json(to_metadata_json(any)).target_cpu, "any");
  EXPECT_NE(error_of(body + R"(,"cpu_features":"avx2"})").find("cpu_features"), std::string::npos);
  EXPECT_NE(error_of(body + R"(,"cpu_features":[2]})").find("cpu_features"), std::string::npos);
  EXPECT_NE(error_of(body + R"(,"target_cpu":2})").find("target_cpu"), std::string::npos);
}

TEST(Metadata, OurKernelsRunUnlessFp16WithoutInt8OrInt4Linears) {
  ModelMetadata m = parse_metadata_json(kValid);
  EXPECT_TRUE(runs_our_kernels(m));  // bf16: linears (AOTI) and attention
  m.dtype = "fp16";
  EXPECT_FALSE(runs_our_kernels(m));  // inductor's GEMMs and ATen's attention
  m.quantize = R"({"linear:int4":{"groupsize":32}})";
  EXPECT_TRUE(runs_our_kernels(m));
  m.quantize = R"({"linear:a8w4dq":{"groupsize":32}})";
  EXPECT_FALSE(runs_our_kernels(m));  // XNNPACK's
}

TEST(Metadata, RejectsAMalformedQuantizeEntry) {
  const auto quantize = [](const std::string& value) {
    return error_of(kValid.substr(0, kValid.size() - 1) + R"(,"quantize":)" + value + "}");
  };
  EXPECT_NE(quantize(R"("linear:int8")").find("\"quantize\" has the wrong type"), std::string::npos);
  EXPECT_NE(quantize(R"({"linear:int4":32})").find("linear:int4"), std::string::npos);
  EXPECT_NE(quantize(R"({"linear:int4":{"groupsize":[32]}})").find("linear:int4"), std::string::npos);
  EXPECT_EQ(quantize(R"({"linear:int9":{"bits":9,"kind":"new"}})"), "");  // unknown schemes: reported, not refused
}

TEST(Metadata, DescribesDtypeAndQuantization) {
  ModelMetadata m = parse_metadata_json(kValid);
  EXPECT_EQ(describe_quantize(m), "none");
  EXPECT_EQ(describe_model(m), "model: llama, vocab 49152, context 2048, dtype bf16, quantize none");
  m.quantize = R"({"linear:int4":{"groupsize":32},"embedding:int8":{"groupsize":0}})";
  EXPECT_EQ(describe_quantize(m), "linear:int4 g32 + embedding:int8");  // groupsize 0: per channel
  EXPECT_EQ(describe_model(m),
            "model: llama, vocab 49152, context 2048, dtype bf16, quantize linear:int4 g32 + embedding:int8");
  m.quantize = R"({"linear:int8":{"groupsize":0}})";
  EXPECT_EQ(describe_quantize(m), "linear:int8");
  m.quantize = R"({"precision":{"dtype":"bf16"},"linear:a8w4dq":{"groupsize":64}})";
  EXPECT_EQ(describe_quantize(m), "linear:a8w4dq g64");  // the precision is the dtype
  m.quantize = R"({"precision":{"dtype":"bf16"}})";
  EXPECT_EQ(describe_quantize(m), "none");
  m.quantize = R"({"linear:int9":{"bits":9,"kind":"new"}})";
  EXPECT_EQ(describe_quantize(m), "linear:int9 bits=9 kind=new");
}

TEST(Metadata, TellsWhetherTheLinearsRunOurKernels) {
  ModelMetadata m = parse_metadata_json(kValid);
  EXPECT_FALSE(linears_on_our_kernels(m));  // not quantized
  m.quantize = R"({"linear:int4":{"groupsize":32},"embedding:int8":{"groupsize":0}})";
  EXPECT_TRUE(linears_on_our_kernels(m));
  m.quantize = R"({"linear:int8":{"groupsize":0}})";
  EXPECT_TRUE(linears_on_our_kernels(m));
  m.quantize = R"({"precision":{"dtype":"bf16"},"linear:a8w4dq":{"groupsize":64}})";
  EXPECT_FALSE(linears_on_our_kernels(m));  // XNNPACK's
  m.quantize = R"({"embedding:int8":{"groupsize":0}})";
  EXPECT_FALSE(linears_on_our_kernels(m));
  m.quantize = "not json";
  EXPECT_FALSE(linears_on_our_kernels(m));
}

TEST(Metadata, DefaultsFollowTheLlamaVersion) {
  const ModelMetadata two = default_metadata(2), three = default_metadata(3);
  EXPECT_EQ(two.bos_id, 1);
  EXPECT_EQ(two.stop_ids, std::vector<int>{2});
  EXPECT_EQ(two.chat_template.kind, ChatTemplateKind::Llama2);
  EXPECT_EQ(three.bos_id, 128000);
  EXPECT_EQ(three.stop_ids, (std::vector<int>{128001, 128009}));
  EXPECT_EQ(three.chat_template.kind, ChatTemplateKind::Llama3);
  EXPECT_TRUE(two.add_bos && three.add_bos);
  EXPECT_THROW(default_metadata(4), Error);
}

}  // namespace
}  // namespace torchchat
