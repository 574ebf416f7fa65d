// et_run: the llama runner over an ExecuTorch program (.pte), a main over libtorchchat.
//
//   ./cmake-out/et_run ./model.pte -z ./tokenizer.bin -l 2 -i "Once upon a time"

#include "main_exit.h"
#include "torchchat.h"

int main(int argc, char** argv) { return end_process(tc_run_cli(argc, argv, "executorch")); }
