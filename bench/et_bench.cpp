// et_bench: bench_main (bench/backend_bench.cpp) over the ExecuTorch backend of et_run.

#include "backend_bench.h"
#include "backends/et_backend.h"

int main(int argc, char** argv) {
  return bench_main(argc, argv, torchchat::make_et_backend);
}
