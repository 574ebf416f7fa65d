#include "file_io.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include "torchchat/error.h"

namespace torchchat {

std::string read_file(const std::string& path, const std::string& what) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    throw Error(what + " '" + path + "': " + std::strerror(errno));
  }
  if (S_ISDIR(info.st_mode)) throw Error(what + " '" + path + "' is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + what + " '" + path + "': " + std::strerror(errno));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw Error("cannot read " + what + " '" + path + "'");
  return std::move(buffer).str();
}

}  // namespace torchchat
