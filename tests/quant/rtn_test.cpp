// RTN on the min/max grid: against python/make_quant_golden.py, plus properties and error paths.
#include "quant/rtn.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "quant/quant_config.h"

namespace qforge::quant {
namespace {

// Unit roundoff of f32 (half an ulp of 1).
constexpr double kF32Unit = 0x1p-24;
// Relative half-ulp of fp16 (10 mantissa bits): rounding a normal value to fp16 moves it by at most this.
constexpr double kFp16RelHalfUlp = 0x1p-11;

nlohmann::json load_golden(const std::string& file) {
  std::ifstream f(std::string(QFORGE_SOURCE_DIR) + "/tests/golden/" + file);
  EXPECT_TRUE(f.good()) << "missing golden " << file << ": run python/make_quant_golden.py";
  std::stringstream ss;
  ss << f.rdbuf();
  return nlohmann::json::parse(ss.str());
}

std::vector<uint8_t> from_hex(const std::string& h) {
  std::vector<uint8_t> out(h.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) out[i] = uint8_t(std::stoi(h.substr(2 * i, 2), nullptr, 16));
  return out;
}

// Little-endian float32 hex (the golden's encoding; this host is little-endian like every x86/ARM target).
std::vector<float> f32_from_hex(const std::string& h) {
  const auto b = from_hex(h);
  std::vector<float> out(b.size() / 4);
  std::memcpy(out.data(), b.data(), b.size());
  return out;
}

bool is_fp16_value(float x) {
  return fp16_to_f32(f32_to_fp16(x)) == x;
}

std::vector<float> random_weight(int64_t rows, int64_t cols, uint64_t seed, float sd = 0.02f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> w(size_t(rows * cols));
  for (auto& x : w) x = d(rng);
  return w;
}

// The reference mirrors the f32 operation order of the C++ (one subtraction and one division for the
// scale, then fp16 rounding; one division and one rounding per code), and every one of those is
// correctly rounded IEEE arithmetic, so codes, scales and zeros must agree exactly: there is no value
// near a rounding boundary that the two could resolve differently. 84 configurations x 1024 weights.
TEST(Rtn, MatchesGoldenExactlyForAllBitWidthsGridsAndGroupSizes) {
  const auto g = load_golden("quant_rtn.json");
  const int64_t out = g["out"], in = g["inp"];
  const auto W = f32_from_hex(g["weight"]);
  ASSERT_EQ(int64_t(W.size()), out * in);
  int cases = 0;
  for (const auto& c : g["cases"]) {
    QuantConfig cfg;
    cfg.bits = c["bits"];
    cfg.group_size = c["group_size"];
    cfg.sym = c["sym"];
    cfg.grid = c["grid"] == "gptq" ? QuantGrid::kGptq : QuantGrid::kAwq;
    const std::string what = fmt::format("grid {} sym {} bits {} group {}", std::string(c["grid"]), cfg.sym,
                                         cfg.bits, cfg.group_size);
    auto q = rtn_quantize(W.data(), out, in, cfg, "golden");
    ASSERT_TRUE(q) << what << ": " << q.message();
    const auto codes = from_hex(c["codes"]);
    const auto scales = f32_from_hex(c["scales"]);
    const std::vector<int> zeros = c["zeros"];
    const int64_t ng = quant_n_groups(cfg, in);
    ASSERT_EQ(q->scales.shape(), (Shape{out, ng})) << what;
    ASSERT_EQ(int64_t(scales.size()), out * ng) << what;
    int code_mismatch = 0;
    for (size_t i = 0; i < codes.size(); ++i) code_mismatch += q->qweight[i] != codes[i];
    EXPECT_EQ(code_mismatch, 0) << what;
    for (int64_t i = 0; i < out * ng; ++i) {
      EXPECT_EQ(q->scales.f32()[i], scales[size_t(i)]) << what << " scale " << i;
      EXPECT_TRUE(is_fp16_value(q->scales.f32()[i])) << what << " scale " << i;
      EXPECT_GT(q->scales.f32()[i], 0.0f) << what << " scale " << i;
      EXPECT_EQ(q->zeros.f32()[i], float(zeros[size_t(i)])) << what << " zero " << i;
    }
    for (int64_t c2 = 0; c2 < in; ++c2)
      EXPECT_EQ(q->g_idx[size_t(c2)], cfg.group_size ? c2 / cfg.group_size : 0);
    ++cases;
  }
  EXPECT_EQ(cases, 2 * 2 * 7 * 3);
}

// dequantize() is (q - zero) * scale through g_idx, one f32 rounding: exact against the same formula.
TEST(Rtn, DequantizeIsCodeMinusZeroTimesScale) {
  const auto W = random_weight(5, 128, 7);
  QuantConfig cfg{.bits = 3, .group_size = 32, .sym = false};
  auto q = rtn_quantize(W.data(), 5, 128, cfg, "t");
  ASSERT_TRUE(q) << q.message();
  const Tensor d = q->dequantize();
  ASSERT_EQ(d.shape(), (Shape{5, 128}));
  for (int64_t r = 0; r < 5; ++r)
    for (int64_t c = 0; c < 128; ++c) {
      const int64_t g = r * 4 + c / 32;
      EXPECT_EQ(d.f32()[r * 128 + c],
                (float(q->qweight[size_t(r * 128 + c)]) - q->zeros.f32()[g]) * q->scales.f32()[g]);
    }
}

// On smooth data every weight is inside its group's grid, so its error is at most half a step: s/2, plus
// the f32 rounding of w / s (u |w|). Only the group extremes can sit outside: the fp16 scale may be below
// the exact (max - min) / maxq by a relative half-ulp of fp16, which stretches the range by up to
// maxq * 2^-11 steps, so for them the bound is s (1/2 + maxq 2^-11). The data crosses 0 within every
// group (a 32-sample window spans more than a period): the AWQ grid clips groups that do not (see
// GridConventionsDifferOnOneSidedGroups).
TEST(Rtn, EightBitErrorIsAtMostHalfAStepOnSmoothData) {
  const int64_t out = 4, in = 256;
  std::vector<float> W(size_t(out * in));
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c)
      W[size_t(r * in + c)] =
          0.05f * std::sin(0.3f * float(c) + float(r)) + 0.01f * std::cos(0.07f * float(c));
  for (QuantGrid grid : {QuantGrid::kGptq, QuantGrid::kAwq})
    for (bool sym : {false, true})
      for (int64_t gs : {int64_t(32), int64_t(128), int64_t(0)}) {
        QuantConfig cfg{.bits = 8, .group_size = gs, .sym = sym, .grid = grid};
        auto q = rtn_quantize(W.data(), out, in, cfg, "smooth");
        ASSERT_TRUE(q) << q.message();
        const Tensor d = q->dequantize();
        const int maxq = quant_maxq(8);
        int over_half = 0;
        for (int64_t r = 0; r < out; ++r)
          for (int64_t c = 0; c < in; ++c) {
            const int64_t g = r * quant_n_groups(cfg, in) + q->g_idx[size_t(c)];
            const double s = q->scales.f32()[g];
            const double w = W[size_t(r * in + c)];
            const double e = std::fabs(w - d.f32()[r * in + c]);
            const double slop = kF32Unit * std::fabs(w) * 2;
            EXPECT_LE(e, s * (0.5 + maxq * kFp16RelHalfUlp) + slop) << r << "," << c;
            over_half += e > 0.5 * s + slop;
          }
        // At most the two extremes of each group can exceed s/2.
        EXPECT_LE(over_half, 2 * out * quant_n_groups(cfg, in));
      }
}

// Degenerate groups: all zero -> GPTQ grid [-1, 1] (nonzero scale) and zeros dequantize to exactly 0;
// a constant group on the GPTQ grid (range [0, c], or [-c, c] sym) is reproduced within a half step
// (plus the fp16 stretch, see EightBitErrorIsAtMostHalfAStepOnSmoothData).
TEST(Rtn, DegenerateGroupsHaveValidScales) {
  std::vector<float> W(64, 0.0f);
  for (int i = 32; i < 64; ++i) W[size_t(i)] = 0.375f;
  for (bool sym : {false, true}) {
    QuantConfig cfg{.bits = 4, .group_size = 32, .sym = sym};
    auto q = rtn_quantize(W.data(), 1, 64, cfg, "degenerate");
    ASSERT_TRUE(q) << q.message();
    const Tensor d = q->dequantize();
    EXPECT_GT(q->scales.f32()[0], 0.0f);
    EXPECT_EQ(q->scales.f32()[0], fp16_to_f32(f32_to_fp16(2.0f / 15.0f)));  // [-1, 1] / maxq
    for (int i = 0; i < 32; ++i) EXPECT_EQ(d.f32()[i], 0.0f) << i;
    for (int i = 32; i < 64; ++i)
      EXPECT_LE(std::fabs(d.f32()[i] - 0.375f), q->scales.f32()[1] * (0.5 + 15 * kFp16RelHalfUlp)) << i;
  }
  // AWQ grid: an all-zero group gets the 1e-5 floor, still nonzero, and still dequantizes to 0.
  QuantConfig awq{.bits = 4, .group_size = 32, .sym = false, .grid = QuantGrid::kAwq};
  auto q = rtn_quantize(W.data(), 1, 64, awq, "degenerate");
  ASSERT_TRUE(q) << q.message();
  EXPECT_GT(q->scales.f32()[0], 0.0f);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(q->dequantize().f32()[i], 0.0f) << i;
}

// The two grids differ on a group that does not straddle 0: kGptq widens the range to include 0, kAwq
// keeps [min, max] and clamps the zero point to 0 (so values near max clip).
TEST(Rtn, GridConventionsDifferOnOneSidedGroups) {
  std::vector<float> W(32);
  for (int i = 0; i < 32; ++i) W[size_t(i)] = 1.0f + float(i) / 31.0f;  // [1, 2]
  QuantConfig gptq{.bits = 4, .group_size = 32, .sym = false, .grid = QuantGrid::kGptq};
  QuantConfig awq = gptq;
  awq.grid = QuantGrid::kAwq;
  auto qg = rtn_quantize(W.data(), 1, 32, gptq, "g");
  auto qa = rtn_quantize(W.data(), 1, 32, awq, "a");
  ASSERT_TRUE(qg && qa);
  EXPECT_EQ(qg->scales.f32()[0], fp16_to_f32(f32_to_fp16(2.0f / 15.0f)));
  EXPECT_EQ(qg->zeros.f32()[0], 0.0f);
  EXPECT_EQ(qa->scales.f32()[0], fp16_to_f32(f32_to_fp16(1.0f / 15.0f)));
  EXPECT_EQ(qa->zeros.f32()[0], 0.0f);  // -round(1 / s) = -15, clamped
  EXPECT_EQ(qa->qweight[31], 15);       // 2.0 clips to 15 * s = 1.0
}

// Symmetric means [-amax, amax] even when the group is all nonnegative (the reference's find_params would
// leave xmin = 0 there and clip everything above ~amax/2). Error stays within a half step of the
// symmetric grid, s = 2 amax / maxq, whose top level is amax - s/2.
TEST(Rtn, SymmetricGridOnNonnegativeGroupCoversItsMaximum) {
  std::vector<float> W(32);
  for (int i = 0; i < 32; ++i) W[size_t(i)] = float(i) / 31.0f;  // [0, 1]
  QuantConfig cfg{.bits = 4, .group_size = 32, .sym = true};
  auto q = rtn_quantize(W.data(), 1, 32, cfg, "sym");
  ASSERT_TRUE(q) << q.message();
  const float s = q->scales.f32()[0];
  EXPECT_EQ(s, fp16_to_f32(f32_to_fp16(2.0f / 15.0f)));
  EXPECT_EQ(q->zeros.f32()[0], 8.0f);
  const Tensor d = q->dequantize();
  for (int i = 0; i < 32; ++i)
    EXPECT_LE(std::fabs(d.f32()[i] - W[size_t(i)]), s * (0.5 + 15 * kFp16RelHalfUlp)) << i;
}

TEST(Rtn, InvalidBitWidthsAreErrors) {
  const auto W = random_weight(2, 64, 1);
  for (int bits : {1, 9, 0, 16}) {
    QuantConfig cfg{.bits = bits, .group_size = 32};
    auto q = rtn_quantize(W.data(), 2, 64, cfg, "model.layers.3.self_attn.q_proj");
    ASSERT_FALSE(q) << bits;
    EXPECT_EQ(q.message(),
              fmt::format("model.layers.3.self_attn.q_proj: {} bits is not supported; valid: 2..8", bits));
  }
}

TEST(Rtn, GroupSizeNotDividingInFeaturesNamesLayerAndValidSizes) {
  QuantConfig cfg{.bits = 4, .group_size = 128};
  EXPECT_EQ(validate_quant_config(cfg, 576, "model.layers.0.mlp.down_proj").message(),
            "model.layers.0.mlp.down_proj: group size 128 does not divide in_features 576; valid: 32, 64, "
            "per-channel (0)");
  EXPECT_EQ(validate_quant_config(cfg, 100, "x").message(),
            "x: group size 128 does not divide in_features 100; valid: per-channel (0)");
  cfg.group_size = 48;
  EXPECT_EQ(validate_quant_config(cfg, 576, "x").message(),
            "x: group size 48 is not supported; valid group sizes: 32, 64, 128, per-channel (0)");
  cfg.group_size = 0;
  EXPECT_TRUE(validate_quant_config(cfg, 576, "x").is_ok());
  cfg.group_size = 64;
  EXPECT_TRUE(validate_quant_config(cfg, 576, "x").is_ok());
  const auto W = random_weight(2, 96, 1);
  cfg.group_size = 64;
  auto q = rtn_quantize(W.data(), 2, 96, cfg, "l");
  ASSERT_FALSE(q);
  EXPECT_EQ(q.message(), "l: group size 64 does not divide in_features 96; valid: 32, per-channel (0)");
}

TEST(Rtn, NonFiniteWeightIsAnErrorNamingRowAndColumn) {
  auto W = random_weight(3, 64, 2);
  W[size_t(2 * 64 + 17)] = std::nanf("");
  QuantConfig cfg{.bits = 4, .group_size = 32};
  auto q = rtn_quantize(W.data(), 3, 64, cfg, "model.layers.1.mlp.up_proj");
  ASSERT_FALSE(q);
  EXPECT_EQ(q.message(), "model.layers.1.mlp.up_proj: weight[2, 17] is nan");
  W[size_t(2 * 64 + 17)] = 0;
  W[5] = -INFINITY;
  q = rtn_quantize(W.data(), 3, 64, cfg, "l");
  ASSERT_FALSE(q);
  EXPECT_EQ(q.message(), "l: weight[0, 5] is -inf");
}

// A scale beyond fp16 cannot be stored: an error naming the row and group, not an inf scale.
TEST(Rtn, ScaleOverflowingFp16IsAnError) {
  std::vector<float> W(64, 0.0f);
  W[40] = 2e6f;  // range / 15 > 65504
  QuantConfig cfg{.bits = 4, .group_size = 32};
  auto q = rtn_quantize(W.data(), 1, 64, cfg, "big");
  ASSERT_FALSE(q);
  EXPECT_NE(q.message().find("big: row 0 group 1: scale"), std::string::npos) << q.message();
  EXPECT_NE(q.message().find("overflows fp16"), std::string::npos) << q.message();
}

// A tiny group whose scale underflows fp16 gets the smallest subnormal, never 0 (which would divide by 0).
TEST(Rtn, ScaleUnderflowingFp16IsFlooredToSmallestSubnormal) {
  std::vector<float> W(32, 0.0f);
  W[3] = 1e-9f;
  QuantConfig cfg{.bits = 4, .group_size = 32};
  auto q = rtn_quantize(W.data(), 1, 32, cfg, "tiny");
  ASSERT_TRUE(q) << q.message();
  EXPECT_EQ(q->scales.f32()[0], std::ldexp(1.0f, -24));
  EXPECT_EQ(q->dequantize().f32()[0], 0.0f);
}

}  // namespace
}  // namespace qforge::quant
