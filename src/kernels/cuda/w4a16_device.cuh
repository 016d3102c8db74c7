// Device helpers shared by the W4A16 kernels: int4 -> fp16/bf16 conversion, streaming loads, cp.async, mma.sync.
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

// The 4 mma A registers of one k-step from one packed word (w4a16_layout.h), as exact integers c - z
// (FOLD) or as (c - z) * scale rounded once (!FOLD). zc: per-tile constants from tile_consts().
struct TileConsts {
  uint32_t z0;    // fp16: (1024 + z_gid) in both halves; bf16: (128 + z_gid)
  uint32_t z1;    // fp16: -(64 + z_gid8) in both halves (for the in-place x16 nibble); bf16: (128 + z_gid8)
  uint32_t s0, s1;  // !FOLD fp16: scale of row gid / gid+8 in both halves
  float f0, f1;     // FOLD, or bf16: fp32 scale of row gid / gid+8
};

template <bool kBF16, bool FOLD>
__device__ __forceinline__ TileConsts tile_consts(uint32_t scale_pair, uint32_t zero_pair) {
  // zero_pair: bits 0..3 zero of row gid, bits 4..7 zero of row gid+8 (higher bits ignored).
  TileConsts c;
  if constexpr (!kBF16) {
    c.z0 = ((zero_pair & 0x0Fu) | 0x6400u) * 0x10001u;
    c.z1 = ((zero_pair & 0xF0u) | 0xD400u) * 0x10001u;  // -(64 + z): ulp of 64 is 1/16, so z sits at bit 4
  } else {
    c.z0 = ((zero_pair & 0x0Fu) | 0x4300u) * 0x10001u;
    c.z1 = (((zero_pair >> 4) & 0x0Fu) | 0x4300u) * 0x10001u;
  }
  if constexpr (FOLD || kBF16) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&scale_pair));
    c.f0 = f.x, c.f1 = f.y;
  }
  if constexpr (!FOLD && !kBF16) {
    c.s0 = __byte_perm(scale_pair, 0, 0x1010);
    c.s1 = __byte_perm(scale_pair, 0, 0x3232);
  }
  return c;
}

template <bool kBF16, bool FOLD>
__device__ __forceinline__ void dequant_word2(uint32_t w, const TileConsts& c, uint32_t a[4]) {
  if constexpr (!kBF16) {
    const uint32_t w8 = w >> 8;
    const __half2 k16 = __half2half2(__ushort_as_half(0x2C00));  // 1/16
    uint32_t v[4] = {lop3_and_or(w, 0x000F000Fu, 0x64006400u), lop3_and_or(w, 0x00F000F0u, 0x64006400u),
                     lop3_and_or(w8, 0x000F000Fu, 0x64006400u), lop3_and_or(w8, 0x00F000F0u, 0x64006400u)};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      __half2 h;
      if (j & 1)  // (1024 + 16c) / 16 - (64 + z) = c - z, exact
        h = __hfma2(*reinterpret_cast<const __half2*>(&v[j]), k16, *reinterpret_cast<const __half2*>(&c.z1));
      else  // (1024 + c) - (1024 + z) = c - z, exact
        h = __hsub2(*reinterpret_cast<const __half2*>(&v[j]), *reinterpret_cast<const __half2*>(&c.z0));
      if constexpr (!FOLD) h = __hmul2(h, *reinterpret_cast<const __half2*>((j & 1) ? &c.s1 : &c.s0));
      a[j] = *reinterpret_cast<uint32_t*>(&h);
    }
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t v = lop3_and_or(w >> (4 * j), 0x000F000Fu, 0x43004300u);
      const __nv_bfloat162 h = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&v),
                                       *reinterpret_cast<const __nv_bfloat162*>((j & 1) ? &c.z1 : &c.z0));
      if constexpr (FOLD) {
        a[j] = *reinterpret_cast<const uint32_t*>(&h);  // c - z: exact in bf16
      } else {
        const float2 f = __bfloat1622float2(h);
        const float s = (j & 1) ? c.f1 : c.f0;
        __nv_bfloat162 r = __floats2bfloat162_rn(f.x * s, f.y * s);
        a[j] = *reinterpret_cast<uint32_t*>(&r);
      }
    }
  }
}

// 16 bytes streamed once: no L1 allocation, 256-byte L2 prefetch (a warp reads 512 contiguous bytes).
__device__ __forceinline__ uint4 ld_stream16(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
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

// mma with a zero accumulator input (d = a * b), not volatile: the compiler may interleave independent chains.
template <bool kBF16>
__device__ __forceinline__ void mma_16816_z(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  const float z = 0.f;
  if constexpr (!kBF16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(z));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(z));
  }
}
// mma accumulating into d, not volatile (see mma_16816_z).
template <bool kBF16>
__device__ __forceinline__ void mma_16816_nv(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  if constexpr (!kBF16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
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
