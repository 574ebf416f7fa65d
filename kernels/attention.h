// Causal grouped-query attention over a KV cache of fp32 or bf16 values, computed in fp32: the
// model's attention for a prompt (T queries) and for decode (T = 1), in one function.
//
//   out[t, h] = softmax_p(scale * q[t, h] . k[h / G, p]) @ v[h / G, p],  p in [0, pos[t]]
//
// G = H / Hkv query heads share a KV head. Why our own: ATen's CPU SDPA reads a KV head once per
// query head, through one small GEMV per head and block, and with the query heads it pays ~18 us
// a layer for 128 positions that take ~6 us to read (measured on SmolLM2). Here a task takes one
// token and one KV head: each key and value row is loaded once for the group's G heads, the
// softmax runs online (max and sum carried across blocks of positions, flash-attention style),
// and decode splits a head's positions across tasks whose partial results are merged at the end
// (flash decoding), so that 3 KV heads keep 2 threads busy.
//
// Layout: q and out [T, H, D] fp32 (token-major, as the projections produce them: out feeds the
// output projection without a transpose); the cache [Hkv, S, D] per tensor, fp32 or bf16 (a bf16
// model's cache: its rows are widened to fp32 as they are read, half the bytes of an fp32 cache),
// with head stride `head_stride` (>= S * D: a view of a longer cache). Only positions [0, pos[t]]
// are read: the mask of the model is implied by the positions, so no mask tensor is built or read.
//
// No threads, no allocation in here (quant_linear.h's rule): the caller splits tasks across its
// pool and gives the partials' memory.
#pragma once

#include <cstdint>

namespace torchchat::kernels {

struct AttentionArgs {
  const float* q;            // [T, H, D]
  const void* k;             // [Hkv, S, D], head stride head_stride: fp32, or bf16 bits when bf16
  const void* v;             // likewise
  bool bf16;
  const std::int64_t* pos;   // [T]: token t attends cache positions [0, pos[t]]
  float* out;                // [T, H, D]
  std::int64_t T, H, Hkv, D, head_stride;
  float scale;
  std::int64_t splits;       // tasks per (token, KV head); > 1 needs partials
  float* partials;           // splits > 1: attention_partials_size(args) floats
};

// The index of the first position outside the cache [0, S), or T when every one is inside: the
// operator wrappers' check, before any position is read.
inline std::int64_t position_outside(const std::int64_t* pos, std::int64_t T, std::int64_t S) {
  for (std::int64_t t = 0; t < T; ++t)
    if (pos[t] < 0 || pos[t] >= S) return t;
  return T;
}

// The arguments of a call with checked positions, for `threads` threads: scale 1 / sqrt(D) and the
// position splits (attention_splits); `partials` is left to the caller (attention_partials_size).
AttentionArgs attention_args(const float* q, const void* k, const void* v, bool bf16, const std::int64_t* pos,
                             float* out, std::int64_t T, std::int64_t H, std::int64_t Hkv, std::int64_t D,
                             std::int64_t head_stride, std::int64_t threads);

// Tasks for a call: T * Hkv * splits.
inline std::int64_t attention_tasks(const AttentionArgs& a) { return a.T * a.Hkv * a.splits; }
inline std::int64_t attention_partials_size(const AttentionArgs& a) {
  return a.splits > 1 ? attention_tasks(a) * (a.H / a.Hkv) * (a.D + 2) : 0;
}

// Position splits per (token, KV head) for `threads` threads: 1 unless there are too few
// (token, KV head) pairs to share among the threads (decode), then up to one per thread, each
// covering at least 32 positions of the longest query's.
std::int64_t attention_splits(std::int64_t T, std::int64_t Hkv, std::int64_t longest, std::int64_t threads);

// Runs tasks [task0, task1). Tasks of one KV head are adjacent, and tokens are taken in the order
// first, last, second, second to last, ...: a causal prompt's work per token grows with its
// position, so any contiguous range of tasks holds about its share of the work.
void attention(const AttentionArgs& a, std::int64_t task0, std::int64_t task1);
// With splits > 1, after every task: merges the partials of the (token, KV head) pairs [i0, i1)
// of T * Hkv into out.
void attention_merge(const AttentionArgs& a, std::int64_t i0, std::int64_t i1);

// One task's work: G query heads (rows of D floats, q) against positions [l0, l1) of one KV head
// (k, v at that head), giving per head the running max m, the sum of exp(score - m) z, and the
// sum of exp(score - m) * v, acc [G, D]; k and v fp32, or bf16 bits (widened exactly). An empty
// range gives m = -inf, z = 0, acc = 0.
//
// Every implementation gives the same bits, so a model's tokens do not depend on the CPU: each
// head's floats go through this order of fp32 operations, each rounded, none fused but fma
// (the AVX-512 code's natural order; the files are compiled with fp-contract=off to keep it).
//   Lanes: 16 running values, lane j taking elements or positions j, j + 16, j + 32, ...
//   sum16(x) and max16(x): the halving tree over 16 lanes, x[i] = x[i] op x[i + h] for
//     h = 8, 4, 2, 1 (i < h); max(a, b) = a > b ? a : b (MAXPS), a the lower lane.
//   score(l): lane j = (q[j] * scale) * k[l, j], then lane j = fma(q[d] * scale, k[l, d], lane j)
//     for d = j + 16, j + 32, ... < D (a lane with no element is 0); score = sum16(lanes).
//   m = -inf, z = 0, acc = 0. Then blocks of 64 positions from l0 (the last may be shorter), and
//   for each block and head:
//     M = max16(lanes), lane j starting at m and taking max(lane, score(l)) over the block's
//       positions l = block start + j + 16i in order;
//     r = exp0(m - M); m = M; w(l) = exp0(score(l) - M) for the block's positions;
//     z = z * r + sum16(lanes), lane j starting at 0 and adding w(l) over the positions as for M;
//     acc[d] = acc[d] * r, then acc[d] = fma(w(l), v[l, d], acc[d]) over the positions in order.
//   exp0(x), exp(x) for x <= 0: x = max(x, -87) (below, exp would be subnormal: exp(-87) instead);
//     n = x * log2(e) rounded to the nearest integer (ties to even); r = fma(-n, 0.693359375, x),
//     r = fma(-n, -2.12194440e-4, r) (ln 2 in two parts); p = 1.9875691500e-4, then
//     p = fma(p, r, c) for c = 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
//     1.6666665459e-1, 5.0000001201e-1 (Cephes' expf polynomial); p = fma(p, r * r, r + 1);
//     exp0 = p * 2^n (exact: 2^n and the product are normal floats for n in [-126, 0]).
// How an implementation splits the heads into passes or D into tiles is free: heads and the
// elements of acc do not mix. The generic code is this definition written plainly.
namespace generic {
void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const float* k, const float* v,
            std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc);
void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const std::uint16_t* k,
            const std::uint16_t* v, std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc);
}  // namespace generic
namespace avx512 {
// D a multiple of 16, at most 128.
void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const float* k, const float* v,
            std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc);
void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const std::uint16_t* k,
            const std::uint16_t* v, std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc);
}  // namespace avx512
namespace avx2 {
// D a multiple of 16, at most 128.
void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const float* k, const float* v,
            std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc);
void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const std::uint16_t* k,
            const std::uint16_t* v, std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc);
}  // namespace avx2
namespace neon {
// D a multiple of 16, at most 128.
void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const float* k, const float* v,
            std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc);
void attend(const float* q, std::int64_t G, std::int64_t D, float scale, const std::uint16_t* k,
            const std::uint16_t* v, std::int64_t l0, std::int64_t l1, float* m, float* z, float* acc);
}  // namespace neon

}  // namespace torchchat::kernels
