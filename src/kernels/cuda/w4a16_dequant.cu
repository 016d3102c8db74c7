// W4A16 helpers for the cuBLAS path and act-order: dequantise the packed weight to fp16/bf16 [N, K], and
// gather activations into kernel-column order.
#include "kernels/cuda/w4a16_device.cuh"
#include "kernels/cuda/w4a16_kernels.cuh"
#include "kernels/cuda/w4a16_layout.h"

namespace qforge::cuda::detail {
namespace {

// One thread per (tile, lane): its 16 bytes hold rows gid and gid+8, kernel columns 16tid .. 16tid+15.
template <bool kBF16>
__global__ void __launch_bounds__(256) w4a16_dequant_kernel(const uint4* __restrict__ qweight,
                                                            const uint32_t* __restrict__ scales,
                                                            const uint32_t* __restrict__ zeros, int N, int K, int group,
                                                            uint4* __restrict__ w_out /* [N, K] 16-bit */) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int KT = K / w4::kTileK;
  const int64_t total = static_cast<int64_t>(N / 16) * KT * 32;
  if (i >= total) return;
  const int lane = static_cast<int>(i & 31), gid = lane >> 2, tid = lane & 3;
  const int64_t tile = i >> 5;
  const int nb = static_cast<int>(tile / KT), kb = static_cast<int>(tile % KT);
  const int grp = (kb * w4::kTileK + 16 * tid) / group;
  const uint32_t sp = __ldg(scales + static_cast<int64_t>(grp) * (N / 2) + nb * 8 + gid);
  const uint32_t zp = zeros ? (__ldg(zeros + static_cast<int64_t>(grp) * (N / 8) + nb * 2 + gid / 4) >> (8 * (gid & 3))) & 0xFFu
                            : (w4::kSymmetricZero | (w4::kSymmetricZero << 4));
  const GroupConsts gc = group_consts<kBF16>(sp, zp);
  const uint4 wv = __ldg(qweight + i);
  const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
  uint32_t lo[8], hi[8];  // row gid / gid+8: columns 16tid + 2q, +1 as pairs q = 0..7
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    uint32_t a[4];
    dequant_word<kBF16>(words[t], gc, a);
    lo[2 * t] = a[0];      // columns 4t, 4t+1
    lo[2 * t + 1] = a[2];  // columns 4t+2, 4t+3
    hi[2 * t] = a[1];
    hi[2 * t + 1] = a[3];
  }
  const int64_t col = static_cast<int64_t>(kb) * w4::kTileK + 16 * tid;
  uint4* r0 = w_out + ((static_cast<int64_t>(nb) * 16 + gid) * K + col) / 8;
  uint4* r1 = w_out + ((static_cast<int64_t>(nb) * 16 + gid + 8) * K + col) / 8;
  r0[0] = make_uint4(lo[0], lo[1], lo[2], lo[3]);
  r0[1] = make_uint4(lo[4], lo[5], lo[6], lo[7]);
  r1[0] = make_uint4(hi[0], hi[1], hi[2], hi[3]);
  r1[1] = make_uint4(hi[4], hi[5], hi[6], hi[7]);
}

__global__ void w4a16_permute_kernel(const uint16_t* __restrict__ x, const int32_t* __restrict__ perm, int M, int K,
                                     uint16_t* __restrict__ x_out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(M) * K) return;
  const int64_t m = i / K, k = i % K;
  x_out[i] = x[m * K + __ldg(perm + k)];
}

}  // namespace

cudaError_t dequant_launch(bool bf16, const void* qweight, const uint32_t* scales, const uint32_t* zeros, int N,
                           int K, int group, void* w_out, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(N / 16) * (K / w4::kTileK) * 32;
  const unsigned blocks = static_cast<unsigned>((total + 255) / 256);
  if (bf16)
    w4a16_dequant_kernel<true><<<blocks, 256, 0, stream>>>(static_cast<const uint4*>(qweight), scales, zeros, N, K,
                                                           group, static_cast<uint4*>(w_out));
  else
    w4a16_dequant_kernel<false><<<blocks, 256, 0, stream>>>(static_cast<const uint4*>(qweight), scales, zeros, N, K,
                                                            group, static_cast<uint4*>(w_out));
  return cudaGetLastError();
}

cudaError_t permute_launch(const void* x, const int32_t* perm, int M, int K, void* x_out, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(M) * K;
  const unsigned blocks = static_cast<unsigned>((total + 255) / 256);
  w4a16_permute_kernel<<<blocks, 256, 0, stream>>>(static_cast<const uint16_t*>(x), perm, M, K,
                                                   static_cast<uint16_t*>(x_out));
  return cudaGetLastError();
}

}  // namespace qforge::cuda::detail
