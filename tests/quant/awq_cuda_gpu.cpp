// AWQ on the GPU (kernels/cuda/awq_cuda.h) against the CPU reference (quant/awq.cpp and the pipeline's error
// statistics), on small shapes for every grid option and on Llama-2-7B shapes. Its own executable,
// cuda_awq_test (labelled gpu):
//   cuda_awq_test [--quick]      --quick: small shapes only
// Without a GPU it prints "GPU TESTS NOT RUN" and exits 77, which CTest reports as skipped.
//
// What must agree, and why these bounds (u32 = 2^-24, u64 = 2^-53, gamma_n(u) = n u / (1 - n u)):
//  - mean |x| (one call and chunk by chunk), fake quantization, column scaling: bit-identical (memcmp). The
//    GPU performs the CPU's IEEE operations in the CPU's order (awq_cuda.h), so any difference is a defect.
//  - mean squared difference and weight mse: f64 sums of the same terms in two orders, each within
//    gamma_n(u64) * S of the exact sum S of nonnegative terms, so within 2 gamma_n(u64) S of each other.
//  - output error tr(D H D^T) / 2: each dh = (D H)_i is an f32 sum of `in` products in an unknown order on
//    both (OpenBLAS, cuBLAS), within gamma_in(u32) (|D| |H|)_i of the exact value; so the traces differ by at
//    most 2 gamma_in(u32) sum_i |d_i| (|D| |H|)_i, plus the f64 sums' 2 gamma_n(u64) sum |dh_i d_i|.
//  - clip search: the candidates' clamp values, grids and diffs are the same bits on both; the output error
//    per token e = x . diff is an f32 sum over the group's gs columns, within delta = gamma_gs(u32) sum
//    |x||diff| of the exact value on either side, so a candidate's error mean_t e^2 is within B = mean_t (2
//    |e| delta + delta^2) (+ f64 rounding) of the exact error. Checked: (1) every GPU error against an f64
//    reference within B, on every candidate of the small shapes and of sampled groups of the 7B shapes; (2)
//    max_val equal for at least kMinClipAgreement of the groups; (3) where the choices differ, exact(gpu
//    choice) <= exact(cpu choice) + B(gpu choice) + B(cpu choice): only a near-tie can flip a choice. (The
//    CPU's own per-candidate errors are not reachable: awq_search_clip returns the choice only, and its SGEMM
//    order depends on the row batch.)
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/cuda/awq_cuda.h"
#include "ops/ops.h"
#include "quant/awq.h"
#include "quant/rtn.h"
#include "gpu_test_util.h"

namespace {

using namespace qforge;
using qforge::testing::g_failures;
using qforge::testing::now_s;
using qforge::testing::pseudo_normal;
using qforge::testing::splitmix;
using namespace qforge::quant;

constexpr double kU32 = 0x1p-24;
constexpr double kU64 = 0x1p-53;
// Random weights give near-ties between shrink candidates rarely (a tie must be within ~1e-6 relative); a
// wrong grid, clamp or error formula changes far more choices. Small shapes have a few hundred groups, where
// one near-tie is already 0.2%: there at most kMaxClipDifferSmall groups may differ (each still explained by
// the rounding bound). Measured on H100 (2026-11-26): every max_val equal, small and 7B shapes; the GPU's
// candidate errors within 1% of B of the f64 reference.
constexpr double kMinClipAgreement = 0.999;
constexpr int64_t kMaxClipDifferSmall = 2;
// 7B shapes: groups whose every candidate error is checked against the f64 reference (all of a small shape).
constexpr int64_t kSampledGroups = 256;

double gamma(double n, double u) {
  return n * u / (1 - n * u);
}




// Weights ~ 0.02 N(0, 1) with 0.5% outliers x8 (so clipping has something to trade).
std::vector<float> make_weights(int64_t out, int64_t C, uint64_t seed) {
  std::vector<float> W(static_cast<size_t>(out * C));
  for (int64_t i = 0; i < out * C; ++i) {
    float w = 0.02f * pseudo_normal(seed, uint64_t(i));
    if (splitmix(seed ^ (uint64_t(i) * 0x9e37ull)) % 200 == 0) w *= 8.0f;
    W[size_t(i)] = w;
  }
  return W;
}

// Activations x [T, C]: noise + a shared rank-4 part, channel scales exp(0.8 z) (a few salient channels).
std::vector<float> make_inputs(int64_t T, int64_t C, uint64_t seed) {
  constexpr int64_t kRank = 4;
  std::vector<float> scale(static_cast<size_t>(C)), mix(static_cast<size_t>(kRank * C)),
      x(static_cast<size_t>(T * C));
  for (int64_t c = 0; c < C; ++c) scale[size_t(c)] = std::exp(0.8f * pseudo_normal(seed, uint64_t(c)));
  for (int64_t i = 0; i < kRank * C; ++i) mix[size_t(i)] = 0.5f * pseudo_normal(seed + 1, uint64_t(i));
  for (int64_t t = 0; t < T; ++t) {
    float* row = x.data() + t * C;
    for (int64_t c = 0; c < C; ++c) row[c] = pseudo_normal(seed + 3, uint64_t(t * C + c));
    for (int64_t q = 0; q < kRank; ++q) {
      const float z = pseudo_normal(seed + 2, uint64_t(t * kRank + q));
      for (int64_t c = 0; c < C; ++c) row[c] += z * mix[size_t(q * C + c)];
    }
    for (int64_t c = 0; c < C; ++c) row[c] *= scale[size_t(c)];
  }
  return x;
}

// A device copy of host data, freed at scope end.
struct Dev {
  void* p = nullptr;
  size_t bytes = 0;
  Dev() = default;
  explicit Dev(size_t b) : bytes(b) {
    if (cudaMalloc(&p, b) != cudaSuccess) {
      std::printf("FAIL cudaMalloc %zu bytes\n", b);
      ++g_failures;
      p = nullptr;
    }
  }
  template <typename T>
  explicit Dev(const std::vector<T>& v) : Dev(v.size() * sizeof(T)) {
    if (p) cudaMemcpy(p, v.data(), bytes, cudaMemcpyHostToDevice);
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() {
    if (p) cudaFree(p);
  }
  float* f() const { return static_cast<float*>(p); }
};

std::vector<float> download(const Dev& d, size_t n) {
  std::vector<float> v(n);
  cudaMemcpy(v.data(), d.p, n * 4, cudaMemcpyDeviceToHost);
  return v;
}

bool ok_or_report(const cuda::CudaStatus& s, const std::string& what) {
  if (!s) std::printf("FAIL %s: %s\n", what.c_str(), s.message().c_str()), ++g_failures;
  return bool(s);
}

cuda::GptqGridRule rule_of(const QuantConfig& c) {
  return cuda::GptqGridRule{c.bits, c.group_size, c.sym, c.grid == QuantGrid::kAwq};
}

std::string cfg_name(const QuantConfig& c) {
  return std::to_string(c.bits) + "b g" + std::to_string(c.group_size) + (c.sym ? " sym" : " asym") +
         (c.grid == QuantGrid::kAwq ? " awq" : " gptq");
}

std::vector<QuantConfig> all_configs() {
  std::vector<QuantConfig> v;
  for (int bits : {3, 4})
    for (int64_t gs : {32, 64, 128, 0})
      for (bool sym : {false, true})
        for (QuantGrid grid : {QuantGrid::kAwq, QuantGrid::kGptq}) v.push_back({bits, gs, sym, grid});
  return v;
}

// ---- mean |x| and column scaling -------------------------------------------------------------------

void test_mean_abs(cuda::AwqDevice& dev) {
  const std::pair<int64_t, int64_t> shapes[] = {{37, 100}, {3001, 4096}};
  for (auto [T, C] : shapes) {
    auto x = make_inputs(T, C, uint64_t(T + C));
    auto cpu = awq_mean_abs(x.data(), T, C, "x");
    Dev xd(x);
    std::vector<float> gpu(static_cast<size_t>(C));
    int64_t bad = 0;
    if (!ok_or_report(dev.mean_abs(xd.f(), T, C, gpu.data(), &bad, nullptr), "mean_abs")) return;
    CHECK(cpu && std::memcmp(cpu->data(), gpu.data(), size_t(C) * 4) == 0 && bad == -1,
          "mean |x| [%lld, %lld] differs from awq_mean_abs", (long long)T, (long long)C);
    // Chunks of uneven sizes: the same bits.
    std::unique_ptr<cuda::AwqAbsSum> acc;
    if (!ok_or_report(cuda::AwqAbsSum::create(C, &acc), "AwqAbsSum::create")) return;
    const int64_t cuts[] = {0, 1, 17, T / 2, T / 2, T};
    for (int i = 0; i + 1 < 6; ++i)
      if (!ok_or_report(acc->add(xd.f() + cuts[i] * C, cuts[i + 1] - cuts[i], nullptr), "AwqAbsSum::add"))
        return;
    std::vector<float> chunked(static_cast<size_t>(C));
    if (!ok_or_report(acc->finalize(chunked.data(), &bad, nullptr), "AwqAbsSum::finalize")) return;
    CHECK(cpu && std::memcmp(cpu->data(), chunked.data(), size_t(C) * 4) == 0 && bad == -1 &&
              acc->tokens() == T,
          "chunked mean |x| [%lld, %lld] differs from awq_mean_abs", (long long)T, (long long)C);
    // Non-finite values: the first in row-major order is reported, as the CPU's error names it.
    const int64_t t1 = T - 2, c1 = C / 3, t2 = T - 1, c2 = 1;
    x[size_t(t2 * C + c2)] = INFINITY;
    x[size_t(t1 * C + c1)] = NAN;
    Dev xb(x);
    if (!ok_or_report(dev.mean_abs(xb.f(), T, C, gpu.data(), &bad, nullptr), "mean_abs nan")) return;
    auto cpu_bad = awq_mean_abs(x.data(), T, C, "x");
    char want[64];
    std::snprintf(want, sizeof(want), "[%lld, %lld]", (long long)t1, (long long)c1);
    CHECK(bad == t1 * C + c1 && !cpu_bad && cpu_bad.message().find(want) != std::string::npos,
          "first bad %lld, cpu: %s", (long long)bad, cpu_bad.message().c_str());
    if (!ok_or_report(acc->reset(nullptr), "reset")) return;
    if (!ok_or_report(acc->add(xd.f(), T, nullptr), "add") ||
        !ok_or_report(acc->add(xb.f(), T, nullptr), "add"))
      return;
    if (!ok_or_report(acc->finalize(chunked.data(), &bad, nullptr), "finalize")) return;
    CHECK(bad == (T + t1) * C + c1, "chunked first bad %lld", (long long)bad);
  }
  std::printf("mean |x|: done\n");
}

void test_scale_columns() {
  const int64_t T = 333, C = 4096;
  auto x = make_inputs(T, C, 11);
  std::vector<float> s(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) s[size_t(c)] = std::exp(0.5f * pseudo_normal(12, uint64_t(c)));
  Dev xd(x), sd(s);
  if (!ok_or_report(cuda::awq_scale_columns_device(xd.f(), T, C, sd.f(), nullptr), "scale columns")) return;
  auto got = download(xd, x.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c) x[size_t(t * C + c)] /= s[size_t(c)];  // the pipeline's loop
  CHECK(std::memcmp(got.data(), x.data(), x.size() * 4) == 0, "scale columns differ");
  std::printf("scale columns: done\n");
}

// ---- fake quantization and the scale search's error -------------------------------------------------------

// dst = Q(W s) / s on both sides, memcmp. Returns the GPU's time (s) of one call when asked.
double compare_fake_quant(cuda::AwqDevice& dev, const std::vector<float>& W, const Dev& Wd, int64_t rows,
                          int64_t C, const std::vector<float>& s, const QuantConfig& cfg,
                          const std::string& tag, int reps) {
  Dev sd(s), dst(static_cast<size_t>(rows * C) * 4);
  std::vector<float> cpu(static_cast<size_t>(rows * C)), row;
  const Status st = awq_fake_quantize_scaled(W.data(), rows, C, s.data(), cfg, cpu.data(), row);
  const auto g = dev.fake_quantize_scaled(Wd.f(), rows, C, sd.f(), rule_of(cfg), dst.f(), nullptr);
  if (!st || !g) {
    CHECK(false, "%s: cpu %s / gpu %s", tag.c_str(), st.message().c_str(), g.message().c_str());
    return 0;
  }
  auto gpu = download(dst, cpu.size());
  int64_t diff = 0;
  for (size_t i = 0; i < cpu.size(); ++i) diff += std::memcmp(&cpu[i], &gpu[i], 4) != 0;
  CHECK(diff == 0, "%s: %lld of %lld fake-quantized values differ", tag.c_str(), (long long)diff,
        (long long)cpu.size());
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    const auto gr = dev.fake_quantize_scaled(Wd.f(), rows, C, sd.f(), rule_of(cfg), dst.f(), nullptr);
    best = std::min(best, now_s() - t0);
    if (!ok_or_report(gr, tag)) break;
  }
  return best;
}

void test_fake_quant_small(cuda::AwqDevice& dev) {
  const int64_t rows = 96, C = 512, T = 300;
  auto W = make_weights(rows, C, 21);
  auto x = make_inputs(T, C, 22);
  auto xm = awq_mean_abs(x.data(), T, C, "x");
  Dev Wd(W);
  int n = 0;
  for (const QuantConfig& cfg : all_configs())
    for (double alpha : {0.0, 0.5, 0.95}) {
      compare_fake_quant(dev, W, Wd, rows, C, awq_scales_for_alpha(xm->data(), C, alpha), cfg,
                         "fake quant " + cfg_name(cfg) + " alpha " + std::to_string(alpha), 0);
      ++n;
    }
  // Overflow: the error names the same row and group as the CPU's.
  for (const QuantConfig& cfg :
       {QuantConfig{4, 128, false, QuantGrid::kAwq}, QuantConfig{3, 0, true, QuantGrid::kGptq}}) {
    auto Wb = W;
    Wb[size_t(70 * C + 300)] = 3e9f;
    Wb[size_t(71 * C + 10)] = -3e9f;
    const std::vector<float> s(static_cast<size_t>(C), 1.0f);
    std::vector<float> cpu(static_cast<size_t>(rows * C)), row;
    const Status st = awq_fake_quantize_scaled(Wb.data(), rows, C, s.data(), cfg, cpu.data(), row);
    Dev wd(Wb), sd(s), dst(static_cast<size_t>(rows * C) * 4);
    const auto g = dev.fake_quantize_scaled(wd.f(), rows, C, sd.f(), rule_of(cfg), dst.f(), nullptr);
    const std::string want = cfg.group_size ? "row 70 group 2:" : "row 70 group 0:";
    CHECK(!st && !g && st.message().rfind(want, 0) == 0 && g.message().find(want) != std::string::npos,
          "overflow: cpu '%s' gpu '%s'", st.message().c_str(), g.message().c_str());
    std::printf("overflow error: %s\n", g.message().c_str());
  }
  const auto bad = dev.fake_quantize_scaled(Wd.f(), rows, C, Wd.f(), cuda::GptqGridRule{4, 96, false, true},
                                            Wd.f(), nullptr);
  CHECK(!bad && bad.message().find("group size 96") != std::string::npos, "bad group size: %s",
        bad.message().c_str());
  std::printf("fake quant: %d configurations compared\n", n);
}

// awq_search_scales (the real CPU search, with the linear's own output as the "block": y = W) against the GPU
// equivalent: fake quantization + mean squared difference per alpha.
void test_scale_search(cuda::AwqDevice& dev) {
  const int64_t rows = 192, C = 1024, T = 256;
  auto W = make_weights(rows, C, 31);
  auto x = make_inputs(T, C, 32);
  auto xm = awq_mean_abs(x.data(), T, C, "x");
  Dev Wd(W), dst(static_cast<size_t>(rows * C) * 4);
  const float* wp = W.data();
  const int64_t outs[] = {rows};
  const BlockForward identity = [&](std::span<const float* const> w, Tensor& y) {
    y = Tensor(DType::kF32, {rows, C});
    std::copy(w[0], w[0] + rows * C, y.f32());
    return Status::ok();
  };
  for (const QuantConfig& cfg :
       {QuantConfig{4, 128, false, QuantGrid::kAwq}, QuantConfig{3, 64, true, QuantGrid::kGptq},
        QuantConfig{4, 0, false, QuantGrid::kGptq}}) {
    AwqOptions opt;
    auto cpu = awq_search_scales(xm->data(), C, std::span<const float* const>(&wp, 1), outs, cfg, opt,
                                 identity, "s");
    if (!cpu) {
      CHECK(false, "cpu search: %s", cpu.message().c_str());
      continue;
    }
    const double n = double(rows * C), tol = 2 * gamma(n, kU64);
    double worst = 0;
    int best_i = 0;
    std::vector<double> gerr(static_cast<size_t>(opt.n_grid));
    for (int i = 0; i < opt.n_grid; ++i) {
      const auto s = awq_scales_for_alpha(xm->data(), C, double(i) / opt.n_grid);
      Dev sd(s);
      if (!ok_or_report(dev.fake_quantize_scaled(Wd.f(), rows, C, sd.f(), rule_of(cfg), dst.f(), nullptr),
                        "fq"))
        return;
      if (!ok_or_report(dev.mean_squared_diff(Wd.f(), dst.f(), rows * C, &gerr[size_t(i)], nullptr), "msd"))
        return;
      const double c = cpu->err_curve[size_t(i)];
      worst = std::max(worst, std::fabs(gerr[size_t(i)] - c) / (tol * c));
      if (gerr[size_t(i)] < gerr[size_t(best_i)]) best_i = i;
    }
    const double best_alpha = double(best_i) / opt.n_grid;
    std::printf("scale search %-18s best alpha cpu %.2f gpu %.2f, worst |err diff| / bound %.3g\n",
                cfg_name(cfg).c_str(), cpu->best_alpha, best_alpha, worst);
    CHECK(worst <= 1.0, "%s: block errors differ beyond 2 gamma_n", cfg_name(cfg).c_str());
    CHECK(best_alpha == cpu->best_alpha || cpu->err_curve[size_t(best_i)] <= cpu->err_best * (1 + 2 * tol),
          "%s: alpha %g vs %g", cfg_name(cfg).c_str(), best_alpha, cpu->best_alpha);
  }
}

void test_mean_squared_diff(cuda::AwqDevice& dev, int64_t n) {
  std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    a[size_t(i)] = pseudo_normal(41, uint64_t(i));
    b[size_t(i)] = a[size_t(i)] + 0.01f * pseudo_normal(42, uint64_t(i));
  }
  double acc = 0;  // block_error's loop
  for (int64_t k = 0; k < n; ++k) {
    const double d = double(a[size_t(k)]) - double(b[size_t(k)]);
    acc += d * d;
  }
  const double cpu = acc / double(n);
  Dev ad(a), bd(b);
  double gpu = 0, gpu2 = 0;
  if (!ok_or_report(dev.mean_squared_diff(ad.f(), bd.f(), n, &gpu, nullptr), "msd")) return;
  if (!ok_or_report(dev.mean_squared_diff(ad.f(), bd.f(), n, &gpu2, nullptr), "msd")) return;
  const double bound = 2 * gamma(double(n), kU64) * cpu;
  std::printf("mean squared diff n=%lld: cpu %.17g gpu %.17g, |diff| / bound %.3g\n", (long long)n, cpu, gpu,
              std::fabs(gpu - cpu) / bound);
  CHECK(std::fabs(gpu - cpu) <= bound, "msd %.17g vs %.17g", gpu, cpu);
  CHECK(gpu == gpu2, "msd not deterministic");
}

// ---- clip search -------------------------------------------------------------------------------------

// Every candidate of one (row, group): the exact-ish error (f64 dot products of the same diffs the CPU and
// the GPU quantize to) and its rounding bound B (file comment).
struct CandRef {
  std::vector<double> err, bound;
  std::vector<float> m;
};
CandRef reference_candidates(const float* w /*[gs]*/, int64_t gs, const std::vector<float>& xs /*[ts, C]*/,
                             int64_t ts, int64_t C, int64_t col0, const QuantConfig& cfg,
                             const AwqOptions& opt) {
  const int ns = std::max(1, int(opt.max_shrink * opt.n_grid));
  const int maxq = quant_maxq(cfg.bits);
  CandRef r;
  float amax = 0;
  for (int64_t k = 0; k < gs; ++k) amax = std::max(amax, std::fabs(w[k]));
  std::vector<float> wc(static_cast<size_t>(gs)), d(static_cast<size_t>(gs));
  const double g32 = gamma(double(gs), kU32) + gamma(double(gs), kU64);
  for (int i = 0; i < ns; ++i) {
    const float m = float(double(amax) * (1.0 - double(i) / double(opt.n_grid)));
    for (int64_t k = 0; k < gs; ++k) wc[size_t(k)] = std::clamp(w[k], -m, m);
    auto p = quant_group_params(wc.data(), gs, cfg);
    for (int64_t k = 0; k < gs; ++k)
      d[size_t(k)] = std::fma(-(float(quant_code(wc[size_t(k)], *p, maxq)) - p->zero), p->scale, w[k]);
    double err = 0, bnd = 0;
    for (int64_t t = 0; t < ts; ++t) {
      const float* xr = xs.data() + t * C + col0;
      double e = 0, a = 0;
      for (int64_t k = 0; k < gs; ++k) {
        const double pr = double(xr[k]) * double(d[size_t(k)]);  // exact
        e += pr;
        a += std::fabs(pr);
      }
      const double delta = g32 * a;
      err += e * e;
      bnd += 2 * std::fabs(e) * delta + delta * delta;
    }
    err /= double(ts);
    bnd = bnd / double(ts) + 4 * gamma(double(ts + 2), kU64) * err;  // + the f64 squares and sums
    r.err.push_back(err);
    r.bound.push_back(bnd);
    r.m.push_back(m);
  }
  return r;
}

struct ClipTiming {
  double seconds = 0;
};

void compare_clip(cuda::AwqDevice& dev, const std::vector<float>& W, const Dev& Wd, int64_t out, int64_t C,
                  const std::vector<float>& x, const Dev& xd, int64_t T, const QuantConfig& cfg,
                  const std::string& tag, bool all_groups) {
  AwqOptions opt;
  const int ns = std::max(1, int(opt.max_shrink * opt.n_grid));
  const int64_t ng = quant_n_groups(cfg, C), gs = C / ng;
  const double c0 = now_s();
  auto cpu = awq_search_clip(W.data(), out, C, x.data(), T, cfg, opt, "clip");
  const double c1 = now_s();
  std::vector<float> gmv(static_cast<size_t>(out * ng));
  std::vector<double> gerr(static_cast<size_t>(out * ng * ns));
  const cuda::AwqClipOptions gopt{opt.n_grid, opt.max_shrink, opt.clip_sample_tokens, opt.clip_batch_rows};
  const auto g =
      dev.search_clip(Wd.f(), out, C, xd.f(), T, rule_of(cfg), gopt, gmv.data(), gerr.data(), nullptr);
  const double g1 = now_s();
  if (!cpu || !g) {
    CHECK(false, "%s: cpu %s / gpu %s", tag.c_str(), cpu.message().c_str(), g.message().c_str());
    return;
  }
  const int64_t step = std::max<int64_t>(1, T / opt.clip_sample_tokens), ts = (T + step - 1) / step;
  std::vector<float> xs(static_cast<size_t>(ts * C));
  for (int64_t k = 0; k < ts; ++k) std::copy_n(x.data() + k * step * C, C, xs.data() + k * C);

  int64_t same = 0, checked = 0, err_bad = 0, choice_bad = 0;
  double worst_err = 0, worst_choice = 0;
  auto check_group = [&](int64_t r, int64_t gi, bool choice_differs) {
    const CandRef ref = reference_candidates(W.data() + r * C + gi * gs, gs, xs, ts, C, gi * gs, cfg, opt);
    for (int i = 0; i < ns; ++i) {
      const double e = gerr[size_t((r * ng + gi) * ns + i)];
      const double q = std::fabs(e - ref.err[size_t(i)]) / ref.bound[size_t(i)];
      worst_err = std::max(worst_err, std::isfinite(q) ? q : (e == ref.err[size_t(i)] ? 0.0 : 1e30));
      err_bad += !(std::fabs(e - ref.err[size_t(i)]) <= ref.bound[size_t(i)]);
    }
    ++checked;
    if (!choice_differs) return;
    const float cm = cpu->f32()[r * ng + gi], gm = gmv[size_t(r * ng + gi)];
    const int ic = int(std::find(ref.m.begin(), ref.m.end(), cm) - ref.m.begin());
    const int ig = int(std::find(ref.m.begin(), ref.m.end(), gm) - ref.m.begin());
    if (ic >= ns || ig >= ns) {
      ++choice_bad;
      std::printf("  %s row %lld group %lld: clip value not a candidate (cpu %g gpu %g)\n", tag.c_str(),
                  (long long)r, (long long)gi, cm, gm);
      return;
    }
    const double slack = ref.bound[size_t(ig)] + ref.bound[size_t(ic)];
    const double over = ref.err[size_t(ig)] - ref.err[size_t(ic)];
    worst_choice = std::max(worst_choice, over / slack);
    choice_bad += !(over <= slack);
  };
  for (int64_t i = 0; i < out * ng; ++i) {
    const bool eq = std::memcmp(cpu->f32() + i, &gmv[size_t(i)], 4) == 0;
    same += eq;
    if (!eq) check_group(i / ng, i % ng, true);
  }
  if (all_groups) {
    for (int64_t i = 0; i < out * ng; ++i)
      if (std::memcmp(cpu->f32() + i, &gmv[size_t(i)], 4) == 0) check_group(i / ng, i % ng, false);
  } else {
    for (int64_t k = 0; k < kSampledGroups; ++k) {
      const int64_t i = int64_t(splitmix(uint64_t(k) + 77) % uint64_t(out * ng));
      check_group(i / ng, i % ng, false);
    }
  }
  const double agree = double(same) / double(out * ng);
  std::printf(
      "  clip %-30s ts %lld: max_val equal %.6f (%lld differ)  errors checked %lld groups, worst |gpu - ref| "
      "/ B "
      "%.3g  worst choice excess / slack %.3g  time cpu %.2f s gpu %.4f s\n",
      tag.c_str(), (long long)ts, agree, (long long)(out * ng - same), (long long)checked, worst_err,
      worst_choice, c1 - c0, g1 - c1);
  CHECK(agree >= kMinClipAgreement || out * ng - same <= kMaxClipDifferSmall, "%s: max_val equal %.6f",
        tag.c_str(), agree);
  CHECK(err_bad == 0, "%s: %lld candidate errors outside B", tag.c_str(), (long long)err_bad);
  CHECK(choice_bad == 0, "%s: %lld differing choices not explained by rounding", tag.c_str(),
        (long long)choice_bad);
}

void test_clip_small(cuda::AwqDevice& dev) {
  const int64_t out = 64, C = 256;
  auto W = make_weights(out, C, 51);
  Dev Wd(W);
  for (int64_t T : {700, 1500}) {  // stride 1 (ts 700) and 2 (ts 750)
    auto x = make_inputs(T, C, uint64_t(52 + T));
    Dev xd(x);
    for (const QuantConfig& cfg : all_configs())
      compare_clip(dev, W, Wd, out, C, x, xd, T, cfg, cfg_name(cfg) + " T " + std::to_string(T), true);
  }
}

void test_clip_errors(cuda::AwqDevice& dev) {
  const int64_t out = 64, C = 256, T = 100;
  auto W = make_weights(out, C, 61);
  auto x = make_inputs(T, C, 62);
  const QuantConfig cfg{4, 128, false, QuantGrid::kAwq};
  AwqOptions opt;
  const cuda::AwqClipOptions gopt{opt.n_grid, opt.max_shrink, opt.clip_sample_tokens, opt.clip_batch_rows};
  std::vector<float> mv(static_cast<size_t>(out * 2));
  auto both = [&](const std::vector<float>& w, const std::vector<float>& xx, const std::string& want) {
    Dev wd(w), xd(xx);
    auto c = awq_search_clip(w.data(), out, C, xx.data(), T, cfg, opt, "clip");
    const auto g =
        dev.search_clip(wd.f(), out, C, xd.f(), T, rule_of(cfg), gopt, mv.data(), nullptr, nullptr);
    CHECK(!c && !g && c.message().find(want) != std::string::npos &&
              g.message().find(want) != std::string::npos,
          "want '%s': cpu '%s' gpu '%s'", want.c_str(), c.message().c_str(), g.message().c_str());
    std::printf("clip error: %s\n", g.message().c_str());
  };
  auto Wn = W;
  Wn[size_t(9 * C + 200)] = NAN;
  Wn[size_t(40 * C + 3)] = INFINITY;
  both(Wn, x, "weight[9, 200]");
  auto xn = x;
  xn[size_t(77 * C + 5)] = -INFINITY;
  both(W, xn, "calibration input[77, 5]");
  auto Wo = W;
  Wo[size_t(50 * C + 130)] = 5e9f;
  Wo[size_t(20 * C + 250)] = 5e9f;  // same group 1, earlier row
  Wo[size_t(60 * C + 5)] = 5e9f;    // group 0: first in the CPU's order (batch, group, row)
  both(Wo, x, "row 60 group 0 shrink 0:");
  Dev wd(W), xd(x);
  const auto g = dev.search_clip(wd.f(), out, C, xd.f(), T, cuda::GptqGridRule{4, 96, false, true}, gopt,
                                 mv.data(), nullptr, nullptr);
  CHECK(!g && g.message().find("group size 96") != std::string::npos, "bad group: %s", g.message().c_str());
  const auto o = dev.search_clip(wd.f(), out, C, xd.f(), T, rule_of(cfg),
                                 cuda::AwqClipOptions{0, 0.5, 512, 64}, mv.data(), nullptr, nullptr);
  CHECK(!o && o.message().find("bad options") != std::string::npos, "bad options: %s", o.message().c_str());
}

// ---- the pipeline's error statistics ---------------------------------------------------------------------

// The CPU formula (quant/layer_ops_cpu.cpp linear_errors, formerly pipeline.cpp fill_errors), line for line.
void cpu_errors(const float* W, const float* Q, const float* H, int64_t out, int64_t in, double* weight_mse,
                double* output_error) {
  double se = 0;
  std::vector<float> diff(static_cast<size_t>(out * in));
  for (int64_t i = 0; i < out * in; ++i) {
    diff[size_t(i)] = W[i] - Q[i];
    se += double(diff[size_t(i)]) * diff[size_t(i)];
  }
  *weight_mse = se / double(out * in);
  std::vector<float> dh(static_cast<size_t>(out * in));
  ops::linear(diff.data(), out, in, in, H, in, nullptr, dh.data(), in);
  double tr = 0;
  for (int64_t i = 0; i < out * in; ++i) tr += double(dh[size_t(i)]) * diff[size_t(i)];
  *output_error = tr / 2.0;
}

void test_quant_errors(cuda::AwqDevice& dev, int64_t out, int64_t in) {
  const int64_t n = 2 * in;
  auto W = make_weights(out, in, uint64_t(71 + out));
  const QuantConfig cfg{4, 128, false, QuantGrid::kGptq};
  auto q = rtn_quantize(W.data(), out, in, cfg, "w");
  Tensor Q = q->dequantize();
  // H = 2/n X^T X from X [n, in] (transposed copy: linear() computes A B^T).
  auto x = make_inputs(n, in, uint64_t(72 + in));
  std::vector<float> xt(static_cast<size_t>(in * n)), H(static_cast<size_t>(in * in));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < in; ++c)
      xt[size_t(c * n + t)] = x[size_t(t * in + c)] * std::sqrt(2.0f / float(n));
  ops::linear(xt.data(), in, n, n, xt.data(), in, nullptr, H.data(), in);
  double cw = 0, co = 0, gw = 0, go = 0;
  const double c0 = now_s();
  cpu_errors(W.data(), Q.f32(), H.data(), out, in, &cw, &co);
  const double c1 = now_s();
  Dev Wd(W), Qd(std::vector<float>(Q.f32(), Q.f32() + out * in)), Hd(H);
  if (!ok_or_report(dev.quant_errors(Wd.f(), Qd.f(), Hd.f(), out, in, &gw, &go, nullptr), "quant_errors"))
    return;
  const double g1 = now_s();
  double gw2 = 0, go2 = -1;
  if (!ok_or_report(dev.quant_errors(Wd.f(), Qd.f(), nullptr, out, in, &gw2, &go2, nullptr), "quant_errors"))
    return;
  // Bounds: sum_i |d_i| (|D| |H|)_i through an f32 GEMM of the absolute values (nonnegative terms: its own
  // rounding is within gamma_in(u32) relative, covered by the factor (1 + 2 gamma)).
  std::vector<float> ad(static_cast<size_t>(out * in)), aH(static_cast<size_t>(in * in)),
      adh(static_cast<size_t>(out * in));
  double sum_abs = 0;
  for (int64_t i = 0; i < out * in; ++i) ad[size_t(i)] = std::fabs(W[size_t(i)] - Q.f32()[i]);
  for (int64_t i = 0; i < in * in; ++i) aH[size_t(i)] = std::fabs(H[size_t(i)]);
  ops::linear(ad.data(), out, in, in, aH.data(), in, nullptr, adh.data(), in);
  for (int64_t i = 0; i < out * in; ++i) sum_abs += double(ad[size_t(i)]) * adh[size_t(i)];
  const double gi = gamma(double(in), kU32);
  const double out_bound =
      2 * gi * sum_abs * (1 + 2 * gi) / 2.0 + 2 * gamma(double(out * in), kU64) * sum_abs;
  const double w_bound = 2 * gamma(double(out * in), kU64) * cw;
  std::printf(
      "quant errors [%lld, %lld]: weight mse cpu %.12g gpu %.12g (|diff| / bound %.3g), output error cpu "
      "%.9g gpu "
      "%.9g (|diff| / bound %.3g)  time cpu %.2f s gpu %.4f s\n",
      (long long)out, (long long)in, cw, gw, std::fabs(gw - cw) / w_bound, co, go,
      std::fabs(go - co) / out_bound, c1 - c0, g1 - c1);
  CHECK(std::fabs(gw - cw) <= w_bound, "weight mse %.17g vs %.17g", gw, cw);
  CHECK(std::fabs(go - co) <= out_bound, "output error %.17g vs %.17g (bound %.3g)", go, co, out_bound);
  CHECK(gw2 == gw && go2 == -1, "without H: mse %.17g, output error touched (%g)", gw2, go2);
}

// ---- 7B shapes ---------------------------------------------------------------------------------------

struct LinearShape {
  int64_t out, in;
  const char* what;
};

void test_7b(cuda::AwqDevice& dev, const LinearShape& sh) {
  const int64_t out = sh.out, C = sh.in;
  const double t0 = now_s();
  auto W = make_weights(out, C, uint64_t(out * 3 + C));
  const int64_t T = 4096;  // stride 8: 512 sampled tokens
  auto x = make_inputs(T, C, uint64_t(C));
  auto xm = awq_mean_abs(x.data(), T, C, "x");
  Dev Wd(W), xd(x);
  std::printf("%s [%lld, %lld] (inputs %.1f s)\n", sh.what, (long long)out, (long long)C, now_s() - t0);
  const auto s = awq_scales_for_alpha(xm->data(), C, 0.5);
  for (const QuantConfig& cfg :
       {QuantConfig{4, 128, false, QuantGrid::kAwq}, QuantConfig{3, 0, true, QuantGrid::kGptq}}) {
    const double t =
        compare_fake_quant(dev, W, Wd, out, C, s, cfg, std::string(sh.what) + " " + cfg_name(cfg), 5);
    std::printf("  fake quant %-18s GPU %.3f ms (best of 5)\n", cfg_name(cfg).c_str(), 1e3 * t);
  }
  const QuantConfig acfg{4, 128, false, QuantGrid::kAwq};
  compare_clip(dev, W, Wd, out, C, x, xd, T, acfg, std::string(sh.what) + " " + cfg_name(acfg), false);
  // GPU-only timings: 512 and 1023 sampled tokens, and a per-channel grid.
  const cuda::AwqClipOptions gopt;
  const int64_t ng = C / 128;
  std::vector<float> mv(static_cast<size_t>(out * ng));
  for (int64_t Tt : {int64_t(4096), int64_t(1023)}) {
    double best = 1e30;
    for (int r = 0; r < 3; ++r) {
      const double a = now_s();
      if (!ok_or_report(
              dev.search_clip(Wd.f(), out, C, xd.f(), Tt, rule_of(acfg), gopt, mv.data(), nullptr, nullptr),
              "clip timing"))
        return;
      best = std::min(best, now_s() - a);
    }
    const int64_t step = std::max<int64_t>(1, Tt / 512), ts = (Tt + step - 1) / step;
    const double flops = 2.0 * double(out) * double(C) * 10 * double(ts);
    std::printf("  clip search %-18s ts %4lld: GPU %.2f ms (best of 3, %.1f TFLOP/s of the f32 error GEMM)\n",
                cfg_name(acfg).c_str(), (long long)ts, 1e3 * best, flops / best * 1e-12);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  std::unique_ptr<cuda::AwqDevice> dev;
  const auto st = cuda::AwqDevice::create(0, &dev);
  if (!st) {
    std::printf("GPU TESTS NOT RUN: %s\n", st.message().c_str());
    return 77;
  }
  std::printf("device: %s\n", dev->name().c_str());
  test_mean_abs(*dev);
  test_scale_columns();
  test_fake_quant_small(*dev);
  test_scale_search(*dev);
  test_mean_squared_diff(*dev, quick ? 1 << 20 : 11008 * 4096);
  test_clip_errors(*dev);
  test_clip_small(*dev);
  test_quant_errors(*dev, 96, 512);
  if (!quick) {
    test_quant_errors(*dev, 4096, 4096);
    for (const LinearShape& s : {LinearShape{4096, 4096, "q_proj"}, LinearShape{11008, 4096, "gate_proj"},
                                 LinearShape{4096, 11008, "down_proj"}})
      test_7b(*dev, s);
  }
  std::printf(g_failures ? "GPU TESTS FAILED: %d\n" : "GPU TESTS PASSED\n", g_failures);
  return g_failures ? 1 : 0;
}
