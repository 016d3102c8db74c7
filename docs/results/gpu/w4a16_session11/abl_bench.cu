// Session 11 copy: adds --sk N (WgmmaTuning::stream_k; needs the stream_k.patch build).
// Throwaway timing harness for the wgmma ablation (session 10): times W4Path::kWgmma (no validation: ablated
// kernels compute garbage) and, with --cublas, cuBLAS fp16, the bench's way (graph of 20 calls over weight
// copies > 3x L2, median of 31 replays).
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>
#include "kernels/cuda/w4a16.h"
using namespace qforge::cuda;
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { std::fprintf(stderr, "%d %s\n", __LINE__, cudaGetErrorString(e_)); std::exit(1);} } while (0)
#define CKS(x) do { CudaStatus s_ = (x); if (!s_.is_ok()) { std::fprintf(stderr, "%d %s\n", __LINE__, s_.message().c_str()); std::exit(1);} } while (0)
static cudaStream_t g_stream;
__global__ void fill_random_half(__half* p, size_t n, uint32_t seed, float amp) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed;
    h ^= h >> 15, h *= 0x85EBCA77u, h ^= h >> 13, h *= 0xC2B2AE3Du, h ^= h >> 16;
    p[i] = __float2half_rn(amp * (static_cast<float>(h & 0xFFFF) / 32768.f - 1.f));
  }
}
static double time_us(const std::function<void(int)>& fn) {
  for (int i = 0; i < 2; ++i) fn(i);
  CK(cudaStreamSynchronize(g_stream));
  cudaGraph_t graph; cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < 20; ++i) fn(i);
  CK(cudaStreamEndCapture(g_stream, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 3; ++i) CK(cudaGraphLaunch(exec, g_stream));
  cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < 31; ++i) {
    CK(cudaStreamSynchronize(g_stream));
    CK(cudaEventRecord(a, g_stream)); CK(cudaGraphLaunch(exec, g_stream)); CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b)); float t; CK(cudaEventElapsedTime(&t, a, b)); ms.push_back(t);
  }
  CK(cudaGraphExecDestroy(exec)); CK(cudaGraphDestroy(graph));
  std::sort(ms.begin(), ms.end());
  return 1000.0 * ms[15] / 20;
}
int main(int argc, char** argv) {
  const char* tag = "?"; bool cub = false; int bm = 0, split = 0, sk = 0;
  std::vector<std::pair<long, long>> shapes; std::vector<long> msv;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--tag")) tag = argv[++i];
    else if (!std::strcmp(argv[i], "--cublas")) cub = true;
    else if (!std::strcmp(argv[i], "--bm")) bm = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--split")) split = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--sk")) sk = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--ms")) { for (char* t = std::strtok(argv[++i], ","); t; t = std::strtok(nullptr, ",")) msv.push_back(std::atol(t)); }
    else if (!std::strcmp(argv[i], "--shapes")) { for (char* t = std::strtok(argv[++i], ","); t; t = std::strtok(nullptr, ",")) { long o, n; std::sscanf(t, "%ldx%ld", &o, &n); shapes.push_back({o, n}); } }
  }
  CK(cudaStreamCreate(&g_stream));
  cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
  W4A16Context ctx;
  if (!ctx.wgmma_available()) { std::printf("no wgmma\n"); return 1; }
  ctx.set_wgmma_tuning({bm, split, sk});
  cublasHandle_t cublas; cublasCreate(&cublas); cublasSetStream(cublas, g_stream);
  uint64_t sm = 7;
  auto next = [&sm] { uint64_t z = (sm += 0x9E3779B97F4A7C15ull); z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull; z = (z ^ (z >> 27)) * 0x94D049BB133111EBull; return z ^ (z >> 31); };
  long max_m = *std::max_element(msv.begin(), msv.end());
  for (auto [N, K] : shapes) {
    const long g = 128, G = K / g;
    W4A16Packed p; p.out = N; p.in = K; p.group_size = g; p.symmetric = false;
    p.qweight.resize(N * K / 2); p.scales.resize(N * G); p.zeros.resize(N * G / 2);
    for (size_t i = 0; i < p.qweight.size(); i += 8) { uint64_t v = next(); std::memcpy(p.qweight.data() + i, &v, 8); }
    for (auto& z : p.zeros) z = static_cast<uint8_t>(next());
    for (auto& s : p.scales) s = __half_as_ushort(__float2half_rn(0.002f + 0.018f * (next() % 1000) / 1000.f));
    const int copies = static_cast<int>(std::ceil(3.0 * prop.l2CacheSize / p.bytes()));
    std::vector<W4A16DeviceWeight> w(copies);
    for (auto& d : w) CKS(W4A16DeviceWeight::upload(p, &d));
    __half *x, *y; CK(cudaMalloc(&x, max_m * K * 2)); CK(cudaMalloc(&y, max_m * N * 2));
    fill_random_half<<<1024, 256, 0, g_stream>>>(x, max_m * K, 99, 1.f);
    std::vector<__half*> wf;
    if (cub) {
      const int fc = static_cast<int>(std::ceil(3.0 * prop.l2CacheSize / (2.0 * N * K)));
      wf.resize(fc);
      for (int i = 0; i < fc; ++i) { CK(cudaMalloc(&wf[i], N * K * 2)); fill_random_half<<<1024, 256, 0, g_stream>>>(wf[i], N * K, 1234 + i, 0.05f); }
    }
    for (long M : msv) {
      const double t = time_us([&](int i) { CKS(ctx.linear(w[i % copies], x, M, ActType::kF16, y, g_stream, W4Path::kWgmma)); });
      double tc = -1;
      if (cub) {
        const float al = 1.f, be = 0.f;
        tc = time_us([&](int i) { cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &al, wf[i % wf.size()], CUDA_R_16F, K, x, CUDA_R_16F, K, &be, y, CUDA_R_16F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT); });
      }
      std::printf("%-6s %5ldx%-5ld M=%4ld wgmma %8.2f us %6.1f TF  %s  cublas %8.2f us\n", tag, N, K, M, t,
                  2.0 * M * N * K / (t * 1e-6) / 1e12, ctx.describe(w[0], M, ActType::kF16, W4Path::kWgmma).c_str(), tc);
    }
    CK(cudaFree(x)); CK(cudaFree(y)); for (auto q : wf) CK(cudaFree(q));
  }
  return 0;
}
