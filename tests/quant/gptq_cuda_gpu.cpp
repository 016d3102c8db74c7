// GPTQ on the GPU against the CPU reference backend, through the same driver (quant/gptq.h), on Llama-2-7B
// shapes. Not a GoogleTest file (no *_test.cpp: it is its own executable, cuda_gptq_test, labelled gpu):
//   cuda_gptq_test [--quick]      --quick: the small shape only
// Without a GPU it prints "GPU TESTS NOT RUN" and exits 77, which CTest reports as skipped.
//
// What must agree, and why these bounds:
//  - The driver's decisions are the same code on both paths: g_idx, dead columns and damping are compared
//    exactly.
//  - U: both backends factor in f64 (LAPACK vs cuSOLVER, different blockings) and round to f32; the f64
//    results differ by ~cond(H) * 1e-16, far below half an f32 ulp, so the f32 U differ in a few entries
//    by one ulp at most.
//  - The block-start weights differ by the f32 summation order of the trailing updates (OpenBLAS vs cuBLAS
//    SGEMM): a few ulps of the update's magnitude per weight. A code differs where w / scale lies within
//    that of a rounding boundary, and the row's later codes then follow a different, equally valid
//    trajectory (which still shares most codes). Measured on H100: 0.1-2% of rows diverge, 99.965-99.9993%
//    of codes equal. kMinCodeAgreement = 99.9% of codes equal; a wrong U row, a missed update or a wrong
//    grid sends every row onto another trajectory.
//  - Loss: the sum over all weights of err^2 / 2. A diverged row's loss is a different sample of the same
//    distribution, so the total moves by far less than the diverged rows' share of it:
//    kMaxLossRelDiff = 1e-3 (measured: <= 1.6e-5).
//  - Grids: a grid is taken from the block-start state, so it differs wherever its row diverged before
//    that group (as above), besides the rare grid whose range sits on an fp16 rounding boundary. Measured
//    on H100 (docs/gpu-pipeline.md): up to 2% of rows diverge at in = 11008 and 99.50-99.95% of grids are
//    equal; kMinGridAgreement = 99% bitwise equal (scale and zero) keeps a margin, while a wrong grid rule
//    (range, fp16 rounding, zero point) changes nearly all of them. Every scale within kMaxScaleRelDiff =
//    1/4 of the CPU's (measured: <= 0.1; a grid of the wrong group or row is off by far more).
#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/cuda/gptq_cuda.h"
#include "quant/cuda/gptq_cuda_ops.h"
#include "quant/gptq.h"
#include "quant/hessian.h"
#include "gpu_test_util.h"

namespace {

using namespace qforge;
using qforge::testing::g_failures;
using qforge::testing::now_s;
using qforge::testing::pseudo_normal;
using namespace qforge::quant;

constexpr double kMinCodeAgreement = 0.999;
constexpr double kMaxLossRelDiff = 1e-3;
constexpr double kMinGridAgreement = 0.99;
constexpr double kMaxScaleRelDiff = 0.25;
constexpr double kF32Unit = 0x1p-24;




// Correlated calibration inputs X [n, in]: independent noise + a shared rank-32 part, channel scales
// exp(0.7 z) (uneven, so act-order reorders), on the host.
std::vector<float> correlated_inputs(int64_t n, int64_t in, uint64_t seed) {
  constexpr int64_t kRank = 32;
  std::vector<float> scale(static_cast<size_t>(in)), mix(size_t(kRank * in)), x(size_t(n * in));
  for (int64_t j = 0; j < in; ++j) scale[size_t(j)] = std::exp(0.7f * pseudo_normal(seed, uint64_t(j)));
  for (int64_t i = 0; i < kRank * in; ++i) mix[size_t(i)] = 0.5f * pseudo_normal(seed + 1, uint64_t(i));
  std::vector<float> z(kRank);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t q = 0; q < kRank; ++q) z[size_t(q)] = pseudo_normal(seed + 2, uint64_t(t * kRank + q));
    float* row = x.data() + t * in;
    for (int64_t j = 0; j < in; ++j) row[j] = pseudo_normal(seed + 3, uint64_t(t * in + j));
    for (int64_t q = 0; q < kRank; ++q) {
      const float* m = mix.data() + q * in;
      const float zq = z[size_t(q)];
      for (int64_t j = 0; j < in; ++j) row[j] += zq * m[j];
    }
    for (int64_t j = 0; j < in; ++j) row[j] *= scale[size_t(j)];
  }
  return x;
}

// Copies x [T, in] (f32, or bf16 bits) to the device and adds it to H.
cuda::CudaStatus upload_and_add(cuda::HessianDevice& h, const void* x, int64_t T, int64_t in, bool bf16) {
  const size_t bytes = size_t(T * in) * (bf16 ? 2 : 4);
  void* d = nullptr;
  cudaError_t e = cudaMalloc(&d, bytes);
  if (e != cudaSuccess) return cuda::CudaStatus::error(std::string("cudaMalloc: ") + cudaGetErrorString(e));
  e = cudaMemcpy(d, x, bytes, cudaMemcpyHostToDevice);
  cuda::CudaStatus s = e != cudaSuccess
                           ? cuda::CudaStatus::error(std::string("cudaMemcpy: ") + cudaGetErrorString(e))
                           : h.add(d, T, bf16 ? cuda::HessianInput::kBF16 : cuda::HessianInput::kF32);
  if (s) {
    e = cudaStreamSynchronize(static_cast<cudaStream_t>(h.stream()));
    if (e != cudaSuccess) s = cuda::CudaStatus::error(std::string("add: ") + cudaGetErrorString(e));
  }
  cudaFree(d);
  return s;
}

bool ok_or_report(const cuda::CudaStatus& s, const char* what) {
  if (!s) std::printf("FAIL %s: %s\n", what, s.message().c_str()), ++g_failures;
  return bool(s);
}

// HessianDevice against quant::HessianAccumulator (both f32, running mean over batches). Each entry is an
// f32 sum of the same products in different orders: each within gamma_{T + 4k} of the absolute sum of the
// exact value, so the two within twice that. The bf16 path (tensor cores) gets the same bound with
// u = 2^-23 (their f32 accumulation may truncate instead of round); its inputs are the bf16-rounded values.
void test_hessian() {
  const int64_t in = 384;
  const std::vector<int64_t> batches = {100, 3, 157};
  int64_t n = 0;
  for (int64_t b : batches) n += b;
  auto x = correlated_inputs(n, in, 5);
  for (bool bf16 : {false, true}) {
    std::vector<float> xv = x;
    std::vector<uint16_t> xb(xv.size());
    if (bf16)
      for (size_t i = 0; i < xv.size(); ++i) {
        uint32_t u;
        std::memcpy(&u, &xv[i], 4);
        u += 0x7fffu + ((u >> 16) & 1u);
        xb[i] = uint16_t(u >> 16);
        u = uint32_t(xb[i]) << 16;
        std::memcpy(&xv[i], &u, 4);
      }
    HessianAccumulator cpu(in);
    std::unique_ptr<cuda::HessianDevice> gpu;
    if (!ok_or_report(cuda::HessianDevice::create(0, in, &gpu), "HessianDevice::create")) return;
    int64_t row = 0;
    for (int64_t T : batches) {
      CHECK(cpu.add(xv.data() + row * in, T).is_ok(), "cpu add");
      const void* src = bf16 ? static_cast<const void*>(xb.data() + row * in) : xv.data() + row * in;
      if (!ok_or_report(upload_and_add(*gpu, src, T, in, bf16), "HessianDevice::add")) return;
      row += T;
    }
    std::vector<float> hg(size_t(in * in));
    if (!ok_or_report(gpu->download(hg.data()), "HessianDevice::download")) return;
    const double u = bf16 ? 2 * kF32Unit : kF32Unit;
    const double k = double(n + 4 * int64_t(batches.size()));
    const double gamma = k * u / (1 - k * u);
    int64_t bad = 0, asym = 0;
    double worst = 0;
    for (int64_t i = 0; i < in; ++i)
      for (int64_t j = 0; j < in; ++j) {
        double mass = 0;
        for (int64_t t = 0; t < n; ++t)
          mass += std::fabs(double(xv[size_t(t * in + i)]) * xv[size_t(t * in + j)]);
        mass *= 2.0 / double(n);
        const double d = std::fabs(double(hg[size_t(i * in + j)]) - cpu.H().f32()[i * in + j]);
        worst = std::max(worst, d / (2 * gamma * mass));
        bad += d > 2 * gamma * mass;
        asym += hg[size_t(i * in + j)] != hg[size_t(j * in + i)];
      }
    std::printf("hessian %s in=%lld n=%lld: worst |gpu - cpu| / bound = %.3g\n", bf16 ? "bf16" : "f32",
                static_cast<long long>(in), static_cast<long long>(n), worst);
    CHECK(bad == 0, "%lld Hessian entries outside the bound", static_cast<long long>(bad));
    CHECK(asym == 0, "%lld Hessian entries not symmetric", static_cast<long long>(asym));
    CHECK(gpu->samples() == n, "samples %lld", static_cast<long long>(gpu->samples()));
  }
}

struct LinearShape {
  int64_t out, in, tokens;
  const char* what;
};

void compare_shape(const LinearShape& s, GptqOps& gpu_ops) {
  const int64_t out = s.out, in = s.in;
  const double t0 = now_s();
  // H from correlated inputs, accumulated on the GPU in f32 (any H will do: both backends get the same one).
  Tensor H(DType::kF32, {in, in});
  {
    const auto x = correlated_inputs(s.tokens, in, uint64_t(in));
    std::unique_ptr<cuda::HessianDevice> hd;
    if (!ok_or_report(cuda::HessianDevice::create(0, in, &hd), "HessianDevice::create")) return;
    if (!ok_or_report(upload_and_add(*hd, x.data(), s.tokens, in, false), "Hessian add")) return;
    if (!ok_or_report(hd->download(H.f32()), "Hessian download")) return;
  }
  std::vector<float> W(size_t(out * in));
  for (int64_t i = 0; i < out * in; ++i)
    W[size_t(i)] = 0.02f * pseudo_normal(uint64_t(out + 7 * in), uint64_t(i));
  std::printf("%s [%lld, %lld], H from %lld tokens (inputs %.1f s)\n", s.what, static_cast<long long>(out),
              static_cast<long long>(in), static_cast<long long>(s.tokens), now_s() - t0);
  for (bool act : {false, true})
    for (bool sym : {false, true}) {
      const QuantConfig cfg{.bits = 4, .group_size = 128, .sym = sym};
      const GptqOptions opts{.damp_percent = 0.01, .block_size = 128, .act_order = act};
      const double c0 = now_s();
      auto c = gptq_quantize(W.data(), out, in, H, cfg, opts, s.what);
      const double c1 = now_s();
      auto g = gptq_quantize(W.data(), out, in, H, cfg, opts, s.what, gpu_ops);
      const double g1 = now_s();
      const std::string tag = std::string(s.what) + (act ? " act" : "") + (sym ? " sym" : " asym");
      if (!c || !g) {
        CHECK(false, "%s: cpu %s / gpu %s", tag.c_str(), c.message().c_str(), g.message().c_str());
        continue;
      }
      int64_t same = 0, rows_diff = 0;
      for (int64_t r = 0; r < out; ++r) {
        int64_t row_same = 0;
        for (int64_t i = 0; i < in; ++i)
          row_same += c->q.qweight[size_t(r * in + i)] == g->q.qweight[size_t(r * in + i)];
        same += row_same;
        rows_diff += row_same != in;
      }
      const int64_t ng = c->q.scales.numel();
      int64_t grid_same = 0;
      double scale_worst = 0;
      for (int64_t i = 0; i < ng; ++i) {
        const float a = c->q.scales.f32()[i], b = g->q.scales.f32()[i];
        grid_same += a == b && c->q.zeros.f32()[i] == g->q.zeros.f32()[i];
        scale_worst = std::max(scale_worst, std::fabs(double(a) - b) / double(a));
      }
      const double agree = double(same) / double(out * in), gagree = double(grid_same) / double(ng);
      const double loss_rel = std::fabs(g->loss - c->loss) / c->loss;
      std::printf(
          "  %-28s codes equal %.6f (%lld rows differ)  grids equal %.6f (worst scale %.2g)  loss cpu %.6g "
          "gpu %.6g (rel %.2g)  time cpu %.2f s gpu %.3f s\n",
          tag.c_str(), agree, static_cast<long long>(rows_diff), gagree, scale_worst, c->loss, g->loss,
          loss_rel, c1 - c0, g1 - c1);
      CHECK(agree >= kMinCodeAgreement, "%s: codes equal %.6f", tag.c_str(), agree);
      CHECK(gagree >= kMinGridAgreement, "%s: grids equal %.6f", tag.c_str(), gagree);
      CHECK(scale_worst <= kMaxScaleRelDiff, "%s: scale off by %.3g", tag.c_str(), scale_worst);
      CHECK(loss_rel < kMaxLossRelDiff, "%s: loss %.9g vs %.9g", tag.c_str(), g->loss, c->loss);
      CHECK(c->q.g_idx == g->q.g_idx, "%s: g_idx differs", tag.c_str());
      CHECK(c->dead_columns == g->dead_columns && c->damp == g->damp && c->damp_percent == g->damp_percent,
            "%s: dead %lld/%lld damp %g/%g", tag.c_str(), static_cast<long long>(c->dead_columns),
            static_cast<long long>(g->dead_columns), c->damp, g->damp);
    }
}

// Every option of the driver on a small shape, with dead inputs and a block smaller than a group: the
// GPU backend must take the same decisions (same agreement bounds).
void test_small_options(GptqOps& gpu_ops) {
  const int64_t out = 96, in = 512, n = 1024;
  auto x = correlated_inputs(n, in, 77);
  for (int64_t t = 0; t < n; ++t) x[size_t(t * in + 9)] = x[size_t(t * in + 300)] = 0.0f;  // dead inputs
  HessianAccumulator acc(in);
  if (!acc.add(x.data(), n).is_ok()) CHECK(false, "cpu hessian");
  std::vector<float> W(size_t(out * in));
  for (int64_t i = 0; i < out * in; ++i) W[size_t(i)] = 0.02f * pseudo_normal(99, uint64_t(i));
  int cases = 0;
  for (QuantGrid grid : {QuantGrid::kGptq, QuantGrid::kAwq})
    for (int64_t gs : {int64_t(32), int64_t(128), int64_t(0)})
      for (int64_t bs : {int64_t(16), int64_t(100), int64_t(128)})
        for (int mode = 0; mode < 3; ++mode)
          for (bool sym : {false, true}) {
            if (gs == 0 && mode == 2) continue;
            const QuantConfig cfg{.bits = gs == 32 ? 3 : 4, .group_size = gs, .sym = sym, .grid = grid};
            const GptqOptions opts{.block_size = bs, .act_order = mode >= 1, .static_groups = mode == 2};
            auto c = gptq_quantize(W.data(), out, in, acc.H(), cfg, opts, "small");
            auto g = gptq_quantize(W.data(), out, in, acc.H(), cfg, opts, "small", gpu_ops);
            char tag[128];
            std::snprintf(tag, sizeof tag, "small grid=%d gs=%lld bs=%lld mode=%d sym=%d", int(grid),
                          static_cast<long long>(gs), static_cast<long long>(bs), mode, int(sym));
            if (!c || !g) {
              CHECK(false, "%s: cpu %s / gpu %s", tag, c.message().c_str(), g.message().c_str());
              continue;
            }
            int64_t same = 0;
            for (size_t i = 0; i < c->q.qweight.size(); ++i) same += c->q.qweight[i] == g->q.qweight[i];
            const double agree = double(same) / double(out * in);
            const double loss_rel = std::fabs(g->loss - c->loss) / c->loss;
            CHECK(agree >= kMinCodeAgreement, "%s: codes equal %.6f", tag, agree);
            CHECK(loss_rel < kMaxLossRelDiff, "%s: loss rel %.3g", tag, loss_rel);
            CHECK(c->q.g_idx == g->q.g_idx && c->dead_columns == 2 && g->dead_columns == 2, "%s: g_idx/dead",
                  tag);
            ++cases;
          }
  std::printf("small shape: %d option combinations compared\n", cases);
}

// Errors: a block over the kernel's limit, a device that does not exist, a Hessian that cannot fit.
void test_errors(GptqOps& gpu_ops) {
  const int64_t out = 4, in = 256;
  std::vector<float> W(size_t(out * in), 0.01f);
  Tensor H(DType::kF32, {in, in});
  for (int64_t i = 0; i < in; ++i) H.f32()[i * in + i] = 1.0f;
  auto r = gptq_quantize(W.data(), out, in, H, QuantConfig{.bits = 4, .group_size = 128},
                         GptqOptions{.block_size = 256}, "model.layers.0.mlp.up_proj", gpu_ops);
  CHECK(!r && r.message() ==
                  "model.layers.0.mlp.up_proj: GPTQ sweep: block of 256 columns; the CUDA backend "
                  "takes 1..128",
        "%s", r.message().c_str());
  auto bad = make_cuda_gptq_ops(1000);
  CHECK(!bad && bad.message().rfind("GPTQ on CUDA: CUDA device 1000 does not exist (", 0) == 0, "%s",
        bad.message().c_str());
  std::unique_ptr<cuda::GptqDevice> dev;
  if (!ok_or_report(cuda::GptqDevice::create(0, &dev), "GptqDevice::create")) return;
  const int64_t huge = (int64_t(1) << 21) - 1;  // Hessian 32 TiB in f64
  std::vector<int64_t> perm(1);
  const cuda::CudaStatus s = dev->load(W.data(), H.f32(), 1, huge, cuda::GptqGridRule{}, 1, perm.data(),
                                       nullptr, nullptr, nullptr, nullptr, nullptr);
  CHECK(!s && s.message().find("cannot allocate") == 0 &&
            s.message().find("permuted Hessian") != std::string::npos,
        "%s", s.message().c_str());
  std::printf("errors: \"%s\"\n", s.message().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  auto ops = make_cuda_gptq_ops(0);
  if (!ops) {
    std::printf("GPU TESTS NOT RUN: %s\n", ops.message().c_str());
    return 77;
  }
  std::printf("device: %s\n", (*ops)->name());
  test_hessian();
  test_errors(**ops);
  test_small_options(**ops);
  std::vector<LinearShape> shapes = {{256, 1024, 2048, "small"}};
  if (!quick) {
    shapes.push_back({4096, 4096, 8192, "q_proj 4096x4096"});
    shapes.push_back({11008, 4096, 8192, "gate_proj 11008x4096"});
    shapes.push_back({4096, 11008, 16384, "down_proj 4096x11008"});
  }
  for (const LinearShape& s : shapes) compare_shape(s, **ops);
  std::printf(g_failures ? "GPU TESTS FAILED: %d\n" : "GPU TESTS PASSED\n", g_failures);
  return g_failures ? 1 : 0;
}
