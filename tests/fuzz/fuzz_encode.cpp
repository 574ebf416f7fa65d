// libFuzzer target: the runner's tokenizers encoding arbitrary bytes (scripts/fuzz.sh runs it).
//
//   TORCHCHAT_FUZZ_TOKENIZER=PATH fuzz_encode [libFuzzer flags] [CORPUS_DIR]
//
// For each input, both ways of treating special-token text: every id must be in the vocabulary,
// the token-by-token stream must decode to what the whole sequence decodes to, and valid UTF-8 must
// come back unchanged from tiktoken (which has every byte), and from a tokenizer.json the tokens'
// bytes must be the input's with at most some left out (those its vocabulary lacks: tokenizers
// drops them too). Anything but a clean
// return (a crash, a sanitizer report, an exception, a broken property) stops the fuzzer.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "torchchat/error.h"
#include "torchchat/tokenizer.h"
#include "utf8.h"

namespace {

std::unique_ptr<torchchat::Tokenizer> tokenizer;

[[noreturn]] void broken(const char* property, std::string_view input) {
  std::fprintf(stderr, "property broken: %s (input of %zu bytes)\n", property, input.size());
  std::abort();
}

// Whether `part` is `whole` with some bytes left out.
bool is_subsequence(std::string_view part, std::string_view whole) {
  std::size_t i = 0;
  for (const char c : whole)
    if (i < part.size() && part[i] == c) ++i;
  return i == part.size();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* path = std::getenv("TORCHCHAT_FUZZ_TOKENIZER");
  if (!path) {
    std::fprintf(stderr, "set TORCHCHAT_FUZZ_TOKENIZER to a tokenizer file\n");
    std::exit(2);
  }
  try {
    tokenizer = torchchat::load_tokenizer(path);
  } catch (const torchchat::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::exit(2);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const torchchat::TokenizerKind kind = tokenizer->kind();
  const bool valid = torchchat::utf8::to_valid_lossy(input) == input;
  for (const auto specials : {torchchat::SpecialTokens::Parse, torchchat::SpecialTokens::AsText}) {
    const std::vector<int> ids = tokenizer->encode(input, specials);
    for (const int id : ids)
      if (id < 0 || id >= tokenizer->vocab_size()) broken("an id outside the vocabulary", input);
    const std::string whole = tokenizer->decode(ids);
    torchchat::utf8::Streamer streamer;
    std::string streamed, bytes;
    int prev = -1;
    for (const int id : ids) {
      const std::string piece = tokenizer->decode_token(id, prev);
      bytes += piece;
      streamed += streamer.push(piece);
      prev = id;
    }
    streamed += streamer.flush();
    if (streamed != whole) broken("the stream decodes differently from the whole sequence", input);
    if (valid && kind == torchchat::TokenizerKind::Tiktoken && whole != input)
      broken("valid UTF-8 does not come back from decode(encode())", input);
    if (valid && kind == torchchat::TokenizerKind::HfBpe && !is_subsequence(bytes, input))
      broken("the tokens' bytes are not the input's with some left out", input);
  }
  return 0;
}
