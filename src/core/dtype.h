// Element types of dense tensors, and fp16/bf16 conversions.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace qforge {

enum class DType : uint8_t { kF32, kF16, kBF16, kI32, kI8, kU8, kI64 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kI32: return 4;
    case DType::kI8: return 1;
    case DType::kU8: return 1;
    case DType::kI64: return 8;
  }
  return 0;
}

// safetensors spelling ("F32", "BF16", ...).
std::string_view dtype_name(DType t);
bool dtype_from_name(std::string_view name, DType* out);

inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t bits_from_f32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// IEEE half -> float, exact for every input including subnormals, inf and NaN.
inline float fp16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24
    float v = float(mant) * (1.0f / 16777216.0f);
    return (sign ? -v : v);
  }
  if (exp == 31) return f32_from_bits(sign | 0x7f800000u | (mant << 13));
  return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
}

// float -> IEEE half, round to nearest even (overflow to inf, NaN kept quiet).
uint16_t f32_to_fp16(float f);

inline float bf16_to_f32(uint16_t b) { return f32_from_bits(uint32_t(b) << 16); }
// float -> bfloat16, round to nearest even, NaN kept NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = bits_from_f32(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

}  // namespace qforge
