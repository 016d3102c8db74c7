// Benchmark of the CUDA W4A16 linear (src/kernels/cuda/w4a16.h) against cuBLAS fp16 GEMM, same run, same card.
//
//   cuda_w4a16_bench [--quick] [--sweep] [--sweep-mma] [--sweep-gemm] [--sweep-wgmma] [--launch-test] [--profile]
//                    [--ms 1,2,4] [--shapes 4096x4096,...] [--mma-tuning nt,r,split,warps,pdl] [--mma-only]
//                    [--csv FILE]
//   --sweep-mma: mma warps per block x split-K x PDL; --launch-test: graph vs stream vs isolated launches, PDL
//   off/on, and cuBLAS fp16 the same ways; --profile: only 3 plain mma launches per case (for Nsight Compute);
//   --sweep-gemm: gemm block shape x split-K at M >= 16; --sweep-wgmma: wgmma block batch rows x cluster split.
//   --mma-only: time only the mma path (and auto where it is mma) against cuBLAS fp16.
// Weights are random packed bytes (the layout is a bijection, so any bytes are a valid weight), drawn with a
// fast generator instead of going through w4a16_repack, which takes seconds on the 70B shapes.
//
// Per Llama shape and batch M: validate (mma path vs dequant+cuBLAS path on the same W4 weight), then time
// the auto path, the mma path, the gemm path (M >= 8), the wgmma path (sm_90a builds on a cc 9.0 device, out %
// 128 == 0), the dequant+cuBLAS path and cuBLAS fp16 on an fp16 weight of the same shape. TFLOPS = 2 M N K / time.
// Timing: each measurement is a CUDA graph of 20 calls that rotate over enough weight copies to exceed 3x
// the L2 (so every call streams its weight from HBM); 3 warm-up replays, then the median of 31 timed replays
// (CUDA events) divided by 20. Effective GB/s counts the weight (codes + scales + zeros), x and y once.
// Also measured: device copy bandwidth (cudaMemcpyAsync D2D of 1 GiB, bytes read + written), and per shape a
// read floor: a kernel that only reads the packed codes (16-byte loads, full occupancy), timed the same way,
// i.e. what one streaming launch of that many bytes can reach back to back.
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/w4a16.h"

using namespace qforge::cuda;

#define CK(expr)                                                                                      \
  do {                                                                                                \
    cudaError_t e_ = (expr);                                                                          \
    if (e_ != cudaSuccess) {                                                                          \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_));     \
      std::exit(1);                                                                                   \
    }                                                                                                 \
  } while (0)
#define CKB(expr)                                                                                     \
  do {                                                                                                \
    cublasStatus_t e_ = (expr);                                                                       \
    if (e_ != CUBLAS_STATUS_SUCCESS) {                                                                \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cublasGetStatusString(e_));  \
      std::exit(1);                                                                                   \
    }                                                                                                 \
  } while (0)
#define CKS(expr)                                                                                     \
  do {                                                                                                \
    CudaStatus s_ = (expr);                                                                           \
    if (!s_.is_ok()) {                                                                                \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, s_.message().c_str());                  \
      std::exit(1);                                                                                   \
    }                                                                                                 \
  } while (0)

namespace {

constexpr int kCallsPerGraph = 20;
constexpr int kWarmup = 3;
constexpr int kTimed = 31;

__global__ void fill_random_half(__half* p, size_t n, uint32_t seed, float amp) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed;
    h ^= h >> 15, h *= 0x85EBCA77u, h ^= h >> 13, h *= 0xC2B2AE3Du, h ^= h >> 16;
    p[i] = __float2half_rn(amp * (static_cast<float>(h & 0xFFFF) / 32768.f - 1.f));
  }
}

cudaStream_t g_stream;

// Read floor: every thread reads 16-byte words (up to 8 independent loads in flight) and folds them into one
// word, stored only if it hits a magic value, so the loads stay but nothing is written.
__global__ void read_floor_kernel(const uint4* __restrict__ p, size_t n16, unsigned* sink) {
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x;
  uint32_t acc = 0;
  for (; i + 7 * stride < n16; i += 8 * stride) {
    uint4 v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = __ldg(p + i + j * stride);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
  }
  for (; i < n16; i += stride) {
    const uint4 v = __ldg(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9E3779B9u) *sink = acc;
}

// How the calls of one measurement are issued.
enum class Launch {
  kGraph,     // a CUDA graph of 20 back-to-back calls, replayed (the default: no host launch gaps)
  kStream,    // 20 back-to-back calls launched on the stream (host launch rate can show as gaps)
  kIsolated,  // one call between two events, then a sync: kernel time plus the launch's own ramp, no overlap
};

// Median time of one call of fn(i) in microseconds; i counts calls so fn can rotate buffers.
double time_us(const std::function<void(int)>& fn, Launch mode = Launch::kGraph) {
  for (int i = 0; i < 2; ++i) fn(i);  // first calls outside capture (workspaces, module load)
  CK(cudaStreamSynchronize(g_stream));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  const int calls = mode == Launch::kIsolated ? 1 : kCallsPerGraph;
  bool use_graph = mode == Launch::kGraph && cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  if (use_graph) {
    for (int i = 0; i < kCallsPerGraph; ++i) fn(i);
    use_graph = cudaStreamEndCapture(g_stream, &graph) == cudaSuccess &&
                cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
    if (!use_graph) {
      (void)cudaGetLastError();
      std::printf("(graph capture failed: timing plain launches)\n");
    }
  }
  int call = 0;
  auto run = [&] {
    if (use_graph) CK(cudaGraphLaunch(exec, g_stream));
    else
      for (int i = 0; i < calls; ++i) fn(call++);
  };
  for (int i = 0; i < kWarmup; ++i) run();
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> ms;
  const int timed = mode == Launch::kIsolated ? 5 * kTimed : kTimed;
  for (int i = 0; i < timed; ++i) {
    CK(cudaStreamSynchronize(g_stream));
    CK(cudaEventRecord(a, g_stream));
    run();
    CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b));
    float t = 0;
    CK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  if (exec) CK(cudaGraphExecDestroy(exec));
  if (graph) CK(cudaGraphDestroy(graph));
  std::sort(ms.begin(), ms.end());
  return 1000.0 * ms[ms.size() / 2] / calls;
}

double copy_bandwidth_gbs() {
  const size_t bytes = size_t{1} << 30;
  void *src, *dst;
  CK(cudaMalloc(&src, bytes));
  CK(cudaMalloc(&dst, bytes));
  CK(cudaMemset(src, 1, bytes));
  std::vector<float> ms;
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 13; ++i) {
    CK(cudaEventRecord(a, g_stream));
    CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_stream));
    CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b));
    float t;
    CK(cudaEventElapsedTime(&t, a, b));
    if (i >= 3) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  CK(cudaFree(src));
  CK(cudaFree(dst));
  return 2.0 * bytes / (ms[ms.size() / 2] * 1e-3) / 1e9;
}

struct Shape {
  int64_t out, in;
  const char* name;
};

}  // namespace

int main(int argc, char** argv) {
  bool mma_only = false;
  bool quick = false, sweep = false, sweep_mma = false, sweep_gemm = false, sweep_wgmma = false, launch_test = false, profile = false;
  const char* csv_path = nullptr;
  const char* ms_arg = nullptr;
  const char* shapes_arg = nullptr;
  W4A16Context::MmaTuning tuning;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--sweep")) sweep = true;
    else if (!std::strcmp(argv[i], "--csv") && i + 1 < argc) csv_path = argv[++i];
    else if (!std::strcmp(argv[i], "--ms") && i + 1 < argc) ms_arg = argv[++i];
    else if (!std::strcmp(argv[i], "--shapes") && i + 1 < argc) shapes_arg = argv[++i];
    else if (!std::strcmp(argv[i], "--sweep-mma")) sweep_mma = true;
    else if (!std::strcmp(argv[i], "--sweep-gemm")) sweep_gemm = true;
    else if (!std::strcmp(argv[i], "--sweep-wgmma")) sweep_wgmma = true;
    else if (!std::strcmp(argv[i], "--launch-test")) launch_test = true;
    else if (!std::strcmp(argv[i], "--profile")) profile = true;
    else if (!std::strcmp(argv[i], "--mma-only")) mma_only = true;
    else if (!std::strcmp(argv[i], "--mma-tuning") && i + 1 < argc) {
      if (std::sscanf(argv[++i], "%d,%d,%d,%d,%d", &tuning.nt, &tuning.r, &tuning.split, &tuning.warps, &tuning.pdl) != 5) {
        std::fprintf(stderr, "--mma-tuning wants nt,r,split,warps,pdl (0 = built in; pdl -1 = built in)\n");
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "unknown flag %s (use --quick, --sweep, --sweep-mma, --sweep-gemm, --sweep-wgmma, --launch-test, --profile, --ms LIST, "
                   "--shapes OUTxIN,..., --mma-tuning nt,r,split,warps,pdl, --mma-only, --csv FILE)\n",
                   argv[i]);
      return 2;
    }
  }
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("no CUDA device: benchmark not run\n");
    return 77;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  int driver = 0, runtime = 0;
  CK(cudaDriverGetVersion(&driver));
  CK(cudaRuntimeGetVersion(&runtime));
  CK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  std::printf("machine: %s, %d SMs, L2 %d MB, %.1f GB, cc %d.%d, driver %d, runtime %d\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, prop.totalGlobalMem / 1e9, prop.major, prop.minor,
              driver, runtime);
  const double copy_gbs = copy_bandwidth_gbs();
  std::printf("device copy bandwidth (cudaMemcpy D2D 1 GiB, read + write): %.0f GB/s\n", copy_gbs);

  std::vector<Shape> shapes = {{4096, 4096, "7B qkvo"},    {11008, 4096, "7B gate/up"}, {4096, 11008, "7B down"},
                               {8192, 8192, "70B qo"},     {28672, 8192, "70B gate/up"}, {8192, 28672, "70B down"},
                               {1536, 576, "small up"},    {576, 1536, "small down"}};
  std::vector<int64_t> ms = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  if (quick) shapes = {{4096, 4096, "7B qkvo"}, {28672, 8192, "70B gate/up"}}, ms = {1, 16, 256};
  if (ms_arg) {
    ms.clear();
    for (const char* p = ms_arg; *p;) {
      char* end = nullptr;
      const long v = std::strtol(p, &end, 10);
      if (end == p || v < 1) {
        std::fprintf(stderr, "--ms wants a comma-separated list of batch sizes, got %s\n", ms_arg);
        return 2;
      }
      ms.push_back(v);
      p = *end == ',' ? end + 1 : end;
    }
  }
  if (shapes_arg) {  // keep only the listed OUTxIN shapes
    std::vector<Shape> keep;
    for (const char* p = shapes_arg; *p;) {
      long o = 0, in = 0;
      int used = 0;
      if (std::sscanf(p, "%ldx%ld%n", &o, &in, &used) != 2) {
        std::fprintf(stderr, "--shapes wants OUTxIN,OUTxIN..., got %s\n", shapes_arg);
        return 2;
      }
      for (const Shape& sh : shapes)
        if (sh.out == o && sh.in == in) keep.push_back(sh);
      p += used;
      if (*p == ',') ++p;
    }
    shapes = keep;
  }
  const int64_t max_m = *std::max_element(ms.begin(), ms.end());

  cublasHandle_t cublas;
  CKB(cublasCreate(&cublas));
  CKB(cublasSetStream(cublas, g_stream));
  W4A16Context ctx;
  ctx.set_mma_tuning(tuning);
  FILE* csv = csv_path ? std::fopen(csv_path, "w") : nullptr;
  if (csv)
    std::fprintf(csv, "gpu,shape,out,in,M,path,plan,us,gbs,pct_copy,fp16_us,speedup,gemv_us,mma_us,gemm_us,"
                      "dequant_cublas_us,gemv_pdl_us,wgmma_us,wgmma_plan,wgmma_tflops,fp16_tflops\n");

  std::mt19937_64 rng(7);
  const bool wgmma_ok = ctx.wgmma_available();
  std::printf("wgmma path: %s\n", wgmma_ok ? "available (sm_90a code on a cc 9.0 device)" : "not available here");
  std::printf("\n%-12s %6s %6s %4s | %-15s %9s %7s %6s | %9s %9s %9s %9s %9s %9s %9s | %7s %7s %7s\n", "shape", "out",
              "in", "M", "auto path", "auto us", "GB/s", "%copy", "gemv us", "gemv+pdl", "mma us", "gemm us",
              "wgmma us", "deq+cub us", "fp16 us", "speedup", "wg TF/s", "f16 TF/s");
  for (const Shape& sh : shapes) {
    const int64_t N = sh.out, K = sh.in, g = K % 128 == 0 ? 128 : 64, G = K / g;  // g64 for in = 576
    // Random AWQ-style weight: asymmetric, g = 128 (64 for in = 576): random codes and zeros, scales in
    // [0.002, 0.02], written straight into the packed layout.
    W4A16Packed packed;
    packed.out = N, packed.in = K, packed.group_size = g, packed.symmetric = false;
    packed.qweight.resize(N * K / 2);
    packed.scales.resize(N * G);
    packed.zeros.resize(N * G / 2);
    uint64_t sm = rng();
    auto next = [&sm] {  // splitmix64
      uint64_t z = (sm += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return z ^ (z >> 31);
    };
    for (size_t i = 0; i < packed.qweight.size(); i += 8) {
      const uint64_t v = next();
      std::memcpy(packed.qweight.data() + i, &v, std::min<size_t>(8, packed.qweight.size() - i));
    }
    for (auto& z : packed.zeros) z = static_cast<uint8_t>(next());
    for (auto& sc : packed.scales)
      sc = __half_as_ushort(__float2half_rn(0.002f + 0.018f * static_cast<float>(next() % 1000) / 1000.f));
    const double l2 = prop.l2CacheSize;
    const int w4_copies = static_cast<int>(std::ceil(3 * l2 / packed.bytes()));
    const int f16_copies = static_cast<int>(std::ceil(3 * l2 / (2.0 * N * K)));
    std::vector<W4A16DeviceWeight> w4(w4_copies);
    for (auto& w : w4) CKS(W4A16DeviceWeight::upload(packed, &w));
    std::vector<__half*> wf(f16_copies);
    for (int i = 0; i < f16_copies; ++i) {
      CK(cudaMalloc(&wf[i], N * K * 2));
      fill_random_half<<<1024, 256, 0, g_stream>>>(wf[i], N * K, 1234 + i, 0.05f);
      CK(cudaGetLastError());
    }
    __half *x, *y, *y2;
    CK(cudaMalloc(&x, max_m * K * 2));
    CK(cudaMalloc(&y, max_m * N * 2));
    CK(cudaMalloc(&y2, max_m * N * 2));
    fill_random_half<<<1024, 256, 0, g_stream>>>(x, max_m * K, 99, 1.f);
    CK(cudaGetLastError());
    if (!profile) {  // read floor over the packed codes of the same weight copies
      unsigned* sink = nullptr;
      CK(cudaMalloc(&sink, sizeof(unsigned)));
      const size_t n16 = static_cast<size_t>(N * K / 2 / 16);
      const double t_read = time_us([&](int i) {
        read_floor_kernel<<<prop.multiProcessorCount * 4, 512, 0, g_stream>>>(
            static_cast<const uint4*>(w4[i % w4_copies].qweight), n16, sink);
        CK(cudaGetLastError());
      });
      CK(cudaFree(sink));
      const double read_gbs = 16.0 * n16 / (t_read * 1e-6) / 1e9;
      std::printf("%-12s %6ld %6ld read floor: %.2f us for %.1f MB of codes = %.0f GB/s (%.1f%% of copy)\n", sh.name,
                  (long)N, (long)K, t_read, 16.0 * n16 / 1e6, read_gbs, 100 * read_gbs / copy_gbs);
      if (csv) std::fprintf(csv, "#read-floor,%s,%ld,%ld,%.3f,%.1f,%.2f\n", sh.name, (long)N, (long)K, t_read, read_gbs,
                            100 * read_gbs / copy_gbs);
    }

    for (int64_t M : ms) {
      if (profile) {  // for Nsight Compute: a few plain launches of the mma path, nothing else
        for (int i = 0; i < 3; ++i) CKS(ctx.linear(w4[i % w4_copies], x, M, ActType::kF16, y, g_stream, W4Path::kMma));
        CK(cudaStreamSynchronize(g_stream));
        std::printf("profiled %s M=%ld: %s\n", sh.name, (long)M, ctx.describe(w4[0], M, ActType::kF16, W4Path::kMma).c_str());
        continue;
      }
      // validate: mma (and gemv) path against dequant + cuBLAS on the same weight (all within fp16 rounding
      // of the truth)
      const W4Path auto_p = ctx.auto_path(w4[0], M);
      auto want = [&](W4Path p) { return !mma_only || auto_p == p; };  // --mma-only still times the auto path
      const bool has_gemv = want(W4Path::kGemv) && M <= kW4GemvMaxM;
      const bool has_gemm = want(W4Path::kGemm) && M >= 8 && N % 32 == 0;
      const bool has_wgmma = want(W4Path::kWgmma) && wgmma_ok && N % 128 == 0;
      CKS(ctx.linear(w4[0], x, M, ActType::kF16, y2, g_stream, W4Path::kCublas));
      for (W4Path p : {W4Path::kMma, W4Path::kGemv, W4Path::kGemm, W4Path::kWgmma}) {
        if (p == W4Path::kGemv && !has_gemv) continue;
        if (p == W4Path::kGemm && !has_gemm) continue;
        if (p == W4Path::kWgmma && !has_wgmma) continue;
        CKS(ctx.linear(w4[0], x, M, ActType::kF16, y, g_stream, p));
        std::vector<__half> h1(M * N), h2(M * N);
        CK(cudaMemcpyAsync(h1.data(), y, M * N * 2, cudaMemcpyDeviceToHost, g_stream));
        CK(cudaMemcpyAsync(h2.data(), y2, M * N * 2, cudaMemcpyDeviceToHost, g_stream));
        CK(cudaStreamSynchronize(g_stream));
        double num = 0, den = 0;
        for (int64_t i = 0; i < M * N; ++i) {
          const double a = __half2float(h1[i]), b = __half2float(h2[i]);
          num += (a - b) * (a - b);
          den += b * b;
        }
        const double rel = std::sqrt(num / std::max(den, 1e-30));
        if (!(rel < 2e-3)) {  // two fp16 roundings of the weight and the output: ~1e-3 at most
          std::printf("VALIDATION FAILED %s M=%ld: %s vs cublas path rel err %.3e\n", sh.name, (long)M,
                      w4_path_name(p), rel);
          return 1;
        }
      }

      auto run_path = [&](W4Path p) {
        return time_us([&](int i) { CKS(ctx.linear(w4[i % w4_copies], x, M, ActType::kF16, y, g_stream, p)); });
      };
      // gemv only where it applies; dequant+cuBLAS only where it can matter (M >= 64): the rest is "-"
      const double t_gemv = has_gemv ? run_path(W4Path::kGemv) : -1;
      const double t_mma = run_path(W4Path::kMma);
      const double t_gemm = has_gemm ? run_path(W4Path::kGemm) : -1;
      const double t_wgmma = has_wgmma ? run_path(W4Path::kWgmma) : -1;
      double t_gemv_pdl = -1;  // the gemv path with programmatic dependent launch (weights of call i+1 overlap call i)
      if (has_gemv && !mma_only) {
        W4A16Context::GemvTuning gt;
        gt.pdl = 1;
        ctx.set_gemv_tuning(gt);
        t_gemv_pdl = run_path(W4Path::kGemv);
        ctx.set_gemv_tuning({});
      }
      const double t_cub = M >= 64 && want(W4Path::kCublas) ? run_path(W4Path::kCublas) : -1;
      const double t_auto = auto_p == W4Path::kGemv   ? t_gemv
                            : auto_p == W4Path::kMma  ? t_mma
                            : auto_p == W4Path::kGemm ? t_gemm
                            : auto_p == W4Path::kWgmma ? t_wgmma
                                                      : t_cub;
      const float alpha = 1.f, beta = 0.f;
      const double t_f16 = time_us([&](int i) {
        CKB(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, wf[i % f16_copies], CUDA_R_16F, K, x,
                         CUDA_R_16F, K, &beta, y2, CUDA_R_16F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      });
      const double bytes = packed.bytes() + 2.0 * M * K + 2.0 * M * N;
      const double gbs = bytes / (t_auto * 1e-6) / 1e9;
      auto cell = [](double t) {
        char b[16];
        if (t < 0) std::snprintf(b, sizeof b, "%9s", "-");
        else std::snprintf(b, sizeof b, "%9.2f", t);
        return std::string(b);
      };
      const double flop = 2.0 * M * N * K;
      const double wg_tf = t_wgmma > 0 ? flop / (t_wgmma * 1e-6) / 1e12 : -1, f16_tf = flop / (t_f16 * 1e-6) / 1e12;
      std::printf("%-12s %6ld %6ld %4ld | %-15s %9.2f %7.0f %5.1f%% | %s %s %s %s %s %s %9.2f | %6.2fx %7.1f %7.1f\n",
                  sh.name, (long)N, (long)K, (long)M, w4_path_name(auto_p), t_auto, gbs, 100 * gbs / copy_gbs,
                  cell(t_gemv).c_str(), cell(t_gemv_pdl).c_str(), cell(t_mma).c_str(), cell(t_gemm).c_str(),
                  cell(t_wgmma).c_str(), cell(t_cub).c_str(), t_f16, t_f16 / t_auto, wg_tf, f16_tf);
      if (csv)
        std::fprintf(csv, "%s,%s,%ld,%ld,%ld,%s,%s,%.3f,%.1f,%.2f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%s,%.1f,%.1f\n",
                     prop.name, sh.name, (long)N, (long)K, (long)M, w4_path_name(auto_p),
                     ctx.describe(w4[0], M, ActType::kF16, auto_p).c_str(), t_auto, gbs, 100 * gbs / copy_gbs, t_f16,
                     t_f16 / t_auto, t_gemv, t_mma, t_gemm, t_cub, t_gemv_pdl, t_wgmma,
                     has_wgmma ? ctx.describe(w4[0], M, ActType::kF16, W4Path::kWgmma).c_str() : "-", wg_tf, f16_tf);
      if (sweep_wgmma && has_wgmma) {  // wgmma block batch rows x cluster split: which wins, for wgmma_plan
        std::string line;
        double best = 1e30;
        std::string best_s;
        for (int bm : {64, 128, 192, 256})
          for (int split : {0, 1, 2, 3, 4}) {
            if (4 * bm < M) continue;
            ctx.set_wgmma_tuning({bm, split});
            CKS(ctx.linear(w4[0], x, M, ActType::kF16, y, g_stream, W4Path::kWgmma));  // grows the workspace
            const double tw = run_path(W4Path::kWgmma);
            const std::string d = ctx.describe(w4[0], M, ActType::kF16, W4Path::kWgmma);
            if (tw < best) best = tw, best_s = d;
            char buf[64];
            std::snprintf(buf, sizeof buf, " b%d/k%d:%.2f", bm, split, tw);
            line += buf;
          }
        ctx.set_wgmma_tuning({});
        std::printf("    sweep-wgmma M=%ld:%s | best %.2f us %s\n", (long)M, line.c_str(), best, best_s.c_str());
        if (csv) std::fprintf(csv, "#sweep-wgmma,%s,%ld,%ld,%ld,%s,%.3f\n", sh.name, (long)N, (long)K, (long)M,
                              best_s.c_str(), best);
      }
      if (sweep_gemm && has_gemm && M >= 16) {  // gemm block shape x split: which wins, for gemm_plan
        std::string line;
        double best = 1e30;
        std::string best_s;
        constexpr int kBlockM[] = {0, 16, 32, 64, 128, 256, 256, 128, 64};  // BM of gemm shapes 1..8
        for (int shape = 1; shape <= 8; ++shape)
          for (int split : {0, 1, 2, 4}) {
            if (4 * kBlockM[shape] < M) continue;  // a block under M / 4 batch rows re-reads W too often
            ctx.set_gemm_tuning({shape, split});
            const double tg = time_us(
                [&](int i) { CKS(ctx.linear(w4[i % w4_copies], x, M, ActType::kF16, y, g_stream, W4Path::kGemm)); });
            const std::string d = ctx.describe(w4[0], M, ActType::kF16, W4Path::kGemm);
            if (tg < best) best = tg, best_s = d;
            char buf[64];
            std::snprintf(buf, sizeof buf, " s%d/k%d:%.2f", shape, split, tg);
            line += buf;
          }
        ctx.set_gemm_tuning({});
        std::printf("    sweep-gemm M=%ld:%s | best %.2f us %s\n", (long)M, line.c_str(), best, best_s.c_str());
        if (csv) std::fprintf(csv, "#sweep-gemm,%s,%ld,%ld,%ld,%s,%.3f\n", sh.name, (long)N, (long)K, (long)M,
                              best_s.c_str(), best);
      }

      if (launch_test) {  // launch gaps: graph vs stream vs isolated, with and without PDL
        const float alpha1 = 1.f, beta0 = 0.f;
        auto f16 = [&](int i) {
          CKB(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha1, wf[i % f16_copies], CUDA_R_16F, K, x,
                           CUDA_R_16F, K, &beta0, y2, CUDA_R_16F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        };
        std::string line;
        for (int pdl : {0, 1}) {
          W4A16Context::MmaTuning t = tuning;
          t.pdl = pdl;
          ctx.set_mma_tuning(t);
          auto mma = [&](int i) { CKS(ctx.linear(w4[i % w4_copies], x, M, ActType::kF16, y, g_stream, W4Path::kMma)); };
          char buf[160];
          std::snprintf(buf, sizeof buf, " | pdl%d graph %.2f stream %.2f isolated %.2f", pdl, time_us(mma, Launch::kGraph),
                        time_us(mma, Launch::kStream), time_us(mma, Launch::kIsolated));
          line += buf;
        }
        ctx.set_mma_tuning(tuning);
        std::printf("    launch M=%ld mma%s | cuBLAS fp16 graph %.2f stream %.2f isolated %.2f\n", (long)M, line.c_str(),
                    time_us(f16, Launch::kGraph), time_us(f16, Launch::kStream), time_us(f16, Launch::kIsolated));
      }
      if (sweep_mma) {  // mma warps per block x split-K x PDL: which wins, for tuning mma_plan
        std::string line;
        double best = 1e30;
        std::string best_s;
        for (int warps : {8, 16})
          for (int split : {0, 2, 3})
            for (int pdl : {0, 1}) {
              W4A16Context::MmaTuning t = tuning;
              t.warps = warps, t.split = split, t.pdl = pdl;
              ctx.set_mma_tuning(t);
              const double tm = time_us(
                  [&](int i) { CKS(ctx.linear(w4[i % w4_copies], x, M, ActType::kF16, y, g_stream, W4Path::kMma)); });
              if (tm < best) best = tm, best_s = ctx.describe(w4[0], M, ActType::kF16, W4Path::kMma);
              char buf[64];
              std::snprintf(buf, sizeof buf, " w%d/k%d/p%d:%.2f", warps, split, pdl, tm);
              line += buf;
            }
        ctx.set_mma_tuning(tuning);
        std::printf("    sweep-mma M=%ld:%s | best %.2f us %s\n", (long)M, line.c_str(), best, best_s.c_str());
      }
      if (sweep && has_gemv) {  // gemv (warps, depth, split), then PDL on the best: which wins, for gemv_plan
        std::string line;
        double best = 1e30;
        std::string best_s;
        W4A16Context::GemvTuning best_t;
        auto try_gemv = [&](W4A16Context::GemvTuning gt) {
          ctx.set_gemv_tuning(gt);
          const double t = time_us(
              [&](int i) { CKS(ctx.linear(w4[i % w4_copies], x, M, ActType::kF16, y, g_stream, W4Path::kGemv)); });
          if (t < best) best = t, best_s = ctx.describe(w4[0], M, ActType::kF16, W4Path::kGemv), best_t = gt;
          char buf[64];
          std::snprintf(buf, sizeof buf, " w%d/d%d/s%d/p%d:%.2f", gt.warps, gt.depth, gt.split, gt.pdl > 0, t);
          line += buf;
        };
        for (int warps : {4, 8})
          for (int depth : {4, 8})
            for (int split : {0, 1, 2, 4}) try_gemv({warps, split, depth, 0});
        W4A16Context::GemvTuning with_pdl = best_t;
        with_pdl.pdl = 1;
        try_gemv(with_pdl);
        ctx.set_gemv_tuning({});
        std::printf("    sweep M=%ld (auto: %s):%s | best %.2f us %s\n", (long)M,
                    ctx.describe(w4[0], M, ActType::kF16, W4Path::kGemv).c_str(), line.c_str(), best, best_s.c_str());
      }
    }
    for (auto* p : wf) CK(cudaFree(p));
    CK(cudaFree(x));
    CK(cudaFree(y));
    CK(cudaFree(y2));
  }
  if (csv) std::fclose(csv);
  CKB(cublasDestroy(cublas));
  return 0;
}
