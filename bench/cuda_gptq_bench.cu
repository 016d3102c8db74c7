// GPTQ on the GPU, per linear of a Llama-2-7B decoder layer: the Hessian accumulation (cuBLAS, f32 / bf16
// activations) and the GPTQ steps of kernels/cuda/gptq_cuda.h, timed with CUDA events (median of --reps).
// Everything is generated and kept on the device (weights, activations, Hessians): this measures the GPU
// work, not PCIe. The GPTQ steps are called in the order quant/gptq.cpp's driver calls them (load, factor,
// per 128-column block: sweep, trailing update; fetch); the end-to-end driver with host inputs is timed
// by the GPU test (tests/quant/gptq_cuda_gpu.cpp) next to the CPU backend.
//   cuda_gptq_bench [--reps 5] [--tokens 262144] [--batch 16384]
// Prints: machine, validate, then the tables (docs/gpu-pipeline.md).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/cuda/gptq_cuda.h"

using namespace qforge::cuda;

#define CHECK_CUDA(call)                                                                          \
  do {                                                                                            \
    const cudaError_t e_ = (call);                                                                \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)
#define CHECK_OK(expr)                                                                          \
  do {                                                                                          \
    const CudaStatus s_ = (expr);                                                               \
    if (!s_) {                                                                                  \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, s_.message().c_str()); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

namespace {

__device__ float hash_normal(uint64_t seed, uint64_t i) {
  uint64_t x = seed * 0x100000001b3ull + i + 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  float s = 0;
  for (int k = 0; k < 4; ++k) s += float((x >> (16 * k)) & 0xffff) * (1.0f / 65536.0f);
  return (s - 2.0f) * 1.7320508f;
}

// x [rows, in]: (noise + a shared component per row) * exp(0.7 z_j): uneven channels, some correlation.
template <typename T>
__global__ void make_activations(T* x, int64_t rows, int64_t in, uint64_t seed) {
  const int64_t n = rows * in;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / in, j = i - t * in;
    const float v = (hash_normal(seed, uint64_t(i)) +
                     0.5f * hash_normal(seed + 1, uint64_t(t)) * hash_normal(seed + 2, uint64_t(j))) *
                    __expf(0.7f * hash_normal(seed + 3, uint64_t(j)));
    x[i] = T(v);
  }
}

__global__ void make_weights(float* w, int64_t n, uint64_t seed) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    w[i] = 0.02f * hash_normal(seed, uint64_t(i));
}

__global__ void read_diagonal(const float* H, int64_t in, double* diag) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < in) diag[i] = H[i * in + i];
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct Linear {
  const char* name;
  int64_t out, in;
  int count;  // per decoder layer
};

struct HessianTiming {
  int64_t in;
  double ms_bf16, ms_f32;
};

// The Hessian of `tokens` activation rows, added in batches of `batch` rows (as a pipeline would, one
// forward batch at a time). Returns the median time (ms) over reps of the whole accumulation.
double time_hessian(int64_t in, int64_t tokens, int64_t batch, HessianInput dtype, int reps,
                    std::unique_ptr<HessianDevice>* keep) {
  const size_t esize = dtype == HessianInput::kF32 ? 4 : 2;
  void* x = nullptr;
  CHECK_CUDA(cudaMalloc(&x, size_t(batch * in) * esize));
  if (dtype == HessianInput::kF32)
    make_activations<float><<<1024, 256>>>(static_cast<float*>(x), batch, in, 11);
  else
    make_activations<__nv_bfloat16><<<1024, 256>>>(static_cast<__nv_bfloat16*>(x), batch, in, 11);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<double> ms;
  for (int rep = 0; rep <= reps; ++rep) {  // rep 0 warms up (handles, cuBLAS heuristics)
    std::unique_ptr<HessianDevice> h;
    CHECK_OK(HessianDevice::create(0, in, &h));
    cudaStream_t s = static_cast<cudaStream_t>(h->stream());
    cudaEvent_t e0, e1;
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    CHECK_CUDA(cudaEventRecord(e0, s));
    // The same batch over and over: the timing does not depend on the values (no zeros: see METHOD.md).
    for (int64_t t = 0; t < tokens; t += batch) CHECK_OK(h->add(x, std::min(batch, tokens - t), dtype));
    CHECK_CUDA(cudaEventRecord(e1, s));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float m = 0;
    CHECK_CUDA(cudaEventElapsedTime(&m, e0, e1));
    if (rep > 0) ms.push_back(m);
    CHECK_CUDA(cudaEventDestroy(e0));
    CHECK_CUDA(cudaEventDestroy(e1));
    if (keep && rep == reps) *keep = std::move(h);
  }
  CHECK_CUDA(cudaFree(x));
  return median(ms);
}

struct GptqTiming {
  double load, factor, sweep, update, fetch, total;  // ms, medians
  double loss;
};

GptqTiming time_gptq(GptqDevice& dev, const Linear& L, const float* dW, const float* dH, bool act_order,
                     int reps) {
  const int64_t out = L.out, in = L.in, gs = 128, ng = in / gs;
  std::vector<double> diag(static_cast<size_t>(in));
  {
    double* dd = nullptr;
    CHECK_CUDA(cudaMalloc(&dd, size_t(in) * 8));
    read_diagonal<<<unsigned((in + 255) / 256), 256>>>(dH, in, dd);
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaMemcpy(diag.data(), dd, size_t(in) * 8, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaFree(dd));
  }
  std::vector<int64_t> perm(static_cast<size_t>(in));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  if (act_order)
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int64_t a, int64_t b) { return diag[size_t(a)] > diag[size_t(b)]; });
  std::vector<char> dead(static_cast<size_t>(in), 0), grid_start(static_cast<size_t>(in));
  std::vector<int32_t> group_of(static_cast<size_t>(in));
  for (int64_t k = 0; k < in; ++k) {
    group_of[size_t(k)] = int32_t(k / gs);
    grid_start[size_t(k)] = k % gs == 0;
  }
  std::vector<GptqGrid> grids0(size_t(out * ng));
  const GptqGridRule rule{.bits = 4, .group_size = gs, .sym = false, .awq = false};
  // Means of the diagonal, as the driver's damping.
  const double damp = 0.01 * std::accumulate(diag.begin(), diag.end(), 0.0) / double(in);
  std::vector<uint8_t> codes(size_t(out * in));
  std::vector<GptqGrid> grids(size_t(out * ng));
  std::vector<double> losses;
  cudaStream_t s = static_cast<cudaStream_t>(dev.stream());
  std::vector<cudaEvent_t> ev;
  auto record = [&]() {
    cudaEvent_t e;
    CHECK_CUDA(cudaEventCreate(&e));
    CHECK_CUDA(cudaEventRecord(e, s));
    ev.push_back(e);
  };
  auto span_ms = [&](size_t a, size_t b) {
    float m = 0;
    CHECK_CUDA(cudaEventElapsedTime(&m, ev[a], ev[b]));
    return double(m);
  };
  std::vector<double> t_load, t_factor, t_sweep, t_update, t_fetch, t_total;
  GptqTiming res{};
  for (int rep = 0; rep <= reps; ++rep) {
    for (cudaEvent_t e : ev) CHECK_CUDA(cudaEventDestroy(e));
    ev.clear();
    record();  // 0
    CHECK_OK(dev.load(dW, dH, out, in, rule, ng, perm.data(), diag.data(), dead.data(), group_of.data(),
                      grid_start.data(), grids0.data()));
    record();  // 1
    bool pd = false;
    CHECK_OK(dev.factor(damp, &pd));
    if (!pd) std::fprintf(stderr, "%s: not positive definite\n", L.name), std::exit(1);
    record();  // 2
    std::vector<size_t> sweep_ev, update_ev;
    for (int64_t i1 = 0; i1 < in; i1 += 128) {
      const int64_t i2 = std::min(i1 + 128, in);
      sweep_ev.push_back(ev.size() - 1);
      CHECK_OK(dev.quantize_block(i1, i2));
      record();
      if (i2 < in) {
        update_ev.push_back(ev.size() - 1);
        CHECK_OK(dev.trailing_update(i1, i2));
        record();
      }
    }
    const size_t before_fetch = ev.size() - 1;
    losses.resize(size_t(dev.n_blocks() * out));
    CHECK_OK(dev.fetch(codes.data(), grids.data(), losses.data()));
    record();
    CHECK_CUDA(cudaEventSynchronize(ev.back()));
    double sw = 0, up = 0;
    for (size_t a : sweep_ev) sw += span_ms(a, a + 1);
    for (size_t a : update_ev) up += span_ms(a, a + 1);
    if (rep == 0) {
      // Validate once: codes in range, losses finite and positive, grids positive.
      double loss = 0;
      for (double l : losses) loss += l;
      bool ok = std::isfinite(loss) && loss > 0;
      for (uint8_t c : codes) ok = ok && c <= 15;
      for (const GptqGrid& g : grids) ok = ok && g.scale > 0 && g.zero >= 0 && g.zero <= 15;
      std::printf("validate %-10s %s: %s (loss %.4g)\n", L.name, act_order ? "act" : "   ",
                  ok ? "ok" : "FAILED", loss);
      if (!ok) std::exit(1);
      res.loss = loss;
      continue;  // rep 0 is the warm-up
    }
    t_load.push_back(span_ms(0, 1));
    t_factor.push_back(span_ms(1, 2));
    t_sweep.push_back(sw);
    t_update.push_back(up);
    t_fetch.push_back(span_ms(before_fetch, ev.size() - 1));
    t_total.push_back(span_ms(0, ev.size() - 1));
  }
  for (cudaEvent_t e : ev) CHECK_CUDA(cudaEventDestroy(e));
  res.load = median(t_load);
  res.factor = median(t_factor);
  res.sweep = median(t_sweep);
  res.update = median(t_update);
  res.fetch = median(t_fetch);
  res.total = median(t_total);
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  int64_t tokens = 128 * 2048, batch = 16384;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--reps"))
      reps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokens"))
      tokens = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--batch"))
      batch = std::atoll(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("no CUDA device: benchmark not run\n");
    return 77;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("machine: %s, %d SMs, %.0f GiB; Hessian from %lld tokens in batches of %lld; median of %d\n",
              prop.name, prop.multiProcessorCount, double(prop.totalGlobalMem) / (1 << 30),
              static_cast<long long>(tokens), static_cast<long long>(batch), reps);

  const Linear linears[] = {
      {"q/k/v/o", 4096, 4096, 4}, {"gate/up", 11008, 4096, 2}, {"down", 4096, 11008, 1}};
  // Hessians per decoder layer: q/k/v share one (input 4096), o one (4096), gate/up share one (4096), down
  // one (11008).
  std::vector<HessianTiming> ht;
  std::unique_ptr<HessianDevice> h4096, h11008;
  for (int64_t in : {int64_t(4096), int64_t(11008)}) {
    HessianTiming t{in, 0, 0};
    t.ms_bf16 = time_hessian(in, tokens, batch, HessianInput::kBF16, reps, in == 4096 ? &h4096 : &h11008);
    t.ms_f32 =
        time_hessian(in, std::min<int64_t>(tokens, 4 * batch), batch, HessianInput::kF32, reps, nullptr) *
        double(tokens) / double(std::min<int64_t>(tokens, 4 * batch));
    ht.push_back(t);
  }
  std::unique_ptr<GptqDevice> dev;
  CHECK_OK(GptqDevice::create(0, &dev));
  std::vector<GptqTiming> gt[2];
  for (const Linear& L : linears) {
    float* dW = nullptr;
    CHECK_CUDA(cudaMalloc(&dW, size_t(L.out * L.in) * 4));
    make_weights<<<1024, 256>>>(dW, L.out * L.in, uint64_t(L.out * 31 + L.in));
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaDeviceSynchronize());
    const float* dH = (L.in == 4096 ? h4096 : h11008)->H();
    for (int act = 0; act < 2; ++act) gt[act].push_back(time_gptq(*dev, L, dW, dH, act == 1, reps));
    CHECK_CUDA(cudaFree(dW));
  }

  std::printf(
      "\nHessian accumulation, H += 2/n X^T X over %lld tokens (ms; bf16: GemmEx f32 accumulate; f32: SSYRK, "
      "timed on %lld tokens and scaled)\n",
      static_cast<long long>(tokens), static_cast<long long>(std::min<int64_t>(tokens, 4 * batch)));
  std::printf("| in | bf16 X (ms) | bf16 TFLOP/s | f32 X (ms) | f32 TFLOP/s |\n|---|---|---|---|---|\n");
  for (const HessianTiming& t : ht) {
    const double flop_gemm = 2.0 * double(tokens) * double(t.in) * double(t.in), flop_syrk = flop_gemm / 2;
    std::printf("| %lld | %.1f | %.0f | %.1f | %.1f |\n", static_cast<long long>(t.in), t.ms_bf16,
                flop_gemm / t.ms_bf16 * 1e-9, t.ms_f32, flop_syrk / t.ms_f32 * 1e-9);
  }
  std::printf("\nGPTQ per linear, group 128, block 128, 4-bit asym (ms, median; device-resident W and H)\n");
  std::printf(
      "| linear | [out, in] | act-order | load+permute | factor f64 | sweep | trailing SGEMM | fetch codes | "
      "total |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (int act = 0; act < 2; ++act)
    for (size_t i = 0; i < std::size(linears); ++i) {
      const GptqTiming& t = gt[act][i];
      std::printf("| %s | [%lld, %lld] | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", linears[i].name,
                  static_cast<long long>(linears[i].out), static_cast<long long>(linears[i].in),
                  act ? "yes" : "no", t.load, t.factor, t.sweep, t.update, t.fetch, t.total);
    }
  for (int act = 0; act < 2; ++act) {
    double gptq = 0;
    for (size_t i = 0; i < std::size(linears); ++i) gptq += linears[i].count * gt[act][i].total;
    const double hess = 3 * ht[0].ms_bf16 + ht[1].ms_bf16;
    std::printf(
        "\nper decoder layer%s: GPTQ of 7 linears %.1f ms + 4 Hessians (bf16, %lld tokens) %.1f ms = %.1f "
        "ms; "
        "x 32 layers = %.2f s\n",
        act ? " (act-order)" : "", gptq, static_cast<long long>(tokens), hess, gptq + hess,
        32 * (gptq + hess) / 1000);
  }
  return 0;
}
