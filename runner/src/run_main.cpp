// run_main: the whole runner program around a backend.

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <future>
#include <iostream>

#include "file_io.h"
#include "torchchat/cli.h"
#include "torchchat/metadata.h"
#include "torchchat/runner.h"
#include "torchchat/tokenizer.h"

namespace torchchat {
namespace {

std::string program_name(int argc, const char* const* argv) {
  if (argc < 1 || argv[0] == nullptr) return "runner";
  const std::string path = argv[0];
  return path.substr(path.find_last_of('/') + 1);
}

// The artifact's metadata must agree with the tokenizer given by -z; a wrong
// -l shows up here as ids outside the tokenizer (torchchat issue #703).
void check_model_against_tokenizer(const ModelMetadata& metadata, const Tokenizer& tokenizer, const CliOptions& options) {
  if (metadata.vocab_size <= 0) throw Error("the model's vocab size is unknown; pass -v");
  if (metadata.max_seq_len <= 0) throw Error("the model's max_seq_len is unknown");
  if (options.vocab_size != 0 && options.vocab_size != metadata.vocab_size) {
    throw Error("-v " + std::to_string(options.vocab_size) + " does not match the model's vocab size " +
                std::to_string(metadata.vocab_size));
  }
  if (metadata.tokenizer != tokenizer.kind()) {
    throw Error("the model was exported with a " + std::string(to_string(metadata.tokenizer)) + " tokenizer, but " +
                options.tokenizer_path + " is a " + std::string(to_string(tokenizer.kind())) + " tokenizer");
  }
  const auto check_id = [&](int id, const char* what) {
    if (id < 0 || id >= tokenizer.vocab_size()) {
      throw Error(std::string(what) + " id " + std::to_string(id) + " is outside the tokenizer's " +
                  std::to_string(tokenizer.vocab_size()) + " tokens (is -l " + std::to_string(options.llama_version) +
                  " right for this model?)");
    }
  };
  check_id(metadata.bos_id, "BOS");
  for (const int id : metadata.stop_ids) check_id(id, "stop token");
  if (tokenizer.vocab_size() > metadata.vocab_size) {
    throw Error("the tokenizer has " + std::to_string(tokenizer.vocab_size()) + " tokens but the model only " +
                std::to_string(metadata.vocab_size));
  }
}

// Output that cannot be written (a full disk, a closed pipe) is an error, not a success: the
// generated words would be lost.
void check_written(const std::ostream& out) {
  if (out) return;
  const int error = errno;
  throw Error(std::string("cannot write the output") + (error ? std::string(": ") + std::strerror(error) : ""));
}

// TORCHCHAT_TRACE=FILE (for tests): every forward() call is appended to FILE as a
// JSON line {"start_pos": p, "tokens": [...]}, what any backend was fed.
class TracingBackend final : public Backend {
 public:
  TracingBackend(std::unique_ptr<Backend> inner, std::string path) : inner_(std::move(inner)), path_(std::move(path)) {}
  const ModelMetadata& metadata() const override { return inner_->metadata(); }
  std::string kernels() const override { return inner_->kernels(); }
  std::span<const float> forward(const std::int64_t* tokens, int n, int start_pos) override {
    std::ofstream trace(path_, std::ios::app);
    trace << "{\"start_pos\": " << start_pos << ", \"tokens\": [";
    for (int i = 0; i < n; ++i) trace << (i ? ", " : "") << tokens[i];
    trace << "]}\n";
    return inner_->forward(tokens, n, start_pos);
  }

 private:
  std::unique_ptr<Backend> inner_;
  std::string path_;
};

// "model: ..., kernels avx2": the metadata, and our kernels' level when the model runs them.
std::string describe(const Backend& backend) {
  const std::string kernels = backend.kernels();
  return describe_model(backend.metadata()) + (kernels.empty() ? "" : ", kernels " + kernels);
}

void run_generate(Backend& backend, const Tokenizer& tokenizer, const GenerationConfig& config,
                  const CliOptions& options, std::ostream& out, std::ostream& err) {
  const std::string prompt = options.prompt.value_or("");
  bool echoed = false;  // the prompt is shown once generation has started
  const auto echo_prompt = [&] {
    if (!echoed) out << prompt;
    echoed = true;
  };
  Generator generator(backend, tokenizer, config);
  const GenerationResult result = generator.generate(prompt, [&](std::string_view text) {
    echo_prompt();
    out << text << std::flush;
    return static_cast<bool>(out);  // stop generating what cannot be shown
  });
  echo_prompt();
  out << "\n" << std::flush;
  check_written(out);
  if (result.stop_reason == StopReason::ContextFull) {
    err << "[context full: reached the model's max_seq_len of " << backend.metadata().max_seq_len << "]\n";
  }
  err << describe(backend) << "\n" << result.stats.summary() << "\n";
}

void run_chat(Backend& backend, const Tokenizer& tokenizer, const GenerationConfig& config, const CliOptions& options,
              std::istream& in, std::ostream& out, std::ostream& err) {
  ChatSession session(backend, tokenizer, config, options.system_prompt);
  Stats total;
  bool first_turn = true;
  while (true) {
    std::string user;
    if (first_turn && options.prompt) {
      user = *options.prompt;
      out << "User: " << user << "\n";
    } else {
      out << "User: " << std::flush;
      if (!std::getline(in, user)) {  // end of input ends the chat
        out << "\n";
        break;
      }
    }
    first_turn = false;
    if (user.empty()) continue;

    out << "Assistant: " << std::flush;
    check_written(out);
    const GenerationResult result = session.reply(user, [&](std::string_view text) {
      out << text << std::flush;
      return static_cast<bool>(out);
    });
    out << "\n" << std::flush;
    check_written(out);
    total.add(result.stats);
    if (session.over()) {
      err << "[context full: " << session.position() << " of " << session.position_limit()
          << " positions used; ending the chat]\n";
      break;
    }
  }
  err << describe(backend) << "\n" << total.summary() << "\n";
}

int run(const CliOptions& options, const BackendFactory& make_backend, std::istream& in, std::ostream& out,
        std::ostream& err) {
  const std::string tokenizer_file = read_file(options.tokenizer_path, "tokenizer file");
  // The tokenizer is parsed on a thread of its own while the backend loads the model: the two
  // are independent, and each takes tens of milliseconds. A bad tokenizer is still the error
  // reported first, as when it was parsed first.
  std::future<std::unique_ptr<Tokenizer>> parsing = std::async(std::launch::async, [&] {
    return parse_tokenizer(tokenizer_file, "'" + options.tokenizer_path + "'");
  });

  BackendOptions backend_options{options.model_path, default_metadata(options.llama_version)};
  backend_options.fallback_metadata.tokenizer = tokenizer_kind_of(tokenizer_file);  // the file's content decides
  backend_options.fallback_metadata.vocab_size = options.vocab_size;
  std::unique_ptr<Backend> backend;
  std::exception_ptr backend_error;
  try {
    backend = make_backend(backend_options);
  } catch (...) {
    backend_error = std::current_exception();
  }
  const std::unique_ptr<Tokenizer> tokenizer = parsing.get();
  if (backend_error) std::rethrow_exception(backend_error);
  if (!backend) throw Error("the backend could not be created");
  if (const char* trace = std::getenv("TORCHCHAT_TRACE")) backend = std::make_unique<TracingBackend>(std::move(backend), trace);
  check_model_against_tokenizer(backend->metadata(), *tokenizer, options);

  GenerationConfig config;
  config.max_positions = options.steps;
  config.sampler.temperature = options.temperature;
  config.sampler.top_p = options.top_p;
  config.sampler.seed = options.seed.value_or(static_cast<std::uint64_t>(std::time(nullptr)));

  if (options.mode == Mode::Chat) {
    run_chat(*backend, *tokenizer, config, options, in, out, err);
  } else {
    run_generate(*backend, *tokenizer, config, options, out, err);
  }
  return 0;
}

}  // namespace

int run_main(int argc, const char* const* argv, const BackendFactory& make_backend, std::istream& in, std::ostream& out,
             std::ostream& err) {
  const std::string program = program_name(argc, argv);
  CliOptions options;
  try {
    options = parse_cli(argc, argv);
  } catch (const UsageError& e) {
    err << error_line(e.what()) << usage_text(program);
    return 2;
  }
  if (options.help) {
    out << usage_text(program);
    return 0;
  }
  try {
    return run(options, make_backend, in, out, err);
  } catch (const std::bad_alloc&) {
    err << error_line("out of memory");
  } catch (const std::exception& e) {  // torchchat::Error, and anything a backend lets through
    err << error_line(e.what());
  }
  return 1;
}

int run_main(int argc, const char* const* argv, const BackendFactory& make_backend) {
  return run_main(argc, argv, make_backend, std::cin, std::cout, std::cerr);
}

}  // namespace torchchat
