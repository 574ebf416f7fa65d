// toy_run: the llama runner over the scripted ToyBackend. This is all a
// runner's main needs to be; aoti_run and et_run differ only in the backend.

#include <memory>

#include "toy_backend.h"
#include "torchchat/cli.h"

int main(int argc, char** argv) {
  return torchchat::run_main(argc, argv, [](const torchchat::BackendOptions& options) {
    return std::make_unique<torchchat::ToyBackend>(options);
  });
}
