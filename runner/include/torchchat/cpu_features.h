#pragma once
// The CPU features an exported artifact's compiled code needs (its metadata's "cpu_features",
// written by torchchat/target_cpu.py), checked before that code is loaded: an instruction the
// CPU lacks would stop the runner with SIGILL, possibly already in the library's initializers.

#include <string>
#include <vector>

#include "torchchat/metadata.h"

namespace torchchat {

// The features in `needed` that this CPU (and its OS) lacks, by GCC's names; a name this
// runner does not know counts as lacking.
std::vector<std::string> missing_cpu_features(const std::vector<std::string>& needed);

// Throws Error, one line naming the missing features, if this CPU cannot run the artifact at
// `path` whose metadata is `metadata`.
void require_cpu_features(const ModelMetadata& metadata, const std::string& path);

}  // namespace torchchat
