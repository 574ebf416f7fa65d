#include "torchchat/backend.h"

#include <string>

#include "torchchat/error.h"

namespace torchchat {

void check_forward_args(const ModelMetadata& metadata, const std::int64_t* tokens, int n, int start_pos) {
  if (n < 1 || start_pos < 0 || start_pos + n > metadata.max_seq_len) {
    throw Error(std::to_string(n) + " tokens at position " + std::to_string(start_pos) +
                " do not fit the model's context of " + std::to_string(metadata.max_seq_len));
  }
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= metadata.vocab_size)
      throw Error("token id " + std::to_string(tokens[i]) + " is outside the model's vocabulary");
  }
}

}  // namespace torchchat
