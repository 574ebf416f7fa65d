// aoti_bench: bench_main (bench/backend_bench.cpp) over the AOT Inductor backend of aoti_run.

#include <memory>

#include "backend_bench.h"
#include "backends/aoti_backend.h"

int main(int argc, char** argv) {
  return bench_main(argc, argv, [](const torchchat::BackendOptions& options) {
    return std::make_unique<torchchat::AotiBackend>(options);
  });
}
