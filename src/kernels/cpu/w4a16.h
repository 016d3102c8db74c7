// CPU W4A16 linear: int4 weights with per-group fp16 scales and zero points, f32 or bf16 activations.
// This is the runtime's own packed layout; checkpoint formats (AutoAWQ GEMM, GPTQ, GGUF Q4_0/Q4_1) are
// repacked into it once at load time (see formats/quant_pack.h).
//
// Layout of W4Weight::codes (bit order, defined here and nowhere else):
//   row-major over output rows; each row holds in/2 bytes, in chunks of 64 inputs (32 bytes).
//   In chunk c of row o, byte j (0..31) holds
//     low nibble  (bits 0..3) = code of kernel column c*64 + j
//     high nibble (bits 4..7) = code of kernel column c*64 + 32 + j
//   so masking a 32-byte chunk with 0x0F gives 32 consecutive codes and shifting right by 4 the next 32.
// Value of a weight: (code - zero[o, g]) * scale[o, g] with g = kernel column / group_size (scale fp16, zero f32).
// Kernel columns are the input columns permuted by `perm` when act-order left groups non-contiguous:
// kernel column k multiplies activation x[perm[k]] (perm empty: identity).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "core/huge_pages.h"
#include "core/status.h"

namespace qforge::kernels {

inline constexpr int64_t kW4Chunk = 64;      // inputs per packed chunk (32 bytes)
inline constexpr int64_t kW4MinGroup = 32;   // smallest group size: a 16-lane vector never spans two groups

struct W4Weight {
  int64_t out = 0, in = 0;      // in % kW4Chunk == 0
  int64_t group_size = 0;       // multiple of 32 dividing in (== in for per-channel)
  // Streamed once per call: kept on transparent huge pages (core/huge_pages.h).
  HugeVector<uint8_t> codes;    // [out, in/2] nibbles, layout above
  HugeVector<uint16_t> scales;  // [out, in/group_size] fp16 bits
  HugeVector<float> zeros;      // [out, in/group_size] f32: integers for AWQ/GPTQ, -m/d for GGUF Q4_1 (f32 keeps
                                //   q*d + m to f32 rounding, where fp16 would move it by up to 2^-8 d)
  std::vector<int32_t> perm;    // [in] or empty: kernel column k reads x[perm[k]]

  int64_t n_groups() const { return in / group_size; }
  // Bytes a GEMV streams: codes + scales + zeros (+ perm).
  int64_t bytes() const;
};

// Packs unpacked codes [out, in] (one per byte, 0..15) in kernel-column order with scales/zeros
// [out, in/group_size] (f32 values, rounded to fp16). Errors name `name` and the offending shape/value.
Expected<W4Weight> w4_pack(const uint8_t* codes /*[out, in]*/, const float* scales /*[out, G]*/,
                           const float* zeros /*[out, G]*/, int64_t out, int64_t in, int64_t group_size,
                           std::vector<int32_t> perm, std::string_view name);
// Inverse of w4_pack's code packing: codes [out, in] in kernel-column order.
std::vector<uint8_t> w4_unpack_codes(const W4Weight& w);
// Dequantized weight [out, in] in ORIGINAL input order (perm undone), for tests and fallbacks.
std::vector<float> w4_dequantize(const W4Weight& w);

// y[M, out] = x[M, in] @ W^T (+ bias[out] if non-null); x row stride ldx, y row stride ldy (elements).
// Small M runs the packed GEMV/GEMM kernel; large M dequantizes panels of rows into a bounded scratch
// and calls BLAS sgemm. Multi-threaded over output rows.
void w4_linear(const float* x, int64_t M, int64_t ldx, const W4Weight& w, const float* bias, float* y,
               int64_t ldy);
// Same with bf16 activations (uint16 bits).
void w4_linear_bf16(const uint16_t* x, int64_t M, int64_t ldx, const W4Weight& w, const float* bias, float* y,
                    int64_t ldy);
// Scalar reference: dequantize each weight and accumulate in f64, for tests.
void w4_linear_ref(const float* x, int64_t M, int64_t ldx, const W4Weight& w, const float* bias, float* y,
                   int64_t ldy);

// Which implementation w4_linear uses; chosen once from the CPU (or QFORGE_CPU_KERNEL=ref|avx2|avx512|
// avx512bf16|amx). f32 activations, and bf16 activations from the panel crossover up, run the same code for
// avx512, avx512bf16 and amx. Below the crossover, bf16 activations run
//   - avx512bf16: vdpbf16ps on the codes (exact products, f32 sums; the zero points enter through per-group
//     activation sums);
//   - amx: AMX tiles, the vector units decoding each weight to bf16((code - zero) * scale) (rounded to bf16,
//     relative error <= 2^-9, as GPU W4A16 kernels round to fp16) and tdpbf16ps summing in f32.
enum class CpuIsa { kScalar, kAvx2, kAvx512, kAvx512Bf16, kAmx };
// Below the panel crossover, bf16 activations take: with kAmx, the AMX kernel from M = kW4AmxMinM and the
// vdpbf16ps kernel below it; with kAvx512Bf16, the vdpbf16ps kernel up to kW4DpBf16MaxM and the f32 kernel
// (after converting x) above. Measured with `w4a16_bench` and QFORGE_CPU_KERNEL (docs/packed-checkpoints.md):
// AMX's fixed cost per 16-row chunk (decode to memory, tile loads) loses to the vector kernels at M = 1 and
// wins from M = 4 (2.7x the f32 kernel at M = 16); vdpbf16ps (2 cycles each here) loses to FMAs from M = 4.
inline constexpr int64_t kW4AmxMinM = 4;
inline constexpr int64_t kW4DpBf16MaxM = 2;
const char* cpu_isa_name(CpuIsa isa);
CpuIsa w4_detected_isa();            // best the CPU supports
CpuIsa w4_active_isa();              // what w4_linear uses now
void w4_set_isa(CpuIsa isa);         // tests/benchmarks force a path; must be <= w4_detected_isa()

// Threads w4_linear uses. n > 0 fixes the count (tests, benchmarks); 0 (the default) follows the BLAS thread
// count (what ops::num_threads() reports), capped at std::thread::hardware_concurrency(). Results do not
// depend on it: each output element is computed by one thread in a fixed order.
void w4_set_num_threads(int n);
int w4_num_threads();
// Smallest M that takes the dequantize-panel + sgemm path (m <= 0 restores the measured default, 64).
void w4_set_panel_min_m(int64_t m);
int64_t w4_panel_min_m();

}  // namespace qforge::kernels
