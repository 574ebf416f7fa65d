// Times every OpenMP parallel region of a process, by call site, without touching the process:
//
//   LD_PRELOAD=./cmake-out/libomp_regions.so OMP_NUM_THREADS=2 ./cmake-out/aoti_bench MODEL.so -p 8 -g 240
//
// On exit it prints, per call site (library and symbol), the regions entered and their mean
// wall time. A decode step's time minus its regions' is the serial work between them (wrappers,
// allocation, the model's own code), while the other threads wait. Why not `perf`: cloud VMs
// often have no hardware counters, and the sampling clock cannot tell a thread spinning in a
// barrier from one starting a region.
//
// It interposes GOMP_parallel, the entry of every `#pragma omp parallel` compiled by GCC (ATen's
// at::parallel_for in the torch wheel, our kernels, AOT Inductor's generated kernels), and calls
// the real one. Single-threaded bookkeeping: regions start from one thread at a time here.
#include <dlfcn.h>

#include <cstdio>
#include <ctime>

namespace {

constexpr int kSites = 64;
void* sites[kSites];
long calls[kSites];
double micros[kSites];
int n_sites;

double now_us() {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

}  // namespace

extern "C" void GOMP_parallel(void (*fn)(void*), void* data, unsigned threads, unsigned flags) {
  using Fn = void (*)(void (*)(void*), void*, unsigned, unsigned);
  static const Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "GOMP_parallel"));
  void* site = __builtin_return_address(0);
  const double t0 = now_us();
  real(fn, data, threads, flags);
  const double t = now_us() - t0;
  int i = 0;
  while (i < n_sites && sites[i] != site) ++i;
  if (i == n_sites) {
    if (n_sites == kSites) return;  // more call sites than slots: the rest go uncounted
    sites[n_sites++] = site;
  }
  calls[i]++;
  micros[i] += t;
}

__attribute__((destructor)) static void report() {
  std::fprintf(stderr, "%-28s %-64s %10s %10s\n", "library", "caller", "regions", "mean us");
  for (int i = 0; i < n_sites; ++i) {
    Dl_info info{};
    dladdr(sites[i], &info);
    const char* lib = info.dli_fname ? info.dli_fname : "?";
    for (const char* p = lib; *p; ++p)
      if (*p == '/') lib = p + 1;
    std::fprintf(stderr, "%-28.28s %-64.64s %10ld %10.2f\n", lib, info.dli_sname ? info.dli_sname : "?", calls[i],
            micros[i] / calls[i]);
  }
}
