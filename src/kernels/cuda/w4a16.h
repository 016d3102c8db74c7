// CUDA W4A16 linear: fp16 / bf16 activations times 4-bit weights with fp16 group scales (GPTQ symmetric,
// AWQ asymmetric with 4-bit zero points, act-order through a permutation of the input).
//
// Plain host C++: no CUDA headers needed, so non-CUDA code can include it. Streams travel as void*
// (a cudaStream_t). Errors come back as CudaStatus, whose message names the shape, tensor or CUDA call.
//
// Paths (chosen once per call, see W4Path):
//   gemv    - small batch (M <= 16): weight-streaming kernel, one small block per 16-row tile, 16-byte loads
//             straight to a register ring, exact integer dequantisation on the tensor cores with the group scale
//             applied once per tile, optional split-K and PDL (w4a16_gemv.cu). Correct but not faster than mma
//             on H100 so far: kAuto does not pick it (kW4GemvCrossoverM = 0); ask for it explicitly.
//   mma     - tensor-core kernel with the weight as the mma A operand (y^T = W x^T), the activations as B,
//             cp.async pipeline per warp, split-K inside the block and, when the grid is small, across
//             blocks. Batch rows go in tiles of 8 (one mma n8), so batch 1-8 costs one pass over W.
//   gemm    - batch GEMM (any M; kAuto uses it for M = 33..128 on large weights, w4a16_gemm.cu): a block owns
//             a slab of output rows and the whole batch (up to 256 rows), streams K through one block-wide
//             cp.async ring (packed weights, scales, zeros,
//             activations), dequantises each weight word once into registers and reuses it across all the
//             warp's batch tiles; split-K over blocks with a deterministic fix-up while the grid is under a wave.
//             Needs out % 32 == 0.
//   wgmma   - Hopper only (sm_90a build on a cc 9.0 device; w4a16_wgmma.cu): warpgroup MMA with the dequantised
//             weight as the register A operand and the activations (staged once per call into wgmma's swizzled
//             layout) as the shared-memory B operand; a producer thread feeds a multi-stage mbarrier ring of
//             activation tiles with bulk copies, each consumer lane streams its weight bytes into a register ring;
//             split-K over a thread-block cluster, reduced in rank order through distributed shared memory. Needs
//             out % 128 == 0. kAuto uses it on such devices from batch kW4WgmmaMinM.
//   cublas  - dequantize W to fp16/bf16 in a workspace and call cuBLAS (for large batches, as vLLM does).
// The packed layout is in w4a16_layout.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace qforge::cuda {

class [[nodiscard]] CudaStatus {
 public:
  CudaStatus() = default;
  static CudaStatus ok() { return CudaStatus(); }
  static CudaStatus error(std::string msg) {
    CudaStatus s;
    s.ok_ = false;
    s.msg_ = std::move(msg);
    return s;
  }
  bool is_ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const std::string& message() const { return msg_; }

 private:
  bool ok_ = true;
  std::string msg_;
};

enum class ActType { kF16, kBF16 };
enum class W4Path { kAuto, kGemv, kMma, kGemm, kCublas, kWgmma };
const char* w4_path_name(W4Path p);

// Host-side packed weight (w4a16_layout.h). Build it with w4a16_repack.
struct W4A16Packed {
  int64_t out = 0, in = 0;         // N, K
  int64_t group_size = 0;          // g; == in for per-channel
  bool symmetric = true;           // zeros empty, zero point 8
  std::vector<uint8_t> qweight;    // [out/16][in/64][32 lanes][16 bytes]
  std::vector<uint16_t> scales;    // [in/g][out/16][8][2] fp16 bits
  std::vector<uint8_t> zeros;      // [in/g][out/16][8] two 4-bit zeros per byte; empty if symmetric
  std::vector<int32_t> perm;       // [in] kernel column kc reads x[:, perm[kc]]; empty = identity
  int64_t n_groups() const { return group_size ? in / group_size : 0; }
  int64_t bytes() const;           // what one pass over the weight reads
};

// Repacks plain quantized weights (as the quantizers and checkpoint loaders hold them):
//   codes  [out, in] uint8 0..15, in ORIGINAL input order
//   scales [out, in/g] float, fp16-exact (rounded to fp16 here; an error if that changes the value)
//   zeros  [out, in/g] float integers 0..15, or nullptr for symmetric (GPTQ, zero 8)
//   g_idx  [in] int32 group of each input column, or nullptr for i / g. Act-order g_idx (any order)
//          is accepted when every group has exactly g columns; columns are then stably sorted by group.
//   group_size: 16 | g, in % g == 0; pass in (or 0) for per-channel.
// Shapes: out % 16 == 0, in % 64 == 0. `name` prefixes error messages.
CudaStatus w4a16_repack(const uint8_t* codes, const float* scales, const float* zeros, const int32_t* g_idx,
                        int64_t out, int64_t in, int64_t group_size, const std::string& name, W4A16Packed* dst);

// Inverse of w4a16_repack, for tests: codes [out, in] in original input order, scales / zeros
// [out, in/g] indexed by the group numbers of g_idx (zeros all 8 when symmetric).
void w4a16_unpack(const W4A16Packed& w, std::vector<uint8_t>* codes, std::vector<float>* scales,
                  std::vector<float>* zeros);

// Host reference, double accumulation of the dequantized weights, from the plain inputs of w4a16_repack.
// x [M, in] as float (the fp16/bf16 values), y [M, out]; only output columns in `rows` (all if empty).
// abs_y [M, out] (nullable) receives sum_k |x[m, k] * w[n, k]|, the scale of the rounding-error bound.
void w4a16_linear_ref(const float* x, int64_t M, const uint8_t* codes, const float* scales, const float* zeros,
                      const int32_t* g_idx, int64_t out, int64_t in, int64_t group_size,
                      const std::vector<int64_t>& rows, double* y, double* abs_y);

// A packed weight on the device (owns its buffers; move-only).
class W4A16DeviceWeight {
 public:
  W4A16DeviceWeight() = default;
  ~W4A16DeviceWeight();
  W4A16DeviceWeight(W4A16DeviceWeight&&) noexcept;
  W4A16DeviceWeight& operator=(W4A16DeviceWeight&&) noexcept;
  W4A16DeviceWeight(const W4A16DeviceWeight&) = delete;
  W4A16DeviceWeight& operator=(const W4A16DeviceWeight&) = delete;

  static CudaStatus upload(const W4A16Packed& w, W4A16DeviceWeight* dst);

  int64_t out = 0, in = 0, group_size = 0;
  bool symmetric = true;
  void* qweight = nullptr;  // [out/16][in/64][32][16] bytes
  void* scales = nullptr;   // [in/g][out/16][8] half2
  void* zeros = nullptr;    // [in/g][out/16][8] bytes, or null
  void* perm = nullptr;     // [in] int32, or null
  int64_t bytes = 0;        // bytes one pass reads

 private:
  void release();
};

// Per-stream state: cuBLAS handle, workspaces (grown on first use; do a first call outside graph capture).
class W4A16Context {
 public:
  W4A16Context();
  ~W4A16Context();
  W4A16Context(const W4A16Context&) = delete;
  W4A16Context& operator=(const W4A16Context&) = delete;
  struct Impl;

  // y[M, out] = x[M, in] @ dequant(W)^T. x, y device pointers of `act` type, rows contiguous
  // (row stride in / out elements), x 16-byte aligned. stream: cudaStream_t or nullptr.
  CudaStatus linear(const W4A16DeviceWeight& w, const void* x, int64_t M, ActType act, void* y, void* stream,
                    W4Path path = W4Path::kAuto);
  // What kAuto picks for this weight and batch.
  W4Path auto_path(const W4A16DeviceWeight& w, int64_t M) const;
  // The launch linear() would make, in words ("mma nt=1 r=1 split=2 grid=256x1x2"), for logs and benchmarks.
  std::string describe(const W4A16DeviceWeight& w, int64_t M, ActType act, W4Path path = W4Path::kAuto) const;

  // Benchmark / tuning hook for the mma path: batch tiles of 8 rows per block (nt in 1, 2, 4, 8), 16-row
  // output tiles per warp (r in 1, 2, 4 for nt <= 2; 2 for nt >= 4), split-K over blocks; 0 = the built-in choice.
  // warps: warps per block (0 = built in; 8, or 16 for nt <= 2 with r = 2).
  // pdl: programmatic dependent launch (1 on, 0 off, -1 = built in: kW4MmaPdlDefault; only on cc >= 9).
  //   With it, the kernel fetches its weights while the previous kernel in the stream is still running, so
  //   the weight buffers must not be written by that previous kernel (x and y are safe: they are touched only
  //   after the previous kernel has completed).
  struct MmaTuning {
    int nt = 0, r = 0, split = 0;
    int warps = 0;
    int pdl = -1;
  };
  void set_mma_tuning(MmaTuning t);
  // Benchmark / tuning hook for the gemv path: warps per block (4, 8), K slices over blocks, weight tiles in
  // flight per warp (4, 8), programmatic dependent launch (1 on, 0 off, -1 = built in: kW4GemvPdlDefault);
  // 0 = built in.
  struct GemvTuning {
    int warps = 0, split = 0, depth = 0, pdl = -1;
  };
  void set_gemv_tuning(GemvTuning t);
  // Benchmark / tuning hook for the gemm path: block shape 1..8 (w4a16_gemm.cu: BM = 16, 32, 64, 128, 256 batch
  // rows per block with 8 warps; 6..8: BM = 256, 128, 64 with 16 warps), K slices over blocks; 0 = built in.
  struct GemmTuning {
    int shape = 0, split = 0;
  };
  void set_gemm_tuning(GemmTuning t);
  // Benchmark / tuning hook for the wgmma path: batch rows per block (64, 128, 192, 256), K slices over a cluster
  // (1..4); 0 = built in.
  struct WgmmaTuning {
    int bm = 0, split = 0;
  };
  void set_wgmma_tuning(WgmmaTuning t);
  // Whether the wgmma path can run here (sm_90a device code on a compute capability 9.0 device); initialises the
  // context on the current device.
  bool wgmma_available();

 private:
  std::unique_ptr<Impl> impl_;
};

// Largest batch the gemv path takes, and the largest kAuto gives it (measured on H100, docs/cuda-kernels.md).
inline constexpr int64_t kW4GemvMaxM = 16;
inline constexpr int64_t kW4GemvCrossoverM = 0;  // 0: kAuto never picks gemv (it lost to mma on H100)
// Whether the gemv path uses programmatic dependent launch by default (GemvTuning::pdl = -1).
inline constexpr bool kW4GemvPdlDefault = false;
// Whether the mma path uses programmatic dependent launch by default (MmaTuning::pdl = -1). Off: on H100 it
// saved up to 0.7 us on grids of about one block per SM but cost up to 15% where the next kernel's early blocks
// landed unevenly on SMs that already held 2-3 blocks (docs/cuda-kernels.md).
inline constexpr bool kW4MmaPdlDefault = false;
// kAuto (measured on H100 80GB HBM3, docs/cuda-kernels.md, "Batch GEMM"): mma up to batch kW4GemmMinM - 1;
// gemm from kW4GemmMinM up to kW4CublasCrossoverM for weights of at least kW4GemmMinWeights elements with
// out % 32 == 0 (mma otherwise: on 4096x4096 gemm lost 18% at M = 64 and tied at 128); dequantize + cuBLAS above.
inline constexpr int64_t kW4GemmMinM = 33;
inline constexpr int64_t kW4GemmMinWeights = int64_t{1} << 25;
inline constexpr int64_t kW4CublasCrossoverM = 128;
// kAuto on devices where the wgmma path runs (w4a16_wgmma.cu, sm_90a), weights with out % 128 == 0 (measured on
// H100 80GB HBM3, docs/cuda-kernels.md, "Session 10"): wgmma from batch kW4WgmmaMinM on weights of at least
// kW4WgmmaMinWeights elements (70B-class: at M = 32 wgmma is 1.12-1.25x faster than mma), and from batch
// kW4WgmmaMinMSmall on weights of at least kW4WgmmaMinWeightsSmall (7B-class: at M = 32 mma ties or wins by up
// to 1.28x, at M = 40 wgmma wins by 1.09-1.5x); the paths above elsewhere.
inline constexpr int64_t kW4WgmmaMinM = 32;
inline constexpr int64_t kW4WgmmaMinWeights = int64_t{1} << 26;
inline constexpr int64_t kW4WgmmaMinMSmall = 40;
inline constexpr int64_t kW4WgmmaMinWeightsSmall = int64_t{1} << 24;

}  // namespace qforge::cuda
