// W4A16 CPU kernels: packing and its bit order, validation errors, every ISA against the f64 reference
// (direct and panel paths, group sizes, act-order, f32/bf16 activations, bias, strides), determinism.
#include "kernels/cpu/w4a16.h"

#include <cblas.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace qforge::kernels {
namespace {

constexpr double kF32Eps = 1.1920929e-07;  // 2^-23, twice the unit roundoff

struct Problem {
  int64_t out, in, gs;
  std::vector<uint8_t> codes;  // [out, in] kernel-column order
  std::vector<float> scales, zeros;
  std::vector<int32_t> perm;
};

Problem make_problem(int64_t out, int64_t in, int64_t gs, bool with_perm, uint64_t seed,
                     bool integer_zeros = true) {
  std::mt19937_64 rng(seed);
  Problem p{out, in, gs, {}, {}, {}, {}};
  std::uniform_int_distribution<int> code(0, 15);
  std::uniform_real_distribution<float> scale(0.004f, 0.02f), zero(1.0f, 14.0f);
  p.codes.resize(size_t(out * in));
  for (auto& c : p.codes) c = uint8_t(code(rng));
  const int64_t G = in / gs;
  p.scales.resize(size_t(out * G));
  p.zeros.resize(size_t(out * G));
  for (auto& s : p.scales) s = scale(rng);
  // Integer zeros (AWQ/GPTQ) or fractional ones (GGUF Q4_1 stores -m/d).
  for (auto& z : p.zeros) z = integer_zeros ? std::round(zero(rng)) : zero(rng);
  if (with_perm) {
    p.perm.resize(size_t(in));
    std::iota(p.perm.begin(), p.perm.end(), 0);
    std::shuffle(p.perm.begin(), p.perm.end(), rng);
  }
  return p;
}

W4Weight pack(const Problem& p) {
  auto w = w4_pack(p.codes.data(), p.scales.data(), p.zeros.data(), p.out, p.in, p.gs, p.perm, "test.weight");
  EXPECT_TRUE(w.has_value()) << w.message();
  return std::move(w).value();
}

std::vector<CpuIsa> supported_isas() {
  std::vector<CpuIsa> isas;
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16, CpuIsa::kAmx}) {
    if (int(isa) <= int(w4_detected_isa())) isas.push_back(isa);
    else std::printf("[   NOTE   ] %s not supported by this CPU: not run\n", cpu_isa_name(isa));
  }
  return isas;
}

// Restores the process-wide kernel settings a test changes.
class W4Settings {
 public:
  W4Settings() : isa_(w4_active_isa()), threads_(0), panel_(w4_panel_min_m()) {}
  ~W4Settings() {
    w4_set_isa(isa_);
    w4_set_num_threads(threads_);
    w4_set_panel_min_m(panel_);
  }

 private:
  CpuIsa isa_;
  int threads_;
  int64_t panel_;
};

// ---------------------------------------------------------------------------------------------------------

TEST(W4Pack, RoundTripAndBitOrder) {
  Problem p = make_problem(3, 128, 64, false, 1);
  // Hand-computed bytes: row 0, chunk 0, byte 0 = code[0] | code[32] << 4; chunk 1, byte 1 = code[65] | code[97] << 4.
  p.codes[0] = 0x3;
  p.codes[32] = 0xA;
  p.codes[65] = 0x5;
  p.codes[97] = 0xC;
  const W4Weight w = pack(p);
  ASSERT_EQ(w.codes.size(), size_t(3 * 128 / 2));
  EXPECT_EQ(w.codes[0], 0xA3);
  EXPECT_EQ(w.codes[32 + 1], 0xC5);
  EXPECT_EQ(w4_unpack_codes(w), p.codes);
  EXPECT_EQ(w.bytes(), int64_t(3 * 64 + 2 * 3 * 2 + 4 * 3 * 2));  // codes + fp16 scales + f32 zeros
}

// w4_dequantize is (float(code) - zero) * fp16(scale), placed at input column perm[k]: the same f32
// operations here, so the comparison is exact.
TEST(W4Pack, DequantizeMatchesDirectComputation) {
  for (bool with_perm : {false, true}) {
    const Problem p = make_problem(5, 256, 64, with_perm, 2, /*integer_zeros=*/false);
    const W4Weight w = pack(p);
    const std::vector<float> d = w4_dequantize(w);
    const int64_t G = p.in / p.gs;
    for (int64_t o = 0; o < p.out; ++o)
      for (int64_t k = 0; k < p.in; ++k) {
        const float s = fp16_to_f32(f32_to_fp16(p.scales[size_t(o * G + k / p.gs)]));
        const float z = p.zeros[size_t(o * G + k / p.gs)];
        const int64_t col = with_perm ? p.perm[size_t(k)] : k;
        ASSERT_EQ(d[size_t(o * p.in + col)], (float(p.codes[size_t(o * p.in + k)]) - z) * s)
            << "o=" << o << " k=" << k << " perm=" << with_perm;
      }
  }
}

TEST(W4Pack, BadInputsNameTheTensor) {
  auto expect_error = [](const Problem& p, int64_t out, int64_t in, int64_t gs, std::vector<int32_t> perm,
                         const std::string& what) {
    auto w = w4_pack(p.codes.data(), p.scales.data(), p.zeros.data(), out, in, gs, std::move(perm), "blk.3.ffn_up");
    ASSERT_FALSE(w.has_value()) << what;
    EXPECT_NE(w.message().find("blk.3.ffn_up"), std::string::npos) << w.message();
    EXPECT_NE(w.message().find(what), std::string::npos) << w.message();
  };
  const Problem p = make_problem(2, 128, 32, false, 3);
  expect_error(p, 2, 96, 32, {}, "in = 96");               // not a multiple of 64
  expect_error(p, 2, 128, 48, {}, "group_size = 48");       // not a multiple of 32
  expect_error(p, 2, 128, 96, {}, "group_size = 96");       // does not divide in
  expect_error(p, 2, 128, 32, std::vector<int32_t>(5, 0), "perm has 5");
  {
    std::vector<int32_t> perm(128);
    std::iota(perm.begin(), perm.end(), 0);
    perm[7] = 3;  // duplicate
    expect_error(p, 2, 128, 32, perm, "perm[7] = 3");
    perm[7] = 128;  // out of range
    expect_error(p, 2, 128, 32, perm, "perm[7] = 128");
  }
  {
    Problem q = p;
    q.codes[size_t(1 * 128 + 9)] = 16;
    expect_error(q, 2, 128, 32, {}, "code[1, 9] = 16");
  }
  {
    Problem q = p;
    q.scales[5] = std::numeric_limits<float>::quiet_NaN();
    expect_error(q, 2, 128, 32, {}, "scale[1, 1]");
    q.scales[5] = 70000.0f;  // > 65504: inf in fp16
    expect_error(q, 2, 128, 32, {}, "overflows fp16");
    q.scales[5] = 0.01f;
    q.zeros[2] = std::numeric_limits<float>::infinity();
    expect_error(q, 2, 128, 32, {}, "zero[0, 2]");
  }
}

// ---------------------------------------------------------------------------------------------------------
// Kernels vs reference.
//
// Error bound: every kernel computes sum_k x_k * w_k (+ bias) in f32 with w_k = fl(fl(code - zero) * scale)
// (2 roundings), one rounding per product, and some summation tree of depth <= in over the in products and the
// bias; the reference's own f64 -> f32 rounding adds one more. Higham's bound for any such evaluation is
// |y - y_exact| <= gamma_n * sum_k |x_k w_k| with n = in + 5 roundings on the longest path and
// gamma_n = n u / (1 - n u) <= n * eps_f32 (u = eps_f32 / 2). The bound is worst case and holds for the
// sgemm panel path too (whatever order OpenBLAS sums in), so one formula covers every ISA and path.
double gamma_bound(int64_t in) { return double(in + 5) * kF32Eps; }

// abs_dot[m, o] = sum_k |x[m, k]| |W[o, k]| + |bias[o]|, by sgemm on non-negative data (relative error
// <= in * eps / 2, covered by scaling the result by (1 + in * eps)).
std::vector<double> abs_dot(const std::vector<float>& x, int64_t M, int64_t ldx, const W4Weight& w,
                            const std::vector<float>& bias) {
  std::vector<float> ax(size_t(M * w.in)), aw = w4_dequantize(w), ay(size_t(M * w.out));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < w.in; ++k) ax[size_t(m * w.in + k)] = std::fabs(x[size_t(m * ldx + k)]);
  for (auto& v : aw) v = std::fabs(v);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(w.out), int(w.in), 1.0f, ax.data(), int(w.in),
              aw.data(), int(w.in), 0.0f, ay.data(), int(w.out));
  std::vector<double> r(ay.size());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < w.out; ++o)
      r[size_t(m * w.out + o)] =
          double(ay[size_t(m * w.out + o)]) * (1.0 + double(w.in) * kF32Eps) + std::fabs(bias[size_t(o)]);
  return r;
}

// The bf16 kernel (kAvx512Bf16, w4_linear_bf16) computes sum_g scale_g * (sum_k code_k x_k) - sum_g scale_g
// zero_g (sum_k x_k) in f32 with exact products: the same Higham bound over the expanded terms, i.e. with
// |W[o, k]| replaced by (code_k + |zero_g|) * scale_g >= |(code_k - zero_g) * scale_g|, plus one rounding for
// scale_g * zero_g (covered by the + 5).
std::vector<double> abs_dot_split(const std::vector<float>& x, int64_t M, int64_t ldx, const W4Weight& w,
                                  const std::vector<float>& bias) {
  const std::vector<uint8_t> codes = w4_unpack_codes(w);
  const int64_t G = w.n_groups();
  std::vector<double> r(size_t(M * w.out));
  for (int64_t o = 0; o < w.out; ++o)
    for (int64_t m = 0; m < M; ++m) {
      double acc = std::fabs(bias[size_t(o)]);
      for (int64_t k = 0; k < w.in; ++k) {
        const int64_t g = k / w.group_size;
        const double s = fp16_to_f32(w.scales[size_t(o * G + g)]), z = std::fabs(w.zeros[size_t(o * G + g)]);
        const int64_t col = w.perm.empty() ? k : w.perm[size_t(k)];
        acc += (double(codes[size_t(o * w.in + k)]) + z) * s * std::fabs(double(x[size_t(m * ldx + col)]));
      }
      r[size_t(m * w.out + o)] = acc;
    }
  return r;
}

// Which kernel w4_linear_bf16 runs below the panel crossover (see kW4AmxMinM in w4a16.h).
enum class Bf16Kernel { kF32, kDp, kAmx };
Bf16Kernel bf16_kernel(CpuIsa isa, int64_t M) {
  if (isa == CpuIsa::kAmx && M >= kW4AmxMinM) return Bf16Kernel::kAmx;
  if ((isa == CpuIsa::kAmx || isa == CpuIsa::kAvx512Bf16) && M <= kW4DpBf16MaxM) return Bf16Kernel::kDp;
  return Bf16Kernel::kF32;
}

// The AMX kernel (kAmx, w4_linear_bf16 below the panel crossover) multiplies with the weights rounded to bf16
// (round to nearest even of w4_dequantize's f32 value), then sums in f32: its reference is the f64 dot with those
// bf16 weights, and the Higham bound above applies to it unchanged.
std::vector<float> ref_bf16_weights(const std::vector<float>& x, int64_t M, int64_t ldx, const W4Weight& w,
                                    const float* bias, int64_t ldy, float fill) {
  const std::vector<float> d = w4_dequantize(w);
  std::vector<float> y(size_t(M * ldy), fill);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < w.out; ++o) {
      double acc = bias ? double(bias[o]) : 0.0;
      for (int64_t k = 0; k < w.in; ++k)
        acc += double(x[size_t(m * ldx + k)]) * double(bf16_to_f32(f32_to_bf16(d[size_t(o * w.in + k)])));
      y[size_t(m * ldy + o)] = float(acc);
    }
  return y;
}

// max over elements of |y - y_ref| / (gamma_bound * abs_dot); <= 1 means within the bound.
double max_bound_ratio(const std::vector<float>& y, const std::vector<float>& y_ref, int64_t M, int64_t out,
                       int64_t ldy, const std::vector<double>& ad, int64_t in) {
  double worst = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < out; ++o) {
      const double err = std::fabs(double(y[size_t(m * ldy + o)]) - double(y_ref[size_t(m * ldy + o)]));
      const double bound = gamma_bound(in) * ad[size_t(m * out + o)];
      worst = std::max(worst, std::isfinite(err) ? err / bound : std::numeric_limits<double>::infinity());
    }
  return worst;
}

// x [M, ldx] with bf16-representable values, so the f32 and bf16 entry points see the same numbers.
std::vector<float> make_x(int64_t M, int64_t ldx, uint64_t seed, float mean = 0.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(mean, 1.0f);
  std::vector<float> x(size_t(M * ldx));
  for (auto& v : x) v = bf16_to_f32(f32_to_bf16(d(rng)));
  return x;
}

constexpr float kSentinel = -12345.0f;  // y padding between out and ldy must stay untouched

struct Shape {
  int64_t out, in;
};

void check_all_isas(const Shape& s, int64_t gs, bool with_perm, const std::vector<int64_t>& Ms, uint64_t seed) {
  const Problem p = make_problem(s.out, s.in, gs, with_perm, seed, /*integer_zeros=*/seed % 2 == 0);
  const W4Weight w = pack(p);
  const int64_t M_max = *std::max_element(Ms.begin(), Ms.end());
  const int64_t ldx = s.in + 3, ldy = s.out + 5;
  const std::vector<float> x = make_x(M_max, ldx, seed + 100);
  std::vector<uint16_t> xb(x.size());
  for (size_t i = 0; i < x.size(); ++i) xb[i] = f32_to_bf16(x[i]);
  std::vector<float> bias = make_x(1, s.out, seed + 200);
  std::vector<float> y_ref(size_t(M_max * ldy), kSentinel);
  w4_linear_ref(x.data(), M_max, ldx, w, bias.data(), y_ref.data(), ldy);
  const std::vector<double> ad = abs_dot(x, M_max, ldx, w, bias);
  const std::vector<double> ad_split = abs_dot_split(x, M_max, ldx, w, bias);
  const std::vector<float> y_ref16 = ref_bf16_weights(x, M_max, ldx, w, bias.data(), ldy, kSentinel);

  W4Settings restore;
  for (CpuIsa isa : supported_isas()) {
    w4_set_isa(isa);
    for (int64_t M : Ms)
      for (int path = 0; path < 2; ++path) {
        // path 0: the default crossover; path 1: the other path (M = 1 forced through the panel, larger M
        // forced through the direct kernel), for a few M only.
        if (path == 1 && M != 1 && M != 33) continue;
        w4_set_panel_min_m(path == 0 ? 0 : (M == 1 ? 1 : 1000));
        for (int bf16 = 0; bf16 < 2; ++bf16) {
          std::vector<float> y(size_t(M * ldy), kSentinel);
          if (bf16) w4_linear_bf16(xb.data(), M, ldx, w, bias.data(), y.data(), ldy);
          else w4_linear(x.data(), M, ldx, w, bias.data(), y.data(), ldy);
          const std::string ctx = std::string(cpu_isa_name(isa)) + " " + std::to_string(s.out) + "x" +
                                  std::to_string(s.in) + " gs=" + std::to_string(gs) + " perm=" +
                                  std::to_string(with_perm) + " M=" + std::to_string(M) + " path=" +
                                  std::to_string(path) + (bf16 ? " bf16" : " f32");
          const bool direct = (path == 0 && M < 64) || (path == 1 && M == 33);
          const bool amx = bf16 && direct && bf16_kernel(isa, M) == Bf16Kernel::kAmx;
          const bool split = bf16 && direct && bf16_kernel(isa, M) == Bf16Kernel::kDp;
          EXPECT_LE(max_bound_ratio(y, amx ? y_ref16 : y_ref, M, s.out, ldy, split ? ad_split : ad, s.in), 1.0) << ctx;
          for (int64_t m = 0; m < M; ++m)
            for (int64_t o = s.out; o < ldy; ++o) ASSERT_EQ(y[size_t(m * ldy + o)], kSentinel) << ctx;
        }
      }
  }
  w4_set_panel_min_m(0);
}

const std::vector<int64_t> kAllM = {1, 2, 3, 4, 8, 16, 33, 64, 130};

TEST(W4Linear, AllIsasMatchRefSmolLM2Up) {
  uint64_t seed = 10;
  for (int64_t gs : {32, 64, 192, 576})  // 576 = 9 * 64: 128 does not divide it
    for (bool perm : {false, true}) check_all_isas({1536, 576}, gs, perm, kAllM, seed++);
}

TEST(W4Linear, AllIsasMatchRefSmolLM2Down) {
  uint64_t seed = 20;
  for (int64_t gs : {32, 64, 128, 1536})
    for (bool perm : {false, true}) check_all_isas({576, 1536}, gs, perm, kAllM, seed++);
}

TEST(W4Linear, AllIsasMatchRefLongRows) {
  uint64_t seed = 30;
  for (int64_t gs : {32, 64, 128, 4096})
    for (bool perm : {false, true}) check_all_isas({192, 4096}, gs, perm, kAllM, seed++);
}

TEST(W4Linear, AllIsasMatchRefSmallAndOddShapes) {
  uint64_t seed = 40;
  for (int64_t gs : {32, 64})
    for (bool perm : {false, true}) check_all_isas({128, 64}, gs, perm, kAllM, seed++);
  // Odd row counts (row-block tails) and group sizes that are odd multiples of 32 (a chunk's two halves in
  // different groups).
  for (bool perm : {false, true}) {
    check_all_isas({7, 128}, 32, perm, kAllM, seed++);
    check_all_isas({7, 128}, 128, perm, kAllM, seed++);
    check_all_isas({13, 576}, 96, perm, kAllM, seed++);
    check_all_isas({5, 576}, 192, perm, kAllM, seed++);
    check_all_isas({1, 320}, 160, perm, kAllM, seed++);
  }
}

// The bound is tight enough to catch real bugs: ignoring the zero points (positive-mean x makes the missing
// term add up) and a single code off by one each give errors far above it.
TEST(W4Linear, BoundCatchesWrongWeights) {
  W4Settings restore;
  for (CpuIsa isa : supported_isas()) {
    w4_set_isa(isa);
    {
      Problem p = make_problem(576, 1536, 128, true, 50);
      const W4Weight w = pack(p);
      for (auto& z : p.zeros) z = 0.0f;
      const W4Weight w_no_zero = pack(p);
      const int64_t M = 4;
      const std::vector<float> x = make_x(M, p.in, 51, /*mean=*/1.0f);
      const std::vector<float> bias(size_t(p.out), 0.0f);
      std::vector<float> y_ref(size_t(M * p.out)), y(size_t(M * p.out));
      w4_linear_ref(x.data(), M, p.in, w, bias.data(), y_ref.data(), p.out);
      const std::vector<float> y_ref16 = ref_bf16_weights(x, M, p.in, w, bias.data(), p.out, 0.0f);
      std::vector<uint16_t> xb(x.size());
      for (size_t i = 0; i < x.size(); ++i) xb[i] = f32_to_bf16(x[i]);
      for (int bf16 = 0; bf16 < 2; ++bf16) {
        if (bf16) w4_linear_bf16(xb.data(), M, p.in, w_no_zero, bias.data(), y.data(), p.out);
        else w4_linear(x.data(), M, p.in, w_no_zero, bias.data(), y.data(), p.out);
        const Bf16Kernel kernel = bf16 ? bf16_kernel(isa, M) : Bf16Kernel::kF32;
        const std::vector<double> ad = kernel == Bf16Kernel::kDp ? abs_dot_split(x, M, p.in, w, bias)
                                                                 : abs_dot(x, M, p.in, w, bias);
        const std::vector<float>& yr = kernel == Bf16Kernel::kAmx ? y_ref16 : y_ref;
        EXPECT_GT(max_bound_ratio(y, yr, M, p.out, p.out, ad, p.in), 10.0) << cpu_isa_name(isa) << bf16;
        // Every element, not just the worst one.
        for (int64_t i = 0; i < M * p.out; ++i)
          ASSERT_GT(std::fabs(y[size_t(i)] - yr[size_t(i)]), 10.0 * gamma_bound(p.in) * ad[size_t(i)]) << i;
      }
    }
    for (int64_t M : {int64_t(1), kW4AmxMinM}) {  // M = 1 and the smallest M the AMX kernel takes
      Problem p = make_problem(128, 64, 32, false, 52);
      const W4Weight w = pack(p);
      p.codes[size_t(5 * 64 + 17)] ^= 1;
      const W4Weight w_bad = pack(p);
      std::vector<float> x = make_x(M, p.in, 53);
      for (int64_t m = 0; m < M; ++m) x[size_t(m * p.in + 17)] = 1.0f;
      const std::vector<float> bias(size_t(p.out), 0.0f);
      std::vector<float> y_ref(size_t(M * p.out)), y(size_t(M * p.out));
      std::vector<uint16_t> xb(x.size());
      for (size_t i = 0; i < x.size(); ++i) xb[i] = f32_to_bf16(x[i]);
      for (int bf16 = 0; bf16 < 2; ++bf16) {
        if (bf16) w4_linear_bf16(xb.data(), M, p.in, w_bad, bias.data(), y.data(), p.out);
        else w4_linear(x.data(), M, p.in, w_bad, bias.data(), y.data(), p.out);
        const Bf16Kernel kernel = bf16 ? bf16_kernel(isa, M) : Bf16Kernel::kF32;
        if (kernel == Bf16Kernel::kAmx) y_ref = ref_bf16_weights(x, M, p.in, w, bias.data(), p.out, 0.0f);
        else w4_linear_ref(x.data(), M, p.in, w, bias.data(), y_ref.data(), p.out);
        const std::vector<double> ad = kernel == Bf16Kernel::kDp ? abs_dot_split(x, M, p.in, w, bias)
                                                                 : abs_dot(x, M, p.in, w, bias);
        for (int64_t m = 0; m < M; ++m) {
          const size_t i = size_t(m * p.out + 5);
          EXPECT_GT(std::fabs(y[i] - y_ref[i]), 10.0 * gamma_bound(p.in) * ad[i]) << cpu_isa_name(isa) << bf16 << M;
        }
      }
    }
  }
}

// The reference itself against an independent f64 dot with w4_dequantize's weights (each within 2 roundings
// of the exact value the reference uses).
TEST(W4Linear, RefMatchesDequantizedDot) {
  const Problem p = make_problem(64, 256, 64, true, 60, false);
  const W4Weight w = pack(p);
  const int64_t M = 3;
  const std::vector<float> x = make_x(M, p.in, 61), bias = make_x(1, p.out, 62);
  std::vector<float> y_ref(size_t(M * p.out));
  w4_linear_ref(x.data(), M, p.in, w, bias.data(), y_ref.data(), p.out);
  const std::vector<float> d = w4_dequantize(w);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < p.out; ++o) {
      double acc = bias[size_t(o)], abs = std::fabs(bias[size_t(o)]);
      for (int64_t k = 0; k < p.in; ++k) {
        acc += double(x[size_t(m * p.in + k)]) * d[size_t(o * p.in + k)];
        abs += std::fabs(double(x[size_t(m * p.in + k)]) * d[size_t(o * p.in + k)]);
      }
      // 2 f32 roundings per weight + 1 for the reference's final f32 (the f64 sums are ~2^29 tighter).
      EXPECT_NEAR(y_ref[size_t(m * p.out + o)], acc, 3 * kF32Eps * abs) << m << "," << o;
    }
}

// Same bits with 1, 2 and 3 threads, on the direct and the panel path.
TEST(W4Linear, DeterministicAcrossThreadCounts) {
  W4Settings restore;
  const Problem p = make_problem(1536, 576, 64, true, 70);
  const W4Weight w = pack(p);
  const std::vector<float> bias = make_x(1, p.out, 72);
  for (CpuIsa isa : supported_isas()) {
    w4_set_isa(isa);
    for (int64_t M : {1, 4, 7, 16, 64}) {
      const std::vector<float> x = make_x(M, p.in, 71);
      std::vector<uint16_t> xb(x.size());
      for (size_t i = 0; i < x.size(); ++i) xb[i] = f32_to_bf16(x[i]);
      for (int bf16 = 0; bf16 < 2; ++bf16) {
        auto run = [&](std::vector<float>& y) {
          if (bf16) w4_linear_bf16(xb.data(), M, p.in, w, bias.data(), y.data(), p.out);
          else w4_linear(x.data(), M, p.in, w, bias.data(), y.data(), p.out);
        };
        std::vector<float> y1(size_t(M * p.out)), yn(size_t(M * p.out));
        w4_set_num_threads(1);
        run(y1);
        for (int threads : {2, 3}) {
          w4_set_num_threads(threads);
          run(yn);
          EXPECT_EQ(std::memcmp(y1.data(), yn.data(), y1.size() * sizeof(float)), 0)
              << cpu_isa_name(isa) << " M=" << M << " threads=" << threads << " bf16=" << bf16;
        }
      }
    }
  }
}

// QFORGE_CPU_KERNEL is read once per process, so it is checked in child processes running W4Isa.PrintActive.
TEST(W4Isa, PrintActive) { std::printf("w4 active isa=%s\n", cpu_isa_name(w4_active_isa())); }

TEST(W4Isa, EnvVarSelectsKernel) {
  auto child = [](const std::string& value) {
    const std::string cmd = "QFORGE_CPU_KERNEL=" + value + " /proc/" + std::to_string(getpid()) +
                            "/exe --gtest_filter=W4Isa.PrintActive 2>&1";
    std::string output;
    if (FILE* f = popen(cmd.c_str(), "r")) {
      char buf[512];
      while (std::fgets(buf, sizeof buf, f)) output += buf;
      pclose(f);
    }
    return output;
  };
  const std::vector<std::pair<std::string, CpuIsa>> cases = {
      {"ref", CpuIsa::kScalar}, {"avx2", CpuIsa::kAvx2}, {"avx512", CpuIsa::kAvx512},
      {"avx512bf16", CpuIsa::kAvx512Bf16}, {"amx", CpuIsa::kAmx}};
  for (const auto& [value, isa] : cases) {
    const std::string out = child(value);
    // Unsupported: a warning and the detected ISA.
    const CpuIsa want = int(isa) <= int(w4_detected_isa()) ? isa : w4_detected_isa();
    EXPECT_NE(out.find(std::string("w4 active isa=") + cpu_isa_name(want)), std::string::npos) << value << ":\n" << out;
    if (want != isa) {
      EXPECT_NE(out.find("warning"), std::string::npos) << out;
    }
  }
  const std::string out = child("bogus");
  EXPECT_NE(out.find("warning"), std::string::npos) << out;
  EXPECT_NE(out.find(std::string("w4 active isa=") + cpu_isa_name(w4_detected_isa())), std::string::npos) << out;
}

TEST(W4Linear, SetIsaAboveDetectedIsIgnored) {
  W4Settings restore;
  w4_set_isa(CpuIsa::kScalar);
  EXPECT_EQ(w4_active_isa(), CpuIsa::kScalar);
  w4_set_isa(w4_detected_isa());
  EXPECT_EQ(w4_active_isa(), w4_detected_isa());
  if (w4_detected_isa() != CpuIsa::kAmx) {
    w4_set_isa(CpuIsa::kAmx);
    EXPECT_EQ(w4_active_isa(), w4_detected_isa());
  }
}

}  // namespace
}  // namespace qforge::kernels
