// tokenize: the tokenizer test tool.
//
//   tokenize TOKENIZER_PATH info            {"kind": ..., "vocab_size": ...}
//   tokenize TOKENIZER_PATH encode          stdin: one JSON string per line -> stdout: JSON id array per line
//   tokenize TOKENIZER_PATH encode-text     as encode, with special-token text taken as plain text
//   tokenize TOKENIZER_PATH decode          stdin: JSON id array per line   -> stdout: JSON string (whole decode)
//   tokenize TOKENIZER_PATH stream          as decode, but token by token through the runner's UTF-8 streamer
//   tokenize TOKENIZER_PATH text "TEXT"     ids of TEXT, space-separated (for people)
//
// Errors: "error: <one line>" on stderr, exit 1; usage errors exit 2.

#include <nlohmann/json.hpp>

#include <iostream>
#include <string>

#include "torchchat/error.h"
#include "torchchat/tokenizer.h"
#include "utf8.h"

namespace {

using json = nlohmann::json;
using torchchat::Tokenizer;

constexpr const char* kUsage =
    "usage: tokenize TOKENIZER_PATH [info|encode|encode-text|decode|stream|text TEXT]\n"
    "  encode/encode-text/decode/stream read JSON lines on stdin and write JSON lines on stdout\n";

std::string to_json_line(const json& value) {
  // Decoded text of arbitrary ids may be invalid UTF-8; show it as U+FFFD.
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::vector<int> read_ids(const std::string& line) {
  return json::parse(line).get<std::vector<int>>();
}

std::string stream_decode(const Tokenizer& tokenizer, const std::vector<int>& ids) {
  torchchat::utf8::Streamer streamer;
  std::string text;
  int prev = -1;
  for (const int id : ids) {
    text += streamer.push(tokenizer.decode_token(id, prev));
    prev = id;
  }
  return text + streamer.flush();
}

int run(int argc, char** argv) {
  if (argc < 2 || argc > 4) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string mode = argc >= 3 ? argv[2] : "encode";
  if ((mode == "text") != (argc == 4)) {
    std::cerr << kUsage;
    return 2;
  }
  const auto tokenizer = torchchat::load_tokenizer(argv[1]);

  if (mode == "info") {
    std::cout << json{{"kind", std::string(to_string(tokenizer->kind()))}, {"vocab_size", tokenizer->vocab_size()}}.dump()
              << "\n";
    return 0;
  }
  if (mode == "text") {
    const char* separator = "";
    for (const int id : tokenizer->encode(argv[3])) {
      std::cout << separator << id;
      separator = " ";
    }
    std::cout << "\n";
    return 0;
  }
  if (mode != "encode" && mode != "encode-text" && mode != "decode" && mode != "stream") {
    std::cerr << kUsage;
    return 2;
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    if (mode == "encode" || mode == "encode-text") {
      const auto specials = mode == "encode" ? torchchat::SpecialTokens::Parse : torchchat::SpecialTokens::AsText;
      std::cout << json(tokenizer->encode(json::parse(line).get<std::string>(), specials)).dump() << "\n";
    } else if (mode == "decode") {
      std::cout << to_json_line(tokenizer->decode(read_ids(line))) << "\n";
    } else {
      std::cout << to_json_line(stream_decode(*tokenizer, read_ids(line))) << "\n";
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const torchchat::Error& e) {
    std::cerr << torchchat::error_line(e.what());
  } catch (const json::exception& e) {
    std::cerr << torchchat::error_line(std::string("bad input line: ") + e.what());
  } catch (const std::exception& e) {
    std::cerr << torchchat::error_line(e.what());
  }
  return 1;
}
