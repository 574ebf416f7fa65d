#pragma once
// The benchmark program around a backend (bench/backend_bench.cpp); aoti_bench and
// et_bench are thin mains over it, as aoti_run and et_run are over run_main.

#include "torchchat/backend.h"

int bench_main(int argc, char** argv, const torchchat::BackendFactory& make_backend);
