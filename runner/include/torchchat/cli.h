#pragma once
// The runner's command line (its public interface) and run_main, the
// whole program around a backend:
//
//   RUNNER MODEL_PATH [-t temp] [-p top_p] [-s seed] [-n steps] [-i prompt]
//          [-z tokenizer] [-m generate|chat] [-y system_prompt] [-v vocab_size]
//          [-l 2|3] [-h]
//
// A runner's main is then:
//   int main(int argc, char** argv) {
//     return torchchat::run_main(argc, argv, [](const torchchat::BackendOptions& options) {
//       return std::make_unique<MyBackend>(options);
//     });
//   }

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>

#include "torchchat/backend.h"
#include "torchchat/error.h"

namespace torchchat {

enum class Mode { Generate, Chat };

struct CliOptions {
  std::string model_path;
  float temperature = 1.0f;              // -t, >= 0
  float top_p = 0.9f;                    // -p, in [0, 1]
  std::optional<std::uint64_t> seed;     // -s, default time(NULL)
  int steps = 256;                       // -n, >= 0, 0 = max_seq_len
  std::optional<std::string> prompt;     // -i
  std::string tokenizer_path = "tokenizer.bin";  // -z (llama2.c's default)
  Mode mode = Mode::Generate;            // -m
  std::string system_prompt;             // -y
  int vocab_size = 0;                    // -v, 0 = the model's
  int llama_version = 2;                 // -l
  bool help = false;                     // -h
};

// A bad command line; run_main prints the message and the usage.
class UsageError : public Error {
 public:
  using Error::Error;
};

// Throws UsageError for an unknown flag, a missing or invalid value, a
// missing MODEL_PATH or an extra argument.
CliOptions parse_cli(int argc, const char* const* argv);

std::string usage_text(std::string_view program);

// Parses the command line, loads the tokenizer and the backend, and runs
// generate or chat mode: generated text to `out`, prompts read from `in`
// (chat), the stats line and errors to `err`. Returns the exit code:
// 0 success, 1 error ("error: <message>"), 2 usage error.
int run_main(int argc, const char* const* argv, const BackendFactory& make_backend, std::istream& in, std::ostream& out,
             std::ostream& err);

// The same on stdin / stdout / stderr.
int run_main(int argc, const char* const* argv, const BackendFactory& make_backend);

}  // namespace torchchat
