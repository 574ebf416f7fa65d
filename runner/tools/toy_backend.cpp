#include "toy_backend.h"

#include <nlohmann/json.hpp>

#include <fstream>

#include "file_io.h"
#include "torchchat/error.h"

namespace torchchat {

using json = nlohmann::json;

ToyBackend::ToyBackend(const BackendOptions& options) {
  json model;
  try {
    model = json::parse(read_file(options.model_path, "model file"));
    if (model.contains("metadata")) {
      metadata_ = parse_metadata_json(model.at("metadata").dump());
    } else {
      metadata_ = options.fallback_metadata;
      if (metadata_.vocab_size == 0) metadata_.vocab_size = model.at("vocab_size").get<int>();
      if (metadata_.max_seq_len == 0) metadata_.max_seq_len = model.at("max_seq_len").get<int>();
    }
    reply_ = model.value("reply", std::vector<int>{});
    stop_id_ = model.value("stop_id", metadata_.stop_ids.empty() ? 0 : metadata_.stop_ids.front());
    trace_path_ = model.value("trace", std::string());
    uniform_ = model.value("uniform", false);
  } catch (const json::exception& e) {
    throw Error("toy model '" + options.model_path + "' is malformed: " + e.what());
  }
  if (metadata_.vocab_size <= 0) throw Error("toy model needs a positive vocab_size");
  logits_.assign(metadata_.vocab_size, 0.0f);
}

std::span<const float> ToyBackend::forward(const std::int64_t* tokens, int n, int start_pos) {
  if (n < 1 || start_pos < 0 || start_pos + n > metadata_.max_seq_len) {
    throw Error("toy forward out of range: " + std::to_string(n) + " tokens at position " + std::to_string(start_pos));
  }
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= metadata_.vocab_size) throw Error("toy forward got token " + std::to_string(tokens[i]));
  }
  if (!trace_path_.empty()) {
    std::ofstream trace(trace_path_, std::ios::app);
    trace << json{{"start_pos", start_pos}, {"tokens", std::vector<std::int64_t>(tokens, tokens + n)}}.dump() << "\n";
  }
  if (n > 1 || start_pos == 0) reply_index_ = 0;  // a new prompt: start the reply over
  const int next = reply_index_ < reply_.size() ? reply_[reply_index_] : stop_id_;
  ++reply_index_;
  std::fill(logits_.begin(), logits_.end(), 0.0f);
  if (uniform_) return logits_;
  if (next >= 0 && next < metadata_.vocab_size) logits_[next] = 100.0f;  // certain at any temperature
  return logits_;
}

}  // namespace torchchat
