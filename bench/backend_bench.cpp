// bench_main: llama-bench's measurements for an exported model, through the same Backend
// class as the runner (aoti_bench: AotiBackend, et_bench: EtBackend). Prints one JSON line.
//
//   aoti_bench|et_bench MODEL [-p 128] [-g 128] [-d 0] [-r 3]   prompt processing of -p tokens; -g decode
//                                                               steps after -d positions of context
//   aoti_bench|et_bench --bandwidth [-t 2] [--mb 2048]    read bandwidth probe (GB/s), -t threads, over --mb MB
//   aoti_bench|et_bench --compute [-t 2]                  fp32 FMA peak (GMAC/s) on 256- and 512-bit vectors, x86
//
// As llama-bench: random prompt tokens, greedy feeding during decode, no tokenizer and
// no stop tokens. Prompt processing and decode are separate tests, as llama-bench's pp128 and
// tg128: each starts again at position 0, so decode attends over positions [0, -g) unless -d
// (llama-bench's -d) first fills that many positions, untimed. The first (cold) prefill is
// reported apart as time to first token; peak RSS is the whole process's.

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "backend_bench.h"
#include "torchchat/error.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// This process's memory high-water mark since exec (VmHWM). Not ru_maxrss: Linux folds the RSS
// of the process that exec'd us (a fork of a large Python, say) into it.
double peak_rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // kB
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

std::int64_t argmax(std::span<const float> logits) {
  return std::max_element(logits.begin(), logits.end()) - logits.begin();
}

std::string json_list(const std::vector<double>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// Sum 64-bit words with several independent accumulators: the loop vectorises, and the
// result is used, so the reads cannot be optimised away. `streams` interleaved regions
// keep more cache-line misses in flight than one sequential stream (the hardware
// prefetchers follow each), which is how a matmul over several weight rows reads memory.
std::uint64_t sum_words(const std::uint64_t* p, std::size_t n, int streams) {
  const std::size_t part = n / streams / 8 * 8;
  std::uint64_t a[8] = {};
  for (std::size_t i = 0; i < part; i += 8)
    for (int s = 0; s < streams; ++s)
      for (int j = 0; j < 8; ++j) a[j] += p[s * part + i + j];
  std::uint64_t s = 0;
  for (auto x : a) s += x;
  return s;
}

// Reads a buffer of `mb` MB (2 GiB by default: far past any cache) again and again. Decode reads the
// same weights every step, so a buffer of the weights' size is the ceiling decode can reach:
// where a cache holds much of it (a 300 MB L3), that is faster than memory.
int bandwidth(int threads, int mb) {
  const std::size_t bytes = std::size_t(mb) << 20;
  std::vector<std::uint64_t> buf(bytes / 8, 1);
  std::uint64_t sink = 0;
  std::string results;
  double best_all = 0;
  for (const int streams : {1, 2, 4, 8}) {
    double best = 0;
    for (int rep = 0; rep < 4; ++rep) {
      std::vector<std::thread> pool;
      std::vector<std::uint64_t> sums(threads);
      const std::size_t chunk = buf.size() / threads;
      const auto t0 = Clock::now();
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] { sums[t] = sum_words(buf.data() + t * chunk, chunk, streams); });
      for (auto& th : pool) th.join();
      best = std::max(best, bytes / seconds_since(t0) / 1e9);
      for (auto s : sums) sink += s;
    }
    results += (results.empty() ? "" : ", ") + std::string("\"") + std::to_string(streams) + "\": " + std::to_string(best);
    best_all = std::max(best_all, best);
  }
  std::printf("{\"read_gb_per_s\": %.2f, \"by_streams_per_thread\": {%s}, \"threads\": %d, \"mb\": %zu, "
              "\"check\": %llu}\n",
              best_all, results.c_str(), threads, bytes >> 20, static_cast<unsigned long long>(sink % 7));
  return 0;
}

#if defined(__x86_64__)
// The arithmetic ceiling a prompt's matrix products can reach: ten independent chains of
// fused multiply-adds (more than the FMA units' latency x throughput), so the loop runs at the
// units' rate. Each is compiled for its ISA and called only when the CPU has it.
__attribute__((target("avx2,fma"))) double chains256(long n) {
  __m256 a[10];
  for (int j = 0; j < 10; ++j) a[j] = _mm256_set1_ps(static_cast<float>(j));
  __m256 b = _mm256_set1_ps(0.999f);
  const __m256 c = _mm256_set1_ps(0.001f);
  for (long i = 0; i < n; ++i) {
    for (int j = 0; j < 10; ++j) a[j] = _mm256_fmadd_ps(a[j], b, c);
    __asm__ volatile("" : "+x"(b));  // an opaque operand: the chains stay
  }
  __m256 sum = a[0];
  for (int j = 1; j < 10; ++j) sum = _mm256_add_ps(sum, a[j]);
  return _mm256_cvtss_f32(sum);
}
__attribute__((target("avx512f"))) double chains512(long n) {
  __m512 a[10];
  for (int j = 0; j < 10; ++j) a[j] = _mm512_set1_ps(static_cast<float>(j));
  __m512 b = _mm512_set1_ps(0.999f);
  const __m512 c = _mm512_set1_ps(0.001f);
  for (long i = 0; i < n; ++i) {
    for (int j = 0; j < 10; ++j) a[j] = _mm512_fmadd_ps(a[j], b, c);
    __asm__ volatile("" : "+v"(b));
  }
  __m512 sum = a[0];
  for (int j = 1; j < 10; ++j) sum = _mm512_add_ps(sum, a[j]);
  return _mm512_cvtss_f32(sum);
}

// GMAC/s of `threads` threads each running chains(n), lanes multiply-adds per FMA.
double fma_peak(double (*chains)(long), int lanes, int threads) {
  const long n = 20'000'000;
  double best = 0, sink = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<std::thread> pool;
    std::vector<double> sums(threads);
    const auto t0 = Clock::now();
    for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { sums[t] = chains(n); });
    for (auto& th : pool) th.join();
    best = std::max(best, 10.0 * lanes * n * threads / seconds_since(t0) / 1e9);
    for (auto s : sums) sink += s;
  }
  return sink == sink ? best : 0;  // uses the sums
}

int compute(int threads) {
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = __builtin_cpu_supports("avx512f");
  auto figure = [](bool has, double gmac) { return has ? std::to_string(gmac) : std::string("null"); };
  std::printf("{\"fma256_gmac_per_s\": %s, \"fma512_gmac_per_s\": %s, \"threads\": %d}\n",
              figure(avx2, avx2 ? fma_peak(chains256, 8, threads) : 0).c_str(),
              figure(avx512, avx512 ? fma_peak(chains512, 16, threads) : 0).c_str(), threads);
  return 0;
}
#else
int compute(int threads) {
  std::printf("{\"fma256_gmac_per_s\": null, \"fma512_gmac_per_s\": null, \"threads\": %d}\n", threads);
  return 0;
}
#endif

}  // namespace

int bench_main(int argc, char** argv, const torchchat::BackendFactory& make_backend) {
  std::string model;
  int n_prompt = 128, n_gen = 128, depth = 0, reps = 3, threads = 2, mb = 2048;
  bool probe = false, peak = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&] { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (a == "-p") n_prompt = value();
    else if (a == "-g") n_gen = value();
    else if (a == "-d") depth = value();
    else if (a == "-r") reps = value();
    else if (a == "-t") threads = value();
    else if (a == "--mb") mb = value();
    else if (a == "--bandwidth") probe = true;
    else if (a == "--compute") peak = true;
    else model = a;
  }
  if (peak) return threads >= 1 ? compute(threads) : 2;
  const bool valid = probe ? threads >= 1 && mb >= 1
                           : !model.empty() && n_prompt >= 1 && n_gen >= 1 && depth >= 0 && reps >= 1;
  if (!valid) {
    std::fprintf(stderr,
                 "usage: %s MODEL [-p 128] [-g 128] [-d 0] [-r 3] | %s --bandwidth [-t 2] [--mb 2048] | %s --compute "
                 "[-t 2]\n",
                 argv[0], argv[0], argv[0]);
    return 2;
  }
  try {
    if (probe) return bandwidth(threads, mb);  // a buffer too large for memory throws std::bad_alloc
    auto t0 = Clock::now();
    const std::unique_ptr<torchchat::Backend> loaded = make_backend(torchchat::BackendOptions{model, {}});
    torchchat::Backend& backend = *loaded;
    const double load_s = seconds_since(t0);
    const auto& meta = backend.metadata();
    if (n_prompt > meta.max_seq_len || depth + n_gen > meta.max_seq_len)
      throw torchchat::Error("-p, or -d + -g, exceed the model's context");

    std::mt19937 rng(1234);
    std::vector<std::int64_t> prompt(n_prompt), context(depth);
    for (auto& t : prompt) t = rng() % meta.vocab_size;
    for (auto& t : context) t = rng() % meta.vocab_size;

    double ttft_s = 0;
    std::vector<double> pp, tg;
    for (int rep = 0; rep <= reps; ++rep) {  // rep 0: cold run (first-token latency), not averaged
      t0 = Clock::now();
      std::int64_t token = argmax(backend.forward(prompt.data(), n_prompt, 0));
      const double prefill = seconds_since(t0);
      if (depth > 0) token = argmax(backend.forward(context.data(), depth, 0));
      t0 = Clock::now();
      for (int i = 0; i < n_gen; ++i) token = argmax(backend.forward(&token, 1, depth + i));
      const double decode = seconds_since(t0);
      if (rep == 0) {
        ttft_s = prefill;
      } else {
        pp.push_back(n_prompt / prefill);
        tg.push_back(n_gen / decode);
      }
    }
    std::printf("{\"load_s\": %.4f, \"ttft_s\": %.4f, \"pp_tps\": %s, \"tg_tps\": %s, \"peak_rss_mb\": %.1f}\n", load_s,
                ttft_s, json_list(pp).c_str(), json_list(tg).c_str(), peak_rss_mb());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
