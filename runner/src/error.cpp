#include "torchchat/error.h"

#include <cstdio>

namespace torchchat {

std::string error_line(std::string_view message) {
  std::string line = "error: ";
  for (const char c : message) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7F) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02X", byte);
      line += escaped;
    } else {
      line += c;
    }
  }
  return line + "\n";
}

}  // namespace torchchat
