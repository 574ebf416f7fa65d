#pragma once
#include <string>

namespace torchchat {

// The whole file as bytes. Throws Error naming the file if it cannot be read.
std::string read_file(const std::string& path, const std::string& what);

}  // namespace torchchat
