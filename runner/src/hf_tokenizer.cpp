// Hugging Face byte-level BPE from tokenizer.json, encoding as
// tokenizers.Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids.
//
// Supported (what GPT-2-style models such as SmolLM2 and Llama 3 use):
//   model          BPE (vocab + merges), optional ignore_merges / unk_token
//   normalizer     none
//   pre_tokenizer  ByteLevel, Split, Digits, Sequence of these; ByteLevel required
//   added_tokens   matched in the raw text before pre-tokenization
// Anything else is refused with a message naming it, rather than encoded wrongly.

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "bpe_merge.h"
#include "unicode_regex.h"
#include "tokenizer_formats.h"
#include "torchchat/error.h"
#include "utf8.h"

namespace torchchat {
namespace {

using json = nlohmann::json;

constexpr int kMaxId = 1 << 24;  // token ids past this are refused (a damaged file, not a real vocab)

// GPT-2's pattern, used by the ByteLevel pre-tokenizer when use_regex is set.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// GPT-2's reversible byte <-> printable character table: printable Latin-1
// bytes stand for themselves, the others are moved to U+0100 onwards.
struct ByteLevelAlphabet {
  std::array<std::string, 256> byte_to_char;
  std::unordered_map<char32_t, unsigned char> char_to_byte;

  ByteLevelAlphabet() {
    char32_t next_unprintable = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? static_cast<char32_t>(b) : next_unprintable++;
      utf8::append_char(byte_to_char[b], cp);
      char_to_byte[cp] = static_cast<unsigned char>(b);
    }
  }

  std::string encode(std::string_view bytes) const {
    std::string out;
    for (const char c : bytes) out += byte_to_char[static_cast<unsigned char>(c)];
    return out;
  }

  std::string decode(std::string_view chars) const {
    std::string out;
    for (std::size_t pos = 0; pos < chars.size();) {
      std::size_t len = utf8::valid_char_length(chars, pos);
      if (len == 0) len = 1;
      const auto it = char_to_byte.find(utf8::decode_char(chars, pos, len));
      if (it != char_to_byte.end()) {
        out += static_cast<char>(it->second);
      } else {
        out.append(chars.substr(pos, len));  // not a byte-level char: keep as is
      }
      pos += len;
    }
    return out;
  }
};

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet;  // immutable table, built once
  return alphabet;
}

// A piece of the input on its way through pre-tokenization. Added tokens are
// already resolved to an id and are left alone by the pre-tokenizers.
struct Split {
  std::string text;
  int added_token_id = -1;
};

// How a Split pre-tokenizer treats the matches (tokenizers' SplitDelimiterBehavior).
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct PreTokenizerStep {
  enum class Kind { SplitByRegex, ByteLevel } kind = Kind::SplitByRegex;
  std::shared_ptr<const Regex> regex;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel
};

// tokenizers' Pattern::find_matches followed by split(behavior): returns the
// pieces of `text` to keep, empty ones dropped.
std::vector<std::string> split_text(const std::string& text, const PreTokenizerStep& step) {
  struct Span {
    std::size_t begin, end;
    bool is_match;
  };
  std::vector<Span> spans;
  std::size_t prev = 0;
  for (const auto& [begin, end] : step.regex->find_all(text)) {
    if (begin != prev) spans.push_back({prev, begin, false});
    spans.push_back({begin, end, true});
    prev = end;
  }
  if (prev != text.size()) spans.push_back({prev, text.size(), false});
  if (step.invert) {
    for (Span& span : spans) span.is_match = !span.is_match;
  }

  std::vector<Span> kept;
  switch (step.behavior) {
    case SplitBehavior::Isolated:
      kept = spans;
      break;
    case SplitBehavior::Removed:
      for (const Span& span : spans) {
        if (!span.is_match) kept.push_back(span);
      }
      break;
    case SplitBehavior::Contiguous: {
      bool previous_match = false;
      for (const Span& span : spans) {
        if (span.is_match == previous_match && !kept.empty()) {
          kept.back().end = span.end;
        } else {
          kept.push_back(span);
        }
        previous_match = span.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool previous_match = false;
      for (const Span& span : spans) {
        if (span.is_match && !previous_match && !kept.empty()) {
          kept.back().end = span.end;
        } else {
          kept.push_back(span);
        }
        previous_match = span.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) {
          kept.back().begin = it->begin;
        } else {
          kept.push_back(*it);
        }
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
  }
  std::vector<std::string> pieces;
  for (const Span& span : kept) {
    if (span.end > span.begin) pieces.push_back(text.substr(span.begin, span.end - span.begin));
  }
  return pieces;
}

struct AddedToken {
  std::string content;
  int id;
  bool lstrip, rstrip;
  bool special;  // matched only with SpecialTokens::Parse
};

class HfBpeTokenizer final : public Tokenizer {
 public:
  struct Config {
    std::unordered_map<std::string, int> vocab;
    std::vector<std::pair<std::string, std::string>> merges;
    std::vector<AddedToken> added_tokens;
    std::vector<PreTokenizerStep> pre_tokenizer;
    bool ignore_merges = false;
    int unk_id = -1;
  };

  explicit HfBpeTokenizer(Config config)
      : vocab_(std::move(config.vocab)),
        added_tokens_(std::move(config.added_tokens)),
        pre_tokenizer_(std::move(config.pre_tokenizer)),
        ignore_merges_(config.ignore_merges),
        unk_id_(config.unk_id) {
    int size = 0;
    for (const auto& [token, id] : vocab_) size = std::max(size, id + 1);
    for (const AddedToken& added : added_tokens_) size = std::max(size, added.id + 1);
    id_to_token_.resize(size);
    is_added_.resize(size, false);
    for (const auto& [token, id] : vocab_) id_to_token_[id] = token;
    for (const AddedToken& added : added_tokens_) {
      id_to_token_[added.id] = added.content;
      is_added_[added.id] = true;
      added_matcher_.add(added.content, added.id);
      if (!added.special) plain_matcher_.add(added.content, added.id);
    }
    merges_.reserve(config.merges.size());
    for (std::size_t rank = 0; rank < config.merges.size(); ++rank) {
      const auto& [left, right] = config.merges[rank];
      const int left_id = vocab_id(left), right_id = vocab_id(right), merged_id = vocab_id(left + right);
      if (left_id < 0 || right_id < 0 || merged_id < 0) {
        throw Error("merge " + std::to_string(rank) + " ('" + left + "' '" + right + "') uses a token missing from the vocab");
      }
      merges_.emplace(pair_key(left_id, right_id), BpeMerge{static_cast<double>(rank), merged_id});
    }
  }

  TokenizerKind kind() const override { return TokenizerKind::HfBpe; }
  int vocab_size() const override { return static_cast<int>(id_to_token_.size()); }

  std::vector<int> encode(std::string_view input, SpecialTokens specials) const override {
    std::vector<int> ids;
    const SpecialTokenMatcher& matcher = specials == SpecialTokens::Parse ? added_matcher_ : plain_matcher_;
    for (Split& split : pre_tokenize(extract_added_tokens(utf8::to_valid_lossy(input), matcher))) {
      if (split.added_token_id >= 0) {
        ids.push_back(split.added_token_id);
      } else {
        encode_word(split.text, ids);
      }
    }
    return ids;
  }

  std::string decode_token(int id, int /*prev_id*/) const override {
    if (id < 0 || id >= vocab_size()) return {};
    if (is_added_[id]) return id_to_token_[id];
    return byte_level_alphabet().decode(id_to_token_[id]);
  }

  std::string decode(std::span<const int> ids) const override {
    std::string bytes;
    for (const int id : ids) {
      if (id < 0 || id >= vocab_size()) throw Error("token id " + std::to_string(id) + " is out of range");
      bytes += decode_token(id, -1);
    }
    return utf8::to_valid_lossy(bytes);
  }

  std::optional<int> special_token_id(std::string_view text) const override { return added_matcher_.find_exact(text); }

 private:
  static std::uint64_t pair_key(int left, int right) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
  }

  int vocab_id(const std::string& token) const {
    const auto it = vocab_.find(token);
    return it == vocab_.end() ? -1 : it->second;
  }

  static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

  // Added tokens are found in the raw text first (leftmost, then longest);
  // lstrip / rstrip make a token swallow the whitespace beside it.
  std::vector<Split> extract_added_tokens(const std::string& text, const SpecialTokenMatcher& matcher) const {
    std::vector<Split> splits;
    std::size_t pos = 0;
    while (pos < text.size()) {
      const auto match = matcher.find_next(text, pos);
      if (!match) break;
      std::size_t before_end = match->begin, after_begin = match->begin + match->length;
      const AddedToken& token = *std::find_if(added_tokens_.begin(), added_tokens_.end(),
                                              [&](const AddedToken& t) { return t.id == match->id; });
      if (token.lstrip) {
        while (before_end > pos && is_space(text[before_end - 1])) --before_end;
      }
      if (token.rstrip) {
        while (after_begin < text.size() && is_space(text[after_begin])) ++after_begin;
      }
      if (before_end > pos) splits.push_back({text.substr(pos, before_end - pos), -1});
      splits.push_back({std::string(), match->id});
      pos = after_begin;
    }
    if (pos < text.size()) splits.push_back({text.substr(pos), -1});
    return splits;
  }

  std::vector<Split> pre_tokenize(std::vector<Split> splits) const {
    for (const PreTokenizerStep& step : pre_tokenizer_) {
      std::vector<Split> next;
      for (Split& split : splits) {
        if (split.added_token_id >= 0) {
          next.push_back(std::move(split));
          continue;
        }
        if (step.kind == PreTokenizerStep::Kind::ByteLevel) {
          std::string text = std::move(split.text);
          if (step.add_prefix_space && text.rfind(' ', 0) != 0) text = " " + text;
          std::vector<std::string> pieces;
          if (step.regex) {
            pieces = split_text(text, step);
          } else {
            pieces.push_back(std::move(text));
          }
          for (const std::string& piece : pieces) next.push_back({byte_level_alphabet().encode(piece), -1});
        } else {
          for (std::string& piece : split_text(split.text, step)) next.push_back({std::move(piece), -1});
        }
      }
      splits = std::move(next);
    }
    return splits;
  }

  void encode_word(const std::string& word, std::vector<int>& ids) const {
    if (word.empty()) return;
    if (ignore_merges_) {
      if (const int id = vocab_id(word); id >= 0) {
        ids.push_back(id);
        return;
      }
    }
    std::vector<BpeSymbol> symbols;
    for (std::size_t pos = 0; pos < word.size();) {
      std::size_t len = utf8::valid_char_length(word, pos);
      if (len == 0) len = 1;
      const int id = vocab_id(word.substr(pos, len));
      // Characters outside the vocab become <unk>, or vanish without one (as in tokenizers).
      if (id >= 0) {
        symbols.push_back({pos, len, id});
      } else if (unk_id_ >= 0) {
        symbols.push_back({pos, len, unk_id_});
      }
      pos += len;
    }
    const auto merge_of = [&](const BpeSymbol& left, const BpeSymbol& right) -> std::optional<BpeMerge> {
      const auto it = merges_.find(pair_key(left.id, right.id));
      if (it == merges_.end()) return std::nullopt;
      return it->second;
    };
    for (const BpeSymbol& symbol : bpe_merge(symbols, merge_of)) ids.push_back(symbol.id);
  }

  std::unordered_map<std::string, int> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> is_added_;
  std::vector<AddedToken> added_tokens_;
  SpecialTokenMatcher added_matcher_;
  SpecialTokenMatcher plain_matcher_;  // the added tokens not marked special
  std::vector<PreTokenizerStep> pre_tokenizer_;
  std::unordered_map<std::uint64_t, BpeMerge> merges_;
  bool ignore_merges_ = false;
  int unk_id_ = -1;
};

// ---- tokenizer.json parsing -------------------------------------------------

SplitBehavior parse_behavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::Removed;
  if (name == "Isolated") return SplitBehavior::Isolated;
  if (name == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (name == "Contiguous") return SplitBehavior::Contiguous;
  throw Error("unsupported Split behavior '" + name + "'");
}

void parse_pre_tokenizer(const json& node, std::vector<PreTokenizerStep>& steps, bool& has_byte_level, int depth = 0) {
  if (depth > 16) throw Error("pre_tokenizer Sequences are nested too deeply");
  const std::string type = node.at("type").get<std::string>();
  if (type == "Sequence") {
    for (const json& child : node.at("pretokenizers")) parse_pre_tokenizer(child, steps, has_byte_level, depth + 1);
  } else if (type == "ByteLevel") {
    PreTokenizerStep step;
    step.kind = PreTokenizerStep::Kind::ByteLevel;
    step.add_prefix_space = node.value("add_prefix_space", false);
    if (node.value("use_regex", true)) step.regex = std::make_shared<Regex>(kGpt2Pattern);
    has_byte_level = true;
    steps.push_back(std::move(step));
  } else if (type == "Split") {
    PreTokenizerStep step;
    const json& pattern = node.at("pattern");
    if (pattern.contains("Regex")) {
      step.regex = std::make_shared<Regex>(pattern.at("Regex").get<std::string>());
    } else if (pattern.contains("String")) {
      step.regex = std::make_shared<Regex>(escape_regex(pattern.at("String").get<std::string>()));
    } else {
      throw Error("Split pre-tokenizer has neither a Regex nor a String pattern");
    }
    step.behavior = parse_behavior(node.at("behavior").get<std::string>());
    step.invert = node.value("invert", false);
    steps.push_back(std::move(step));
  } else if (type == "Digits") {
    // Rust's char::is_numeric is the Unicode N categories, i.e. \p{N}.
    PreTokenizerStep step;
    step.regex = std::make_shared<Regex>("\\p{N}");
    step.behavior = node.value("individual_digits", false) ? SplitBehavior::Isolated : SplitBehavior::Contiguous;
    steps.push_back(std::move(step));
  } else {
    throw Error("unsupported pre_tokenizer '" + type + "' (supported: ByteLevel, Split, Digits, Sequence)");
  }
}

std::pair<std::string, std::string> parse_merge(const json& merge) {
  if (merge.is_array() && merge.size() == 2) return {merge[0].get<std::string>(), merge[1].get<std::string>()};
  const std::string text = merge.get<std::string>();
  const std::size_t space = text.find(' ');
  if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
    throw Error("merge '" + text + "' is not two tokens separated by one space");
  }
  return {text.substr(0, space), text.substr(space + 1)};
}

// Looks at node[key] without copying it (a copy of a deeply nested value
// would recurse as deep as the nesting).
bool is_null_or_absent(const json& node, const char* key) { return !node.contains(key) || node.at(key).is_null(); }

bool is_empty_or_null(const json& node, const char* key) {
  return !node.contains(key) || node.at(key).is_null() || (node.at(key).is_string() && node.at(key).get<std::string>().empty());
}

// model.vocab and model.merges as read by TokenizerJsonReader, when it read them.
struct StreamedModel {
  std::optional<std::unordered_map<std::string, int>> vocab;
  std::optional<std::vector<std::pair<std::string, std::string>>> merges;
};

HfBpeTokenizer::Config parse_config(const json& root, StreamedModel streamed = {}) {
  HfBpeTokenizer::Config config;
  const json& model = root.at("model");
  const std::string model_type = model.value("type", std::string("BPE"));
  if (model_type != "BPE") throw Error("unsupported model type '" + model_type + "' (only BPE)");
  if (!is_empty_or_null(model, "continuing_subword_prefix") || !is_empty_or_null(model, "end_of_word_suffix")) {
    throw Error("BPE with a continuing_subword_prefix or end_of_word_suffix is not supported");
  }
  if (model.value("byte_fallback", false)) throw Error("BPE with byte_fallback (SentencePiece-style) is not supported");
  if (!is_null_or_absent(model, "dropout")) throw Error("BPE dropout is not supported");
  config.ignore_merges = model.value("ignore_merges", false);

  if (streamed.vocab) {
    config.vocab = std::move(*streamed.vocab);
  } else {
    for (const auto& [token, id] : model.at("vocab").items()) {
      const int value = id.get<int>();
      if (value < 0 || value >= kMaxId) throw Error("vocab id " + std::to_string(value) + " is out of range");
      config.vocab.emplace(token, value);
    }
  }
  if (config.vocab.empty()) throw Error("empty vocab");
  if (streamed.merges) {
    config.merges = std::move(*streamed.merges);
  } else {
    for (const json& merge : model.at("merges")) config.merges.push_back(parse_merge(merge));
  }
  if (!is_empty_or_null(model, "unk_token")) {
    const auto it = config.vocab.find(model.at("unk_token").get<std::string>());
    if (it != config.vocab.end()) config.unk_id = it->second;
  }

  if (root.contains("added_tokens") && !root.at("added_tokens").is_null()) {
    for (const json& token : root.at("added_tokens")) {
      if (token.value("single_word", false)) throw Error("added tokens with single_word are not supported");
      const int id = token.at("id").get<int>();
      if (id < 0 || id >= kMaxId) throw Error("added token id " + std::to_string(id) + " is out of range");
      config.added_tokens.push_back(
          {token.at("content").get<std::string>(), id, token.value("lstrip", false), token.value("rstrip", false),
           token.value("special", false)});
    }
  }

  if (!is_null_or_absent(root, "normalizer")) {
    const json& normalizer = root.at("normalizer");
    const std::string type = normalizer.is_object() && normalizer.contains("type") && normalizer.at("type").is_string()
                                 ? normalizer.at("type").get<std::string>()
                                 : "?";
    throw Error("unsupported normalizer '" + type + "' (only none)");
  }
  bool has_byte_level = false;
  if (!is_null_or_absent(root, "pre_tokenizer")) parse_pre_tokenizer(root.at("pre_tokenizer"), config.pre_tokenizer, has_byte_level);
  if (!has_byte_level) throw Error("not a byte-level BPE tokenizer (no ByteLevel pre-tokenizer)");
  return config;
}

// tokenizer.json is mostly model.vocab (an object of tens of thousands of "token": id pairs) and
// model.merges (a list about as long). As a DOM, every one of those is a tree node with allocations
// of its own, and parsing them so was most of the runner's start-up. This reader takes the two
// straight into the tokenizer's tables when they have their usual shape (ids that are integers in
// range, merges that are "left right" strings or [left, right] pairs) and builds the DOM for the
// rest. Anything else stops it (a key seen twice, any other type or shape, a syntax error): the
// caller then parses the ordinary way, which says what is wrong.
class TokenizerJsonReader final : public json::json_sax_t {
 public:
  json root;
  StreamedModel streamed;

  bool null() override { return value(nullptr); }
  bool boolean(bool v) override { return value(v); }
  bool number_integer(json::number_integer_t v) override { return in_ == In::Vocab ? vocab_entry(v) : value(v); }
  bool number_unsigned(json::number_unsigned_t v) override {
    return in_ == In::Vocab ? vocab_entry(static_cast<json::number_integer_t>(std::min<json::number_unsigned_t>(v, kMaxId)))
                            : value(v);
  }
  bool number_float(json::number_float_t v, const json::string_t&) override { return value(v); }
  bool binary(json::binary_t&) override { return false; }  // not in JSON text
  bool string(json::string_t& v) override {
    if (in_ == In::Merges) {
      const std::size_t space = v.find(' ');
      if (space == std::string::npos || v.find(' ', space + 1) != std::string::npos) return false;
      streamed.merges->emplace_back(v.substr(0, space), v.substr(space + 1));
      return true;
    }
    if (in_ == In::MergePair) {
      if (pair_.size() == 2) return false;
      pair_.push_back(std::move(v));
      return true;
    }
    return value(std::move(v));
  }

  bool start_object(std::size_t) override {
    if (in_model() && key_ == "vocab") {
      streamed.vocab.emplace();
      in_ = In::Vocab;
      return true;
    }
    json* object = add(json::object());
    if (object == nullptr) return false;
    if (open_.size() == 1 && root.is_object() && key_ == "model") model_ = object;
    open_.push_back(object);
    return true;
  }
  bool key(json::string_t& k) override {
    if (in_ == In::None) {  // a key seen twice
      if (open_.back()->contains(k)) return false;
      if (open_.back() == model_ && ((k == "vocab" && streamed.vocab) || (k == "merges" && streamed.merges))) return false;
    }
    key_ = std::move(k);
    return true;
  }
  bool end_object() override {
    if (in_ == In::Vocab) in_ = In::None;
    else open_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    if (in_ == In::Merges) {
      pair_.clear();
      in_ = In::MergePair;
      return true;
    }
    if (in_model() && key_ == "merges") {
      streamed.merges.emplace();
      in_ = In::Merges;
      return true;
    }
    json* array = add(json::array());
    if (array == nullptr) return false;
    open_.push_back(array);
    return true;
  }
  bool end_array() override {
    if (in_ == In::MergePair) {
      if (pair_.size() != 2) return false;
      streamed.merges->emplace_back(std::move(pair_[0]), std::move(pair_[1]));
      in_ = In::Merges;
    } else if (in_ == In::Merges) {
      in_ = In::None;
    } else {
      open_.pop_back();
    }
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const json::exception&) override { return false; }

 private:
  enum class In { None, Vocab, Merges, MergePair };

  bool in_model() const { return in_ == In::None && !open_.empty() && open_.back() == model_; }

  // A value into the DOM: the root, or the open array or object (under the last key); nullptr
  // where it cannot go.
  json* add(json&& v) {
    if (in_ != In::None) return nullptr;  // inside the vocab or the merges: not their usual shape
    if (open_.empty()) {
      root = std::move(v);
      return &root;
    }
    json& parent = *open_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    json& slot = parent[key_];
    slot = std::move(v);
    return &slot;
  }
  bool value(json&& v) { return add(std::move(v)) != nullptr; }

  bool vocab_entry(json::number_integer_t id) {
    if (id < 0 || id >= kMaxId) return false;
    return streamed.vocab->emplace(std::move(key_), static_cast<int>(id)).second;  // false: a token seen twice
  }

  In in_ = In::None;
  std::vector<json*> open_;  // the open arrays and objects of the DOM, innermost last
  const json* model_ = nullptr;
  std::string key_;
  std::vector<std::string> pair_;
};

}  // namespace

std::unique_ptr<Tokenizer> parse_hf_tokenizer_json(std::string_view content, const std::string& source) {
  const std::string what = "tokenizer.json " + source;
  TokenizerJsonReader reader;
  if (json::sax_parse(content, &reader)) {
    try {
      if (!reader.root.is_object()) throw Error("the top level is not an object");
      return std::make_unique<HfBpeTokenizer>(parse_config(reader.root, std::move(reader.streamed)));
    } catch (const json::exception& e) {
      throw Error(what + " has an unexpected structure: " + std::string(e.what()));
    } catch (const Error& e) {
      throw Error(what + ": " + e.what());
    }
  }
  json root;
  // Two equal keys in one object (a vocabulary with two tokens spelled the same) are refused:
  // libraries differ on which one wins, so the ids would differ from the reference's.
  std::vector<std::unordered_set<std::string>> open_objects;
  std::string duplicate;
  const json::parser_callback_t unique_keys = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == json::parse_event_t::key && !open_objects.empty() && duplicate.empty()) {
      if (!open_objects.back().insert(parsed.get<std::string>()).second) duplicate = parsed.get<std::string>();
    }
    return true;
  };
  try {
    root = json::parse(content, unique_keys);
  } catch (const json::exception& e) {
    // nlohmann's messages are one line: "[json.exception.parse_error.101] parse error at line 1, ..."
    throw Error(what + " is not valid JSON: " + std::string(e.what()));
  }
  if (!duplicate.empty()) {
    throw Error(what + ": the key \"" + duplicate.substr(0, 60) +
                "\" appears twice in one object (two tokens spelled the same?): an ambiguous tokenizer");
  }
  try {
    if (!root.is_object()) throw Error("the top level is not an object");
    return std::make_unique<HfBpeTokenizer>(parse_config(root));
  } catch (const json::exception& e) {
    throw Error(what + " has an unexpected structure: " + std::string(e.what()));
  } catch (const Error& e) {
    throw Error(what + ": " + e.what());
  }
}

}  // namespace torchchat
