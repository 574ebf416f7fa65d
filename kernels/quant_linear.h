// Linear layers on CPU: y[M, N] = x[M, K] @ dequant(W)[N, K]^T, fp32 activations.
//
// Weight formats (quantized ones prepacked once, at quantization time, by torchchat/kernels.py):
//   float: fp32 or bf16 [N, K] row-major, as the model holds it (no packed copy: an output layer
//         tied to the embedding table reads the table itself)
//   panels: fp32 or bf16 in column panels of 32 outputs, [ceil(N / 32), K, 32] (zero rows pad N):
//         a prompt's GEMM broadcasts one activation against 32 weights of a k (no horizontal
//         sums), and decode streams each panel front to back
//   int8: q int8 [N, K] row-major, one fp32 scale per output row, [N]:  w[n, k] = q[n, k] * scale[n]
//         (the layers whose width is not a multiple of 32; the others use the int8 panels below)
//
//   int4 panels for int8 activations (int4_a8_linear): the int4 math (w = q * scale + min per
//         group of G, G a multiple of 32 dividing K) in panels of 16 output rows, the layout of
//         AVX-512 VNNI's vpdpbusd, which multiplies 4 unsigned bytes by 4 signed bytes and adds
//         them into each of 16 int32 lanes (lane l = row 16p + l). Per panel p and group g,
//         8G + 64 bytes: for each block of 32 k from k0, 4 chunks c of 64 bytes whose byte
//         4l + i = q[16p + l, k0 + 4c + i] | q[16p + l, k0 + 16 + 4c + i] << 4; then the group's
//         16 fp16 scales and 16 fp16 mins. [ceil(N / 16), K / G, 8G + 64] bytes; zero rows pad N.
//   int8 panels for int8 activations (int8_a8_linear): int8 weights (w = q * scale, one
//         fp32 scale per row, G = K, or per group of G, a multiple of 32) in panels of 16 rows, each
//         code stored as the unsigned byte q + 128 (vpdpbusd's weights are unsigned). Per panel p
//         and group g, 16G + 64 bytes: for each block of 32 k from k0, 8 chunks c of 64 bytes whose
//         byte 4l + i = q[16p + l, k0 + 4c + i] + 128; then the group's 16 fp32 scales.
//         [ceil(N / 16), K / G, 16G + 64] bytes; zero rows pad N.
//   Both take the activations in int8 slices per token and block of 32, symmetric. One slice is
//         int8 activations (what llama.cpp's Q8_0/Q8_1 do for its dot products): s = max|x| / 127,
//         xq0 = x / s rounded half to even (0 when s = 0). Three slices keep fp32 accuracy (the
//         Ozaki scheme's idea: a float matrix product as a few exact integer ones): the residual
//         r1 = x - xq0 * s (exact in fp32) gives xq1 = r1 / (s / 256) rounded, r2 = r1 - xq1 * s / 256
//         gives xq2 = r2 / (s / 65536) rounded (xq1 and xq2 in [-128, 127]; a rounding to 128 carries
//         into the slice above), so x = s * (xq0 + xq1 / 2^8 + xq2 / 2^16) to within s / 2^17,
//         2^-24 of the block's max|x| (a block with s < 2^-100 keeps xq1 = xq2 = 0). Per slice j
//         its block sums sum_j = sum(xq_j); per block scaled_sum = s * (sum_0 + (sum_1 / 2^8 +
//         sum_2 / 2^16)). Then, per block b in order, with
//         exact integer dot products d_j = dot(q, xq_j) (int8: dot(q + 128, xq_j) - 128 * sum_j)
//         and only the scaling rounding:
//           dot = d_0 (one slice), or fma(d_0, 1, fma(d_1, 2^-8, d_2 * 2^-16)) (three slices)
//           int4: acc = fma(dot, scale * s, acc);  acc = fma(min, scaled_sum, acc)
//           int8: acc = fma(dot, scale * s, acc)
//
// The order of float operations (float_linear, panel_linear, int8_linear). Every implementation
// (generic, avx2, avx512) computes each y[m, n] with exactly these operations, so they agree bit
// for bit, and a token's logits depend neither on the CPU nor on whether it came in a prompt or
// alone (the tiling over M and N never changes an output's operations):
//   row-major (float, int8): 16 fp32 lanes, all +0 at first; lane l takes k = l, l + 16, l + 32, ...
//         in k order, acc[l] = fma(x[k], w[k], acc[l]) (w widened exactly to fp32: bf16 by a shift,
//         int8 by conversion); the last block of K % 16 columns pads x and w with +0 (so its
//         lanes past K also take fma(0, 0, acc[l])). Then the lanes are summed by a fixed tree:
//           s8[i] = acc[i] + acc[i + 8]  (i < 8),  s4[i] = s8[i] + s8[i + 4]  (i < 4),
//           s2[i] = s4[i] + s4[i + 2]  (i < 2),    sum = s2[0] + s2[1]
//         (one 512-bit register: its 256-bit halves, then 128-bit halves, then 64-bit halves, then
//         the two floats: each ISA writes this tree out itself, never a compiler's reduce intrinsic).
//         float: y = sum;  int8: y = sum * scale[n].
//   panels: y = 0, then y = fma(x[k], w[k, n], y) for k = 0 .. K - 1 in order (an output per lane).
//
// The functions compute the output columns [n0, n1) of every row of y (row stride N): the
// caller splits N across its threads. No threads, no allocation, no torch in here, so the
// same code serves PyTorch (eager / AOT Inductor through torch_ops.cpp) and anything else.
#pragma once

#include <cstdint>

namespace torchchat::kernels {

struct FloatWeights {
  const void* w;  // fp32, or bf16 bits when bf16
  bool bf16;
  std::int64_t N, K;
};

struct PanelWeights {
  const void* w;  // fp32, or bf16 bits when bf16
  bool bf16;
  std::int64_t N, K;
};
constexpr std::int64_t kPanel = 32;  // outputs per panel

struct Int8Weights {
  const std::int8_t* q;
  const float* scale;  // [N]
  std::int64_t N, K;
};

// Whether int8 scales shaped [rows] (dims 1) or [rows, cols] (dims 2) hold one scale per output
// row of an [N, K] weight: [N] or [N, 1].
inline bool int8_row_scales(std::int64_t N, std::int64_t dims, std::int64_t rows, std::int64_t cols) {
  return rows == N && (dims == 1 || (dims == 2 && cols == 1));
}

constexpr std::int64_t kA8Panel = 16;  // outputs per panel of the int8-activation kernels

// int4 or int8 panels for int8 activations.
struct A8PanelWeights {
  const std::uint8_t* w;
  std::int64_t N, K, G;
};

// K of int4 panels shaped [panels, groups, bytes] for N outputs and groupsize G: groups * G
// when the shape is [ceil(N / 16), K / G, 8G + 64] with K >= G a multiple of 32; 0 otherwise.
inline std::int64_t int4_panel_k(std::int64_t N, std::int64_t G, std::int64_t panels, std::int64_t groups,
                                 std::int64_t bytes) {
  const bool ok = G >= 32 && G % 32 == 0 && N >= 1 && groups >= 1 && bytes == 8 * G + 64 &&
                  panels == (N + kA8Panel - 1) / kA8Panel;
  return ok ? groups * G : 0;
}

// G of int8 panels shaped [panels, groups, bytes] for N outputs: (bytes - 64) / 16 when the shape
// is [ceil(N / 16), K / G, 16G + 64] with G a multiple of 32 (K = groups * G); 0 otherwise.
inline std::int64_t int8_panel_groupsize(std::int64_t N, std::int64_t panels, std::int64_t groups,
                                         std::int64_t bytes) {
  const std::int64_t G = bytes >= 64 && (bytes - 64) % 16 == 0 ? (bytes - 64) / 16 : 0;
  const bool ok = G >= 32 && G % 32 == 0 && N >= 1 && groups >= 1 && panels == (N + kA8Panel - 1) / kA8Panel;
  return ok ? G : 0;
}

// Activations in int8 slices per token and block of 32 (see above): q [slices, M, K], scale and
// scaled_sum [M, K / 32], sum [slices, M, K / 32]. One slice: int8 activations; three: fp32 ones.
struct Int8Activations {
  const std::int8_t* q;
  const float* scale;
  const float* scaled_sum;
  const std::int32_t* sum;
  std::int64_t M, K;
  int slices;
};

void float_linear(const float* x, std::int64_t M, const FloatWeights& w, float* y, std::int64_t n0, std::int64_t n1);
// n0 and n1 are multiples of kPanel (or N).
void panel_linear(const float* x, std::int64_t M, const PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void int8_linear(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0, std::int64_t n1);
// K a multiple of 32, slices 1 or 3; writes q [slices, M, K], scale, scaled_sum [M, K / 32] and
// sum [slices, M, K / 32].
void quantize_activations(const float* x, std::int64_t M, std::int64_t K, int slices, std::int8_t* q, float* scale,
                          float* scaled_sum, std::int32_t* sum);
// x [M, K] split into `slices` int8 slices in the caller's buffers q [slices, M, K], scales
// [2, M, K / 32] (the scales, then the scaled sums) and sums [slices, M, K / 32]: what
// int4_a8_linear and int8_a8_linear read.
inline Int8Activations quantized_activations(const float* x, std::int64_t M, std::int64_t K, int slices,
                                             std::int8_t* q, float* scales, std::int32_t* sums) {
  float* scaled_sum = scales + M * (K / 32);
  quantize_activations(x, M, K, slices, q, scales, scaled_sum, sums);
  return {q, scales, scaled_sum, sums, M, K, slices};
}
// Slice j's unit, in units of s (above).
constexpr float kSliceUnit[3] = {1.f, 0x1p-8f, 0x1p-16f};
// Below this s (activations under ~1e-28) the lower slices' units would be subnormal or zero:
// such a block keeps one slice (an absolute error under 1e-30).
constexpr float kSmallestSplit = 0x1p-100f;
// The block's sum of x as its slices hold it, in units of s (above): the same float operations
// in every implementation.
inline float slice_sum(const std::int32_t* sums, std::int64_t stride, int slices) {
  if (slices == 1) return static_cast<float>(sums[0]);
  const float low = __builtin_fmaf(static_cast<float>(sums[stride]), kSliceUnit[1],
                                   static_cast<float>(sums[2 * stride]) * kSliceUnit[2]);
  return static_cast<float>(sums[0]) + low;
}
// n0 and n1 are multiples of kA8Panel (or N).
void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);

// Which implementations run, chosen once at the first call, best first:
//   "avx512-vnni"  AVX-512 F/BW/VL + FMA + F16C, and AVX-512 VNNI for the int8-activation kernels
//   "avx512"       the same without VNNI (the int8-activation kernels run the AVX2 ones)
//   "avx2-vnni"    AVX2 + FMA + F16C, and AVX-VNNI (vpdpbusd on 256 bits) for the int8-activation kernels
//   "avx2"         AVX2 + FMA + F16C (vpmaddubsw / vpmaddwd for the int8-activation kernels)
//   "generic"      portable C++: a safety net, with a notice on stderr
// and on aarch64 (getauxval(AT_HWCAP)):
//   "neon-dotprod" Advanced SIMD, and the dot-product extension's sdot for the int8-activation kernels
//   "neon"         Advanced SIMD (smull / sadalp for the int8-activation kernels)
//   "generic"      as above
// Every level computes the same bits (each output in the same order of float operations), so a
// model's tokens do not depend on the CPU. TORCHCHAT_KERNELS=<level> forces one.
const char* isa();
// The one-line error when TORCHCHAT_KERNELS names an unknown level or one this CPU cannot run (the
// kernels then run the best level the CPU has, never an instruction it lacks); nullptr otherwise.
// The runners and the Python package refuse to go on when it is set.
const char* isa_error();

// The implementations, for tests that compare them directly.
namespace generic {
void panel_linear(const float* x, std::int64_t M, const PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void float_linear(const float* x, std::int64_t M, const FloatWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void int8_linear(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0, std::int64_t n1);
void quantize_activations(const float* x, std::int64_t M, std::int64_t K, int slices, std::int8_t* q, float* scale,
                          float* scaled_sum, std::int32_t* sum);
void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
}  // namespace generic
namespace avx512 {
void panel_linear(const float* x, std::int64_t M, const PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void float_linear(const float* x, std::int64_t M, const FloatWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void int8_linear(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0, std::int64_t n1);
}  // namespace avx512
namespace avx512vnni {
void quantize_activations(const float* x, std::int64_t M, std::int64_t K, int slices, std::int8_t* q, float* scale,
                          float* scaled_sum, std::int32_t* sum);
void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
}  // namespace avx512vnni
namespace avx2 {
void panel_linear(const float* x, std::int64_t M, const PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void float_linear(const float* x, std::int64_t M, const FloatWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void int8_linear(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0, std::int64_t n1);
void quantize_activations(const float* x, std::int64_t M, std::int64_t K, int slices, std::int8_t* q, float* scale,
                          float* scaled_sum, std::int32_t* sum);
void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
}  // namespace avx2
namespace avx2vnni {  // AVX2 + AVX-VNNI: the int8-activation kernels' dot products (quantize_activations: avx2's)
void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
}  // namespace avx2vnni
namespace neon {  // aarch64 Advanced SIMD, 16 lanes as four 4-lane vectors
void panel_linear(const float* x, std::int64_t M, const PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void float_linear(const float* x, std::int64_t M, const FloatWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void int8_linear(const float* x, std::int64_t M, const Int8Weights& w, float* y, std::int64_t n0, std::int64_t n1);
void quantize_activations(const float* x, std::int64_t M, std::int64_t K, int slices, std::int8_t* q, float* scale,
                          float* scaled_sum, std::int32_t* sum);
void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
}  // namespace neon
namespace neondotprod {  // neon with sdot: the int8-activation kernels' dot products
void int4_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
void int8_a8_linear(const Int8Activations& x, const A8PanelWeights& w, float* y, std::int64_t n0, std::int64_t n1);
}  // namespace neondotprod

}  // namespace torchchat::kernels
