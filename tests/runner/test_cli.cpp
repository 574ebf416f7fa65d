#include <gtest/gtest.h>

#include <sstream>

#include "fakes.h"
#include "torchchat/cli.h"

namespace torchchat {
namespace {

CliOptions parse(std::vector<const char*> args) {
  args.insert(args.begin(), "runner");
  return parse_cli(static_cast<int>(args.size()), args.data());
}

TEST(Cli, DefaultsAreTheSeeds) {
  const CliOptions o = parse({"model.so"});
  EXPECT_EQ(o.model_path, "model.so");
  EXPECT_FLOAT_EQ(o.temperature, 1.0f);
  EXPECT_FLOAT_EQ(o.top_p, 0.9f);
  EXPECT_FALSE(o.seed);
  EXPECT_EQ(o.steps, 256);
  EXPECT_FALSE(o.prompt);
  EXPECT_EQ(o.mode, Mode::Generate);
  EXPECT_EQ(o.vocab_size, 0);
  EXPECT_EQ(o.llama_version, 2);
}

TEST(Cli, ParsesEveryFlag) {
  const CliOptions o = parse({"-t", "0.5", "m.pte", "-p", "0.95", "-s", "42", "-n", "0", "-i", "Once upon", "-z", "tok.bin",
                              "-m", "chat", "-y", "Be brief", "-v", "32000", "-l", "3"});
  EXPECT_EQ(o.model_path, "m.pte");
  EXPECT_FLOAT_EQ(o.temperature, 0.5f);
  EXPECT_FLOAT_EQ(o.top_p, 0.95f);
  EXPECT_EQ(o.seed, 42u);
  EXPECT_EQ(o.steps, 0);
  EXPECT_EQ(o.prompt, "Once upon");
  EXPECT_EQ(o.tokenizer_path, "tok.bin");
  EXPECT_EQ(o.mode, Mode::Chat);
  EXPECT_EQ(o.system_prompt, "Be brief");
  EXPECT_EQ(o.vocab_size, 32000);
  EXPECT_EQ(o.llama_version, 3);
}

TEST(Cli, RejectsInvalidValues) {
  const std::vector<std::vector<const char*>> bad = {
      {},                        {"m", "-t", "-1"},  {"m", "-t", "abc"},   {"m", "-t", "nan"}, {"m", "-p", "2"},
      {"m", "-p", "-0.1"},       {"m", "-m", "foo"}, {"m", "-n", "-5"},    {"m", "-n", "1.5"}, {"m", "-s", "-1"},
      {"m", "-l", "4"},          {"m", "-v", "0"},   {"m", "-x", "1"},     {"m", "-t"},        {"m", "extra"},
      {"m", "--temperature", "1"}, {"m", "-n", ""},
  };
  for (const auto& args : bad) {
    EXPECT_THROW(parse(args), UsageError) << (args.size() > 1 ? args[1] : "(none)");
  }
}

TEST(Cli, HelpWins) { EXPECT_TRUE(parse({"-h"}).help); }

struct RunResult {
  int code;
  std::string out, err;
};

RunResult run_cli(std::vector<const char*> args, const BackendFactory& factory, const std::string& input = "") {
  args.insert(args.begin(), "runner");
  std::istringstream in(input);
  std::ostringstream out, err;
  const int code = run_main(static_cast<int>(args.size()), args.data(), factory, in, out, err);
  return {code, out.str(), err.str()};
}

BackendFactory never_called() {
  return [](const BackendOptions&) -> std::unique_ptr<Backend> { throw Error("backend should not be loaded"); };
}

TEST(RunMain, HelpPrintsUsageAndSucceeds) {
  const RunResult r = run_cli({"-h"}, never_called());
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("-t <float>  temperature"), std::string::npos);
}

TEST(RunMain, UsageErrorsExitTwoWithUsage) {
  const RunResult r = run_cli({"model", "-t", "-1"}, never_called());
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err.rfind("error: temperature", 0), 0u);
  EXPECT_NE(r.err.find("Options:"), std::string::npos);
}

TEST(RunMain, RuntimeErrorsExitOneWithOneLine) {
  const RunResult r = run_cli({"model", "-z", "/nonexistent/tokenizer.bin"}, never_called());
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err.rfind("error: tokenizer file", 0), 0u);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
}

}  // namespace
}  // namespace torchchat
