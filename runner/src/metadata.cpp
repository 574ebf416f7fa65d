#include "torchchat/metadata.h"

#include <optional>

#include <nlohmann/json.hpp>

#include "torchchat/error.h"

namespace torchchat {
namespace {

// Ordered: the "quantize" entries keep the artifact's order (linear before embedding).
using json = nlohmann::ordered_json;

const json& require(const json& root, const char* key, json::value_t type) {
  if (!root.contains(key)) throw Error(std::string("model metadata lacks \"") + key + "\"");
  const json& value = root.at(key);
  const bool ok = type == json::value_t::number_integer ? value.is_number_integer() : value.type() == type;
  if (!ok) throw Error(std::string("model metadata \"") + key + "\" has the wrong type (" + value.type_name() + ")");
  return value;
}

int require_int(const json& root, const char* key, long long low, long long high) {
  const long long value = require(root, key, json::value_t::number_integer).get<long long>();
  if (value < low || value > high) {
    throw Error(std::string("model metadata \"") + key + "\" is out of range: " + std::to_string(value));
  }
  return static_cast<int>(value);
}

std::string require_string(const json& root, const char* key) {
  return require(root, key, json::value_t::string).get<std::string>();
}

constexpr long long kMaxId = 1 << 24;

// The optional "quantize" object, checked for shape only ({scheme: {option: integer or
// string}}): the runner reports it and does not act on it, so unknown schemes are fine.
std::string optional_quantize(const json& root) {
  if (!root.contains("quantize") || root.at("quantize").is_null()) return "";
  const json& value = root.at("quantize");
  if (!value.is_object()) {
    throw Error(std::string("model metadata \"quantize\" has the wrong type (") + value.type_name() + ")");
  }
  for (const auto& [scheme, options] : value.items()) {
    bool ok = options.is_object();
    if (ok) {
      for (const auto& [name, option] : options.items()) ok = ok && (option.is_number_integer() || option.is_string());
    }
    if (!ok) {
      throw Error("model metadata \"quantize\" entry \"" + scheme + "\" is not an object of integer or string options");
    }
  }
  return value.empty() ? "" : value.dump();
}

// One turn of "chat_turns": a list of "text", {"token": "<|im_end|>"} and {"message": "user"|"system"}.
std::vector<ChatSegment> chat_segments(const json& value, const std::string& name) {
  const std::string where = "model metadata \"chat_turns\" \"" + name + "\"";
  if (!value.is_array()) throw Error(where + " is not a list");
  std::vector<ChatSegment> segments;
  for (const json& item : value) {
    ChatSegment s;
    if (item.is_string()) {
      s = {ChatSegment::Kind::Text, item.get<std::string>()};
    } else if (item.is_object() && item.size() == 1 && item.contains("token") && item.at("token").is_string() &&
               !item.at("token").get<std::string>().empty()) {
      s = {ChatSegment::Kind::Token, item.at("token").get<std::string>()};
    } else if (item.is_object() && item.size() == 1 && item.contains("message") && item.at("message") == "user") {
      s.kind = ChatSegment::Kind::User;
    } else if (item.is_object() && item.size() == 1 && item.contains("message") && item.at("message") == "system" &&
               name == "first_with_system") {
      s.kind = ChatSegment::Kind::System;
    } else {
      throw Error(where + " has a bad entry: " + item.dump().substr(0, 80));
    }
    segments.push_back(std::move(s));
  }
  return segments;
}

std::optional<ChatTurns> optional_chat_turns(const json& root) {
  if (!root.contains("chat_turns")) return std::nullopt;
  const json& value = root.at("chat_turns");
  if (!value.is_object()) {
    throw Error(std::string("model metadata \"chat_turns\" has the wrong type (") + value.type_name() + ")");
  }
  for (const char* key : {"first", "next"}) {
    if (!value.contains(key)) throw Error(std::string("model metadata \"chat_turns\" lacks \"") + key + "\"");
  }
  ChatTurns turns;
  turns.first = chat_segments(value.at("first"), "first");
  turns.next = chat_segments(value.at("next"), "next");
  if (value.contains("first_with_system")) {
    turns.first_with_system = chat_segments(value.at("first_with_system"), "first_with_system");
  }
  if (turns.next.empty() || turns.next.front().kind != ChatSegment::Kind::Token) {
    throw Error("model metadata \"chat_turns\" \"next\" does not start with the token that closes a reply");
  }
  return turns;
}

json chat_segments_json(const std::vector<ChatSegment>& segments) {
  json out = json::array();
  for (const ChatSegment& s : segments) {
    switch (s.kind) {
      case ChatSegment::Kind::Text: out.push_back(s.text); break;
      case ChatSegment::Kind::Token: out.push_back(json{{"token", s.text}}); break;
      case ChatSegment::Kind::System: out.push_back(json{{"message", "system"}}); break;
      case ChatSegment::Kind::User: out.push_back(json{{"message", "user"}}); break;
    }
  }
  return out;
}

}  // namespace

ModelMetadata parse_metadata_json(const std::string& text) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {
    throw Error("model metadata is not valid JSON: " + std::string(e.what()));
  }
  if (!root.is_object()) throw Error("model metadata is not a JSON object");

  ModelMetadata m;
  m.format_version = require_int(root, "format_version", 0, 1 << 20);
  if (m.format_version < kFormatVersion) throw Error("exported by an older version; export again");
  if (m.format_version != kFormatVersion) {
    throw Error("model metadata format_version " + std::to_string(m.format_version) + " is not supported (this runner reads " +
                std::to_string(kFormatVersion) + ")");
  }
  m.arch = require_string(root, "arch");
  if (m.arch != "llama") throw Error("model architecture \"" + m.arch + "\" is not supported (only llama)");
  m.vocab_size = require_int(root, "vocab_size", 1, kMaxId);
  m.max_seq_len = require_int(root, "max_seq_len", 1, 1 << 24);
  m.bos_id = require_int(root, "bos_id", 0, m.vocab_size - 1);
  m.add_bos = require(root, "add_bos", json::value_t::boolean).get<bool>();
  for (const json& id : require(root, "stop_ids", json::value_t::array)) {
    if (!id.is_number_integer() || id.get<long long>() < 0 || id.get<long long>() >= m.vocab_size) {
      throw Error("model metadata \"stop_ids\" has an invalid id" +
                  (id.is_number_integer() ? ": " + std::to_string(id.get<long long>()) : std::string(" (not an integer)")));
    }
    m.stop_ids.push_back(id.get<int>());
  }
  const std::string tokenizer = require_string(root, "tokenizer");
  const auto tokenizer_kind = parse_tokenizer_kind(tokenizer);
  if (!tokenizer_kind) throw Error("model metadata \"tokenizer\" is unknown: \"" + tokenizer + "\"");
  m.tokenizer = *tokenizer_kind;
  const std::string chat_template = require_string(root, "chat_template");
  const auto template_kind = parse_chat_template_kind(chat_template);
  if (!template_kind) throw Error("model metadata \"chat_template\" is unknown: \"" + chat_template + "\"");
  m.chat_template = *template_kind;
  m.chat_template.turns = optional_chat_turns(root);
  m.dtype = require_string(root, "dtype");
  if (m.dtype != "fp32" && m.dtype != "bf16" && m.dtype != "fp16") {
    throw Error("model metadata \"dtype\" is unknown: \"" + m.dtype + "\"");
  }
  m.quantize = optional_quantize(root);
  if (root.contains("target_cpu")) m.target_cpu = require_string(root, "target_cpu");
  if (root.contains("cpu_features")) {
    for (const json& feature : require(root, "cpu_features", json::value_t::array)) {
      if (!feature.is_string()) throw Error("model metadata \"cpu_features\" has an entry that is not a string");
      m.cpu_features.push_back(feature.get<std::string>());
    }
  }
  return m;
}

std::string to_metadata_json(const ModelMetadata& m) {
  json root{{"format_version", m.format_version},
            {"arch", m.arch},
            {"vocab_size", m.vocab_size},
            {"max_seq_len", m.max_seq_len},
            {"bos_id", m.bos_id},
            {"add_bos", m.add_bos},
            {"stop_ids", m.stop_ids},
            {"tokenizer", std::string(to_string(m.tokenizer))},
            {"chat_template", std::string(to_string(m.chat_template.kind))},
            {"dtype", m.dtype}};
  if (!m.quantize.empty()) root["quantize"] = json::parse(m.quantize);
  if (const auto& turns = m.chat_template.turns) {
    json value{{"first", chat_segments_json(turns->first)}, {"next", chat_segments_json(turns->next)}};
    if (turns->first_with_system) value["first_with_system"] = chat_segments_json(*turns->first_with_system);
    root["chat_turns"] = value;
  }
  if (!m.target_cpu.empty()) root["target_cpu"] = m.target_cpu;
  if (!m.target_cpu.empty() || !m.cpu_features.empty()) root["cpu_features"] = m.cpu_features;
  return root.dump();
}

std::string describe_quantize(const ModelMetadata& m) {
  if (m.quantize.empty()) return "none";
  json spec;
  try {
    spec = json::parse(m.quantize);
  } catch (const json::exception&) {
    return m.quantize;  // not from parse_metadata_json: show it as it is
  }
  if (!spec.is_object()) return m.quantize;
  std::string out;
  for (const auto& [scheme, options] : spec.items()) {
    if (scheme == "precision") continue;  // the dtype says it
    std::string text = scheme;
    if (options.is_object()) {
      for (const auto& [name, value] : options.items()) {
        if (name == "groupsize" && value.is_number_integer()) {
          if (value.get<long long>() > 0) text += " g" + std::to_string(value.get<long long>());
        } else {
          text += " " + name + "=" + (value.is_string() ? value.get<std::string>() : value.dump());
        }
      }
    }
    out += (out.empty() ? "" : " + ") + text;
  }
  return out.empty() ? "none" : out;
}

bool linears_on_our_kernels(const ModelMetadata& m) {
  if (m.quantize.empty()) return false;
  const json spec = json::parse(m.quantize, nullptr, false);
  return spec.is_object() && (spec.contains("linear:int8") || spec.contains("linear:int4"));
}

bool runs_our_kernels(const ModelMetadata& m) { return m.dtype != "fp16" || linears_on_our_kernels(m); }

std::string describe_model(const ModelMetadata& m) {
  return "model: " + m.arch + ", vocab " + std::to_string(m.vocab_size) + ", context " + std::to_string(m.max_seq_len) +
         ", dtype " + m.dtype + ", quantize " + describe_quantize(m);
}

ModelMetadata default_metadata(int llama_version) {
  ModelMetadata m;
  if (llama_version == 3) {
    m.bos_id = 128000;
    m.stop_ids = {128001, 128009};  // <|end_of_text|>, <|eot_id|>
    m.tokenizer = TokenizerKind::Tiktoken;
    m.chat_template = ChatTemplateKind::Llama3;
  } else if (llama_version == 2) {
    m.bos_id = 1;
    m.stop_ids = {2};
    m.tokenizer = TokenizerKind::SentencePiece;
    m.chat_template = ChatTemplateKind::Llama2;
  } else {
    throw Error("llama version must be 2 or 3, not " + std::to_string(llama_version));
  }
  m.add_bos = true;
  return m;
}

}  // namespace torchchat
