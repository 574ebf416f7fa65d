#pragma once
// The one error type of the runner core.
//
// Library code never exits or prints: it throws torchchat::Error with a
// one-line message meant for the user. The edge of the program (run_main, the
// tools) catches it, prints "error: <message>" and returns non-zero.

#include <stdexcept>
#include <string>
#include <string_view>

namespace torchchat {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "error: <message>\n" with control characters in the message (which may
// quote a file's bytes or a path) escaped, so it is always exactly one line.
std::string error_line(std::string_view message);

}  // namespace torchchat
