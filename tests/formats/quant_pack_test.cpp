#include "formats/quant_pack.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "core/dtype.h"

namespace qforge::formats {
namespace {

// Random 4-bit codes, fp16-exact scales and integer zeros; act_order permutes the groups of the columns.
quant::QuantizedLinear random_linear(int64_t out, int64_t in, int64_t group_size, bool act_order, uint64_t seed,
                                     int zero_lo = 0) {
  std::mt19937_64 rng(seed);
  quant::QuantizedLinear q;
  q.out = out;
  q.in = in;
  q.cfg.bits = 4;
  q.cfg.group_size = group_size == in ? 0 : group_size;
  const int64_t G = in / group_size;
  q.qweight.resize(size_t(out * in));
  for (auto& c : q.qweight) c = uint8_t(rng() % 16);
  q.scales = Tensor(DType::kF32, {out, G});
  q.zeros = Tensor(DType::kF32, {out, G});
  for (int64_t i = 0; i < out * G; ++i) {
    q.scales.f32()[i] = fp16_to_f32(f32_to_fp16(std::uniform_real_distribution<float>(1e-3f, 0.1f)(rng)));
    q.zeros.f32()[i] = float(zero_lo + int(rng() % uint64_t(16 - zero_lo)));
  }
  q.g_idx.resize(size_t(in));
  for (int64_t i = 0; i < in; ++i) q.g_idx[size_t(i)] = int32_t(i / group_size);
  if (act_order) {
    std::vector<int32_t> perm(static_cast<size_t>(in), 0);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    // GPTQ's desc_act: the k-th column in quantization order belongs to group k / group_size.
    for (int64_t k = 0; k < in; ++k) q.g_idx[size_t(perm[size_t(k)])] = int32_t(k / group_size);
  }
  return q;
}

void expect_same(const quant::QuantizedLinear& a, const quant::QuantizedLinear& b) {
  ASSERT_EQ(a.out, b.out);
  ASSERT_EQ(a.in, b.in);
  EXPECT_EQ(a.qweight, b.qweight);
  EXPECT_EQ(a.g_idx, b.g_idx);
  ASSERT_EQ(a.scales.numel(), b.scales.numel());
  for (int64_t i = 0; i < a.scales.numel(); ++i) {
    EXPECT_EQ(a.scales.f32()[i], b.scales.f32()[i]) << i;
    EXPECT_EQ(a.zeros.f32()[i], b.zeros.f32()[i]) << i;
  }
}

TEST(QuantPack, AwqGemmBitOrderMatchesAutoAwq) {
  // One input row, 8 output columns with codes 0..7: nibble i holds column kAwqOrder[i].
  quant::QuantizedLinear q = random_linear(8, 32, 32, false, 1);
  for (int64_t o = 0; o < 8; ++o) q.qweight[size_t(o * 32 + 0)] = uint8_t(o);
  auto p = pack_linear(q, PackedFormat::kAwqGemm, "t");
  ASSERT_TRUE(p) << p.message();
  ASSERT_EQ(p->qweight.size(), 32u);  // [in=32, out/8=1]
  // Column order 0,2,4,6,1,3,5,7 -> nibbles 0,2,4,6,1,3,5,7 from the lowest: 0x75316420.
  EXPECT_EQ(uint32_t(p->qweight[0]), 0x75316420u);
}

TEST(QuantPack, GptqBitOrderIsSequentialAlongTheInput) {
  quant::QuantizedLinear q = random_linear(8, 32, 32, false, 2, 1);
  for (int64_t i = 0; i < 8; ++i) q.qweight[size_t(0 * 32 + i)] = uint8_t(15 - i);  // row 0, inputs 0..7
  for (int64_t o = 0; o < 8; ++o) q.zeros.f32()[o] = float(o + 1);               // group 0
  auto v1 = pack_linear(q, PackedFormat::kGptqV1, "t");
  auto v2 = pack_linear(q, PackedFormat::kGptqV2, "t");
  ASSERT_TRUE(v1 && v2);
  EXPECT_EQ(uint32_t(v1->qweight[0]), 0x89ABCDEFu);  // qweight[0][out 0]: input i in nibble i
  EXPECT_EQ(uint32_t(v2->qzeros[0]), 0x87654321u);   // zeros 1..8 of columns 0..7
  EXPECT_EQ(uint32_t(v1->qzeros[0]), 0x76543210u);   // v1 stores zero - 1
}

TEST(QuantPack, RoundTripsEveryFormat) {
  struct Case {
    PackedFormat f;
    int64_t out, in, g;
    bool act_order;
  };
  const Case cases[] = {
      {PackedFormat::kAwqGemm, 64, 128, 32, false}, {PackedFormat::kAwqGemm, 24, 576, 64, false},
      {PackedFormat::kGptqV1, 64, 128, 128, false}, {PackedFormat::kGptqV1, 16, 256, 64, true},
      {PackedFormat::kGptqV2, 32, 192, 64, true},   {PackedFormat::kGptqV2, 8, 64, 64, false},
      {PackedFormat::kGptqV1, 16, 96, 96, false},  // per-channel
  };
  uint64_t seed = 10;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << packed_format_name(c.f) << " " << c.out << "x" << c.in << " g" << c.g);
    quant::QuantizedLinear q = random_linear(c.out, c.in, c.g, c.act_order, seed++);
    auto p = pack_linear(q, c.f, "t");
    ASSERT_TRUE(p) << p.message();
    auto back = unpack_linear(*p, c.f, "t");
    ASSERT_TRUE(back) << back.message();
    expect_same(q, *back);
  }
}

TEST(QuantPack, GptqV1WrapsZeroPointZeroAsGptqModelReadsIt) {
  quant::QuantizedLinear q = random_linear(8, 32, 32, false, 3);
  q.zeros.f32()[0] = 0.0f;
  auto p = pack_linear(q, PackedFormat::kGptqV1, "t");
  ASSERT_TRUE(p);
  EXPECT_EQ(uint32_t(p->qzeros[0]) & 0xFu, 0xFu);
  auto back = unpack_linear(*p, PackedFormat::kGptqV1, "t");
  ASSERT_TRUE(back);
  EXPECT_EQ(back->zeros.f32()[0], 0.0f);
}

TEST(QuantPack, AwqRejectsActOrderAndOtherBitWidths) {
  auto p = pack_linear(random_linear(8, 64, 32, true, 4), PackedFormat::kAwqGemm, "model.layers.0.mlp.up_proj");
  ASSERT_FALSE(p);
  EXPECT_NE(p.message().find("model.layers.0.mlp.up_proj"), std::string::npos) << p.message();
  EXPECT_NE(p.message().find("g_idx"), std::string::npos) << p.message();
  quant::QuantizedLinear q3 = random_linear(8, 64, 32, false, 5);
  q3.cfg.bits = 3;
  auto p3 = pack_linear(q3, PackedFormat::kGptqV2, "L");
  ASSERT_FALSE(p3);
  EXPECT_NE(p3.message().find("3 bits"), std::string::npos) << p3.message();
  auto p7 = pack_linear(random_linear(12, 64, 32, false, 6), PackedFormat::kGptqV2, "L");
  ASSERT_FALSE(p7);
  EXPECT_NE(p7.message().find("multiple of 8"), std::string::npos) << p7.message();
}

TEST(QuantPack, UnpackNamesTheTensorWhoseShapeDisagrees) {
  auto p = pack_linear(random_linear(16, 128, 32, false, 7), PackedFormat::kGptqV1, "x");
  ASSERT_TRUE(p);
  PackedLinear bad = *p;
  bad.qzeros.pop_back();
  auto r = unpack_linear(bad, PackedFormat::kGptqV1, "model.layers.1.self_attn.k_proj");
  ASSERT_FALSE(r);
  EXPECT_NE(r.message().find("model.layers.1.self_attn.k_proj.qzeros"), std::string::npos) << r.message();
  bad = *p;
  bad.scales.resize(bad.scales.size() / 2);
  r = unpack_linear(bad, PackedFormat::kGptqV1, "L");
  ASSERT_FALSE(r);
  EXPECT_NE(r.message().find("L.scales"), std::string::npos) << r.message();
  bad = *p;
  bad.g_idx[5] = 99;
  r = unpack_linear(bad, PackedFormat::kGptqV1, "L");
  ASSERT_FALSE(r);
  EXPECT_NE(r.message().find("L.g_idx[5] = 99"), std::string::npos) << r.message();
  bad = *p;
  bad.group_size = 48;  // does not divide 128
  r = unpack_linear(bad, PackedFormat::kGptqV1, "L");
  ASSERT_FALSE(r);
  EXPECT_NE(r.message().find("group size 48"), std::string::npos) << r.message();
}

TEST(QuantPack, ParsesQuantizationConfigsAsVllmWritesThem) {
  auto awq = parse_quantization_config(
      R"({"quant_method":"awq","bits":4,"group_size":128,"zero_point":true,"version":"GEMM"})", "c.json");
  ASSERT_TRUE(awq) << awq.message();
  EXPECT_EQ(awq->format, PackedFormat::kAwqGemm);
  EXPECT_EQ(awq->group_size, 128);
  auto gptq = parse_quantization_config(
      R"({"quant_method":"gptq","bits":4,"group_size":-1,"desc_act":true,"sym":true})", "c.json");
  ASSERT_TRUE(gptq) << gptq.message();
  EXPECT_EQ(gptq->format, PackedFormat::kGptqV1);
  EXPECT_EQ(gptq->group_size, -1);
  EXPECT_TRUE(gptq->desc_act);
  auto v2 = parse_quantization_config(
      R"({"quant_method":"gptq","bits":4,"group_size":64,"checkpoint_format":"gptq_v2","sym":false})", "c.json");
  ASSERT_TRUE(v2);
  EXPECT_EQ(v2->format, PackedFormat::kGptqV2);
  // What we write parses back.
  QuantizationConfig mine;
  mine.format = PackedFormat::kGptqV2;
  mine.group_size = 32;
  mine.desc_act = true;
  auto again = parse_quantization_config(quantization_config_json(mine, true, 0.01), "x");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->format, PackedFormat::kGptqV2);
  EXPECT_EQ(again->group_size, 32);
  EXPECT_TRUE(again->desc_act);

  struct Bad {
    const char* json;
    const char* says;
  };
  const Bad bad[] = {
      {R"({"bits":4,"group_size":128})", "quant_method is missing"},
      {R"({"quant_method":"awq","bits":3,"group_size":128})", "bits is 3"},
      {R"({"quant_method":"awq","bits":4,"group_size":128,"version":"gemv"})", "version 'gemv'"},
      {R"({"quant_method":"gptq","bits":4,"group_size":100})", "group_size 100"},
      {R"({"quant_method":"gptq","bits":4})", "group_size is missing"},
      {R"({"quant_method":"gptq","bits":"4","group_size":128})", "bits must be an integer"},
      {R"({"quant_method":"squeezellm","bits":4,"group_size":128})", "'squeezellm' is not supported"},
      {R"([1,2])", "must be an object"},
      {R"({"quant_method":)", "not valid JSON"},
  };
  for (const Bad& b : bad) {
    auto r = parse_quantization_config(b.json, "dir/config.json");
    ASSERT_FALSE(r) << b.json;
    EXPECT_NE(r.message().find(b.says), std::string::npos) << r.message();
    EXPECT_NE(r.message().find("dir/config.json"), std::string::npos) << r.message();
  }
}

TEST(QuantPack, RuntimeRepackUndoesActOrderExactly) {
  for (bool act : {false, true}) {
    quant::QuantizedLinear q = random_linear(16, 256, 64, act, 20 + act);
    auto w4 = to_w4_weight(q, "L");
    ASSERT_TRUE(w4) << w4.message();
    EXPECT_EQ(w4->perm.empty(), !act);
    const std::vector<float> got = kernels::w4_dequantize(*w4);
    const Tensor want = q.dequantize();
    ASSERT_EQ(int64_t(got.size()), want.numel());
    // Both compute (code - zero) * scale in f32 from the same fp16-exact scale and integer zero.
    for (int64_t i = 0; i < want.numel(); ++i) ASSERT_EQ(got[size_t(i)], want.f32()[i]) << i;
  }
  // A g_idx that gives one group too many columns cannot be made contiguous.
  quant::QuantizedLinear q = random_linear(8, 128, 64, true, 30);
  q.g_idx[0] = 1;
  q.g_idx[std::find(q.g_idx.begin() + 1, q.g_idx.end(), 0) - q.g_idx.begin()] = 1;
  auto w4 = to_w4_weight(q, "model.layers.2.mlp.down_proj");
  ASSERT_FALSE(w4);
  EXPECT_NE(w4.message().find("model.layers.2.mlp.down_proj"), std::string::npos) << w4.message();
}

}  // namespace
}  // namespace qforge::formats
