#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "torchchat/cli.h"

namespace torchchat {
namespace {

template <class T>
T parse_number(std::string_view text, char flag) {
  T value{};
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end) {
    throw UsageError("invalid value '" + std::string(text) + "' for -" + flag);
  }
  return value;
}

float parse_float(std::string_view text, char flag) {
  // from_chars for float is in libstdc++ 11+, but strtof also accepts what people type ("1.", ".5").
  const std::string copy(text);
  char* end = nullptr;
  const float value = std::strtof(copy.c_str(), &end);
  if (copy.empty() || end != copy.c_str() + copy.size() || !std::isfinite(value)) {
    throw UsageError("invalid value '" + copy + "' for -" + flag);
  }
  return value;
}

}  // namespace

std::string usage_text(std::string_view program) {
  return "Usage:   " + std::string(program) +
         " <model_path> [options]\n"
         "Example: " + std::string(program) + " model.so -z tokenizer.bin -n 256 -i \"Once upon a time\"\n"
         "Options:\n"
         "  -t <float>  temperature in [0,inf], default 1.0\n"
         "  -p <float>  p value in top-p (nucleus) sampling in [0,1], default 0.9\n"
         "  -s <int>    random seed, default time(NULL)\n"
         "  -n <int>    number of steps to run for, default 256. 0 = max_seq_len\n"
         "              (steps are positions: prompt and generated tokens; in chat, the whole conversation)\n"
         "  -i <string> input prompt\n"
         "  -z <string> path to tokenizer (tokenizer.bin, tiktoken tokenizer.model or tokenizer.json), default tokenizer.bin\n"
         "  -m <string> mode: generate|chat, default: generate\n"
         "  -y <string> (optional) system prompt in chat mode\n"
         "  -v <int>    (optional) vocab size, default is model-specific.\n"
         "  -l <int>    (optional) llama version (2 or 3), default 2.\n"
         "  -h          print this help and exit\n";
}

CliOptions parse_cli(int argc, const char* const* argv) {
  CliOptions options;
  bool have_model = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      options.help = true;
      return options;
    }
    if (arg.size() >= 2 && arg[0] == '-') {
      if (arg.size() != 2) throw UsageError("unknown option '" + std::string(arg) + "'");
      const char flag = arg[1];
      if (std::string_view("tpsnizmyvl").find(flag) == std::string_view::npos) {
        throw UsageError("unknown option '" + std::string(arg) + "'");
      }
      if (i + 1 >= argc) throw UsageError("option -" + std::string(1, flag) + " needs a value");
      const std::string_view value = argv[++i];
      switch (flag) {
        case 't':
          options.temperature = parse_float(value, flag);
          if (options.temperature < 0) throw UsageError("temperature (-t) must be >= 0");
          break;
        case 'p':
          options.top_p = parse_float(value, flag);
          if (options.top_p < 0 || options.top_p > 1) throw UsageError("top-p (-p) must be in [0, 1]");
          break;
        case 's': options.seed = parse_number<std::uint64_t>(value, flag); break;
        case 'n':
          options.steps = parse_number<int>(value, flag);
          if (options.steps < 0) throw UsageError("steps (-n) must be >= 0");
          break;
        case 'i': options.prompt = std::string(value); break;
        case 'z': options.tokenizer_path = std::string(value); break;
        case 'm':
          if (value == "generate") {
            options.mode = Mode::Generate;
          } else if (value == "chat") {
            options.mode = Mode::Chat;
          } else {
            throw UsageError("mode (-m) must be generate or chat, not '" + std::string(value) + "'");
          }
          break;
        case 'y': options.system_prompt = std::string(value); break;
        case 'v':
          options.vocab_size = parse_number<int>(value, flag);
          if (options.vocab_size <= 0) throw UsageError("vocab size (-v) must be > 0");
          break;
        case 'l':
          options.llama_version = parse_number<int>(value, flag);
          if (options.llama_version != 2 && options.llama_version != 3) throw UsageError("llama version (-l) must be 2 or 3");
          break;
      }
      continue;
    }
    if (have_model) throw UsageError("unexpected argument '" + std::string(arg) + "'");
    options.model_path = std::string(arg);
    have_model = true;
  }
  if (!have_model) throw UsageError("missing model path");
  return options;
}

}  // namespace torchchat
