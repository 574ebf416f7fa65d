// et_bench: bench_main (bench/backend_bench.cpp) over the ExecuTorch backend of et_run.

#include <memory>

#include "backend_bench.h"
#include "backends/et_backend.h"

int main(int argc, char** argv) {
  return bench_main(argc, argv, [](const torchchat::BackendOptions& options) {
    return std::make_unique<torchchat::EtBackend>(options);
  });
}
