// et_run: the llama runner over an ExecuTorch program (.pte).
//
//   ./cmake-out/et_run ./model.pte -z ./tokenizer.bin -l 2 -i "Once upon a time"

#include "backends/et_backend.h"
#include "torchchat/cli.h"

int main(int argc, char** argv) {
  return torchchat::run_main(argc, argv, torchchat::make_et_backend);
}
