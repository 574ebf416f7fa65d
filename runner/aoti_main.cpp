// aoti_run: the llama runner over an AOT Inductor model (.so or .pt2), a main over libtorchchat.
//
//   ./cmake-out/aoti_run ./model.so -z ./tokenizer.bin -l 2 -i "Once upon a time"

#include "main_exit.h"
#include "torchchat.h"

int main(int argc, char** argv) { return end_process(tc_run_cli(argc, argv, "aoti")); }
