// Device helpers shared by the W4A16 kernels: int4 -> fp16/bf16 conversion, cp.async, mma.sync.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace qforge::cuda::detail {

template <bool kBF16>
struct Act;
template <>
struct Act<false> {
  using T = __half;
  static __device__ __forceinline__ T from_float(float v) { return __float2half_rn(v); }
};
template <>
struct Act<true> {
  using T = __nv_bfloat16;
  static __device__ __forceinline__ T from_float(float v) { return __float2bfloat16_rn(v); }
};

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(d) : "r"(a), "r"(b), "r"(c));  // (a & b) | c
  return d;
}

// Per-lane dequantisation constants of one 16-row tile and group (rows gid and gid + 8).
struct GroupConsts {
  uint32_t zlo, zhi;  // magic + zero of row gid / gid+8, in both halves (fp16 or bf16 bits)
  uint32_t slo, shi;  // fp16 path: scale of row gid / gid+8 in both halves
  float fslo, fshi;   // bf16 path: fp32 scales
};

template <bool kBF16>
__device__ __forceinline__ GroupConsts group_consts(uint32_t scale_pair, uint32_t zero_pair) {
  // zero_pair: bits 0..3 zero of row gid, bits 4..7 zero of row gid+8.
  GroupConsts c;
  const uint32_t z0 = zero_pair & 15u, z1 = (zero_pair >> 4) & 15u;
  const uint32_t magic = kBF16 ? 0x4300u : 0x6400u;  // bf16 128.0 / fp16 1024.0: low mantissa bits = code
  c.zlo = (magic | z0) * 0x10001u;
  c.zhi = (magic | z1) * 0x10001u;
  c.slo = __byte_perm(scale_pair, 0, 0x1010);
  c.shi = __byte_perm(scale_pair, 0, 0x3232);
  if (kBF16) {
    c.fslo = __half2float(__ushort_as_half(static_cast<unsigned short>(scale_pair & 0xFFFFu)));
    c.fshi = __half2float(__ushort_as_half(static_cast<unsigned short>(scale_pair >> 16)));
  }
  return c;
}

// One packed word -> the four mma A registers of one k-step (w4a16_layout.h). Exact up to one rounding:
// (magic + code) - (magic + zero) is exact, then one multiply by the scale (fp16), or by the fp32 scale
// rounded once to bf16.
template <bool kBF16>
__device__ __forceinline__ void dequant_word(uint32_t w, const GroupConsts& c, uint32_t a[4]) {
  const uint32_t magic = kBF16 ? 0x43004300u : 0x64006400u;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t v = lop3_and_or(w >> (4 * j), 0x000F000Fu, magic);
    const uint32_t z = (j & 1) ? c.zhi : c.zlo;
    if constexpr (!kBF16) {
      __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&v), *reinterpret_cast<const __half2*>(&z));
      const uint32_t s = (j & 1) ? c.shi : c.slo;
      h = __hmul2(h, *reinterpret_cast<const __half2*>(&s));
      a[j] = *reinterpret_cast<uint32_t*>(&h);
    } else {
      const __nv_bfloat162 h =
          __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&v), *reinterpret_cast<const __nv_bfloat162*>(&z));
      float2 f = __bfloat1622float2(h);
      const float s = (j & 1) ? c.fshi : c.fslo;
      __nv_bfloat162 r = __floats2bfloat162_rn(f.x * s, f.y * s);
      a[j] = *reinterpret_cast<uint32_t*>(&r);
    }
  }
}

template <bool kBF16>
__device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  if constexpr (!kBF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// 16 bytes, bypassing L1 (weights are streamed once).
__device__ __forceinline__ void cp_async16_cg(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src));
}
// 16 bytes through L1 (activations are re-read by every block); zero-filled when !valid.
__device__ __forceinline__ void cp_async16_ca(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src));
}
// Programmatic dependent launch (sm_90; no-ops when the launch did not ask for it, and before sm_90).
// launch: the next kernel in the stream may be scheduled once every block of this grid has run this.
// wait: blocks until the previous kernel in the stream has completed and its writes are visible.
__device__ __forceinline__ void grid_dependency_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

}  // namespace qforge::cuda::detail
