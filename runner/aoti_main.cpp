// aoti_run: the llama runner over an AOT Inductor model (.so or .pt2).
//
//   ./cmake-out/aoti_run ./model.so -z ./tokenizer.bin -l 2 -i "Once upon a time"

#include <memory>

#include "backends/aoti_backend.h"
#include "torchchat/cli.h"

int main(int argc, char** argv) {
  return torchchat::run_main(argc, argv, [](const torchchat::BackendOptions& options) {
    return std::make_unique<torchchat::AotiBackend>(options);
  });
}
