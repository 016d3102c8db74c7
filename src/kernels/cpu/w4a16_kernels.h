// Internal interface between the W4A16 dispatcher (w4a16.cpp) and its per-ISA kernels
// (w4a16_avx2.cpp, w4a16_avx512.cpp). Not for use outside kernels/cpu.
//
// The ISA files are compiled with their own -m flags, so they include nothing but this header and
// <immintrin.h>: no std:: templates whose inline copies the linker could pick up from the wrong file.
//
// Interleaved activations. Each ISA reads a 32-byte code chunk (64 kernel columns) with whole-register
// shifts, so the codes it pulls out of a vector are not 64 consecutive columns but a fixed shuffle of them.
// Instead of un-shuffling the codes per weight, the dispatcher shuffles the activations once per call:
//   xi[m, c*64 + p] = x[m, input column of kernel column c*64 + chunk_col[p]]     p = 0..63
// and every kernel consumes xi in position order. The panel path dequantizes W in the same position order,
// so sgemm sees x and W with the same (shuffled) K order.
#pragma once

#include <cstdint>

namespace qforge::kernels::w4detail {

inline constexpr int kRowBlock = 4;  // output rows one kernel call keeps in registers (x loads reused 4x)
inline constexpr int kMBlock = 4;    // activation rows one kernel call keeps in registers

// Raw view of a W4Weight (see w4a16.h for the layout).
struct W4View {
  int64_t out, in, group_size;
  const uint8_t* codes;    // [out, in/2]
  const uint16_t* scales;  // [out, in/group_size] fp16 bits
  const float* zeros;      // [out, in/group_size] f32
};

struct W4IsaKernels {
  const char* name;
  // [64] position -> kernel column within a chunk (see above).
  const uint8_t* chunk_col;
  // y[m, o] = sum_k xi[m, k] * W[o, k] (+ bias[o]) for m in [0, M), o in [o0, o1).
  // xi [M, in] interleaved, row stride in; scratch: at least w4_scratch_floats(in, group_size) floats.
  void (*gemm_rows)(const float* xi, int64_t M, const W4View& w, int64_t o0, int64_t o1, const float* bias,
                    float* y, int64_t ldy, float* scratch);
  // dst[o - o0, :] = dequantized row o in interleaved order, for o in [o0, o1); dst row stride in.
  void (*dequant_rows)(const W4View& w, int64_t o0, int64_t o1, float* dst, float* scratch);
};

// bf16-activation kernel (w4a16_avx512bf16.cpp). It reads the activations in natural kernel-column order
// (no interleave): xb[m, k] = bf16 x[m, perm(k)], row stride in, and xsum[m, g] = the f32 sum of xb[m, k] over
// the kernel columns of group g (row stride in / group_size), which carries the zero points.
struct W4Bf16Kernels {
  const char* name;
  // y[m, o] = sum_k xb[m, k] * W[o, k] (+ bias[o]) for m in [0, M), o in [o0, o1); scratch as for gemm_rows.
  void (*gemm_rows)(const uint16_t* xb, const float* xsum, int64_t M, const W4View& w, int64_t o0, int64_t o1,
                    const float* bias, float* y, int64_t ldy, float* scratch);
};

// Per-thread scratch the kernels need: f32 scales and zeros of kRowBlock rows, or one dequantized row.
inline int64_t w4_scratch_floats(int64_t in, int64_t group_size) {
  const int64_t sz = 2 * kRowBlock * (in / group_size) + 16;
  return sz > in ? sz : in;
}

// AMX kernel (w4a16_amx.cpp): output rows per tile block and activation rows per pass.
inline constexpr int kAmxRows = 16;
inline constexpr int kAmxMaxM = 16;
// Per-thread scratch of the bf16-activation kernels: the AMX kernel's VNNI activations [in/2][16] u32, four A
// tiles, two table sets, the C tile and the block's scales (each 64-byte aligned), or the vdpbf16ps kernel's.
inline int64_t w4_bf16_scratch_floats(int64_t in, int64_t group_size) {
  const int64_t amx = 8 * in + 16 * (in / group_size) + 6 * 16 + 6 * 16 * 16 + 4 * 16 * 16;
  const int64_t dp = w4_scratch_floats(in, group_size);
  return amx > dp ? amx : dp;
}

const W4IsaKernels& w4_kernels_scalar();
const W4IsaKernels& w4_kernels_avx2();
const W4IsaKernels& w4_kernels_avx512();
const W4Bf16Kernels& w4_kernels_avx512bf16();
const W4Bf16Kernels& w4_kernels_amx();
// Whether the CPU and OS allow AMX tiles (CPUID, XCR0), after asking Linux for the tile data state
// (arch_prctl ARCH_REQ_XCOMP_PERM); false on other systems.
bool w4_amx_enable();

}  // namespace qforge::kernels::w4detail
