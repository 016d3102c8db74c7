#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"
#include "core/tensor.h"

namespace qforge {

// Every finite half value converts to float and back to itself (the conversion is exact both ways).
TEST(DType, Fp16RoundTripIsExactForAllHalfValues) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = fp16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(fp16_to_f32(f32_to_fp16(f)))) << h;
      continue;
    }
    EXPECT_EQ(f32_to_fp16(f), uint16_t(h)) << "half bits " << h;
  }
}

// Round to nearest even: halfway between two halves goes to the even mantissa.
TEST(DType, Fp16RoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0).
  EXPECT_EQ(f32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  // 1 + 3*2^-11 is halfway between 1+2^-10 (odd) and 1+2^-9 (even).
  EXPECT_EQ(f32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(f32_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_fp16(65520.0f), 0x7c00);  // rounds to inf
  EXPECT_EQ(f32_to_fp16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);  // tie to even (0)
  EXPECT_EQ(f32_to_fp16(std::ldexp(1.5f, -25)), 0x0001);
}

TEST(DType, Bf16RoundTripAndRounding) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    float f = bf16_to_f32(uint16_t(b));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_bf16(f), uint16_t(b));
  }
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie -> even
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
}

TEST(Tensor, ConvertsBetweenFloatTypes) {
  Tensor t(DType::kF32, {2, 3});
  for (int i = 0; i < 6; ++i) t.f32()[i] = float(i) * 0.5f - 1.0f;
  Tensor h(DType::kF16, {2, 3});
  convert_from_f32(t.f32(), 6, DType::kF16, h.data<uint16_t>());
  float back[6];
  convert_to_f32(h.view(), back);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(back[i], t.f32()[i]);  // multiples of 0.5 are exact in fp16
  EXPECT_EQ(h.shape().str(), "[2, 3]");
}

}  // namespace qforge
