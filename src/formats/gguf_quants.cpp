#include "formats/gguf_quants.h"

#include <cmath>
#include <cstring>

#include "core/dtype.h"

namespace qforge::gguf {
namespace {

// ---------------------------------------------------------------------------------------------
// Block formats (ggml, little-endian). Fields stored as fp16 are kept as raw uint16_t bits.
// Facts checked against ggml-quants.c dequantize_row_* and gguf-py quants.py.
//
// Exactness: in every format below each product (d * q, d * sc * q, dmin * m) is exact in f32
// (fp16 scale: 11 significant bits; quant/scale integers: at most 13 bits together), so the only
// rounding is the final add/subtract. The results are therefore bitwise identical to ggml and
// gguf-py whatever the evaluation order or FMA contraction.
// ---------------------------------------------------------------------------------------------

constexpr int kQK = 32;    // elements per block of the *_0 / *_1 formats
constexpr int kQKK = 256;  // elements per super-block of the K formats

// Q4_0: 32 elements. qs[j] low nibble = element j, high nibble = element j + 16 (j < 16).
// value = (q - 8) * d.
struct BlockQ4_0 {
  uint16_t d;           // fp16 scale
  uint8_t qs[kQK / 2];  // [16] two 4-bit quants per byte
};
static_assert(sizeof(BlockQ4_0) == 18);

// Q4_1: as Q4_0 with an offset: value = q * d + m, q in [0, 15].
struct BlockQ4_1 {
  uint16_t d;           // fp16 scale
  uint16_t m;           // fp16 minimum (offset)
  uint8_t qs[kQK / 2];  // [16] low nibble element j, high nibble element j + 16
};
static_assert(sizeof(BlockQ4_1) == 20);

// Q8_0: 32 elements, value = q * d.
struct BlockQ8_0 {
  uint16_t d;      // fp16 scale
  int8_t qs[kQK];  // [32] one int8 per element
};
static_assert(sizeof(BlockQ8_0) == 34);

// Q4_K: 256 elements in 8 sub-blocks of 32. Sub-block s has a 6-bit scale sc[s] and 6-bit min m[s]:
//   value = d * sc[s] * q - dmin * m[s],   q the 4-bit quant.
// scales[12] packs the 8 (sc, m) pairs (bit 7 = MSB):
//   s < 4:  sc = scales[s] & 63,                             m = scales[s + 4] & 63
//   s >= 4: sc = (scales[s + 4] & 15) | (scales[s - 4] >> 6) << 4,
//           m  = (scales[s + 4] >> 4) | (scales[s] >> 6) << 4
// qs[128] is 4 chunks of 32 bytes; chunk c holds sub-block 2c in the low nibbles and sub-block
// 2c + 1 in the high nibbles (byte l of the chunk: element l of each).
struct BlockQ4_K {
  uint16_t d;            // fp16 super-block scale for the 6-bit scales
  uint16_t dmin;         // fp16 super-block scale for the 6-bit mins
  uint8_t scales[12];    // 8 scales + 8 mins, 6 bits each (layout above)
  uint8_t qs[kQKK / 2];  // [128] 4-bit quants
};
static_assert(sizeof(BlockQ4_K) == 144);

// Q6_K: 256 elements in 16 sub-blocks of 16, value = d * scales[s] * (q - 32), q 6 bits.
// Two halves of 128 elements (h = 0, 1) use ql[64h .. 64h+63], qh[32h .. 32h+31], scales[8h ..].
// Within a half, for l in [0, 32):
//   element l      : low nibble of ql[l],      bits 0-1 of qh[l]
//   element l + 32 : low nibble of ql[l + 32], bits 2-3 of qh[l]
//   element l + 64 : high nibble of ql[l],     bits 4-5 of qh[l]
//   element l + 96 : high nibble of ql[l + 32], bits 6-7 of qh[l]
// (qh bits are the quant's bits 4-5). Element e of the half uses scale scales[8h + e / 16].
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];      // [128] low 4 bits
  uint8_t qh[kQKK / 4];      // [64] high 2 bits
  int8_t scales[kQKK / 16];  // [16] 8-bit sub-block scales
  uint16_t d;                // fp16 super-block scale
};
static_assert(sizeof(BlockQ6_K) == 210);

// Blocks in a mapped file are only as aligned as the file's alignment (which may be 1), so they
// are copied out before their uint16 fields are read; the compiler turns this into plain loads.
template <typename Block>
inline Block load_block(const uint8_t* p) {
  Block b;
  std::memcpy(&b, p, sizeof(Block));
  return b;
}

void dequant_q4_0(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, src += sizeof(BlockQ4_0), dst += kQK) {
    const auto b = load_block<BlockQ4_0>(src);
    const float d = fp16_to_f32(b.d);
    for (int j = 0; j < kQK / 2; ++j) {
      dst[j] = float(int(b.qs[j] & 0xF) - 8) * d;
      dst[j + kQK / 2] = float(int(b.qs[j] >> 4) - 8) * d;
    }
  }
}

void dequant_q4_1(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, src += sizeof(BlockQ4_1), dst += kQK) {
    const auto b = load_block<BlockQ4_1>(src);
    const float d = fp16_to_f32(b.d);
    const float m = fp16_to_f32(b.m);
    for (int j = 0; j < kQK / 2; ++j) {
      dst[j] = float(b.qs[j] & 0xF) * d + m;
      dst[j + kQK / 2] = float(b.qs[j] >> 4) * d + m;
    }
  }
}

void dequant_q8_0(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, src += sizeof(BlockQ8_0), dst += kQK) {
    const auto b = load_block<BlockQ8_0>(src);
    const float d = fp16_to_f32(b.d);
    for (int j = 0; j < kQK; ++j) dst[j] = float(b.qs[j]) * d;
  }
}

// 6-bit scale and min of sub-block s (0..7) of a Q4_K block (layout at BlockQ4_K).
inline void q4_k_scale_min(const uint8_t* scales, int s, int* sc, int* m) {
  if (s < 4) {
    *sc = scales[s] & 63;
    *m = scales[s + 4] & 63;
  } else {
    *sc = (scales[s + 4] & 0xF) | ((scales[s - 4] >> 6) << 4);
    *m = (scales[s + 4] >> 4) | ((scales[s] >> 6) << 4);
  }
}

void dequant_q4_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, src += sizeof(BlockQ4_K), dst += kQKK) {
    const auto b = load_block<BlockQ4_K>(src);
    const float d = fp16_to_f32(b.d);
    const float dmin = fp16_to_f32(b.dmin);
    for (int c = 0; c < 4; ++c) {  // chunk of 32 bytes = sub-blocks 2c (low) and 2c + 1 (high)
      int sc0, m0, sc1, m1;
      q4_k_scale_min(b.scales, 2 * c, &sc0, &m0);
      q4_k_scale_min(b.scales, 2 * c + 1, &sc1, &m1);
      const float d0 = d * float(sc0), mm0 = dmin * float(m0);
      const float d1 = d * float(sc1), mm1 = dmin * float(m1);
      const uint8_t* q = b.qs + 32 * c;
      float* y = dst + 64 * c;
      for (int l = 0; l < 32; ++l) {
        y[l] = d0 * float(q[l] & 0xF) - mm0;
        y[l + 32] = d1 * float(q[l] >> 4) - mm1;
      }
    }
  }
}

void dequant_q6_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, src += sizeof(BlockQ6_K), dst += kQKK) {
    const auto b = load_block<BlockQ6_K>(src);
    const float d = fp16_to_f32(b.d);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = b.ql + 64 * h;
      const uint8_t* qh = b.qh + 32 * h;
      const int8_t* sc = b.scales + 8 * h;
      float* y = dst + 128 * h;
      for (int l = 0; l < 32; ++l) {
        const int s = l / 16;
        const int q0 = int((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
        const int q1 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q2 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q3 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * float(sc[s]) * float(q0);
        y[l + 32] = d * float(sc[s + 2]) * float(q1);
        y[l + 64] = d * float(sc[s + 4]) * float(q2);
        y[l + 96] = d * float(sc[s + 6]) * float(q3);
      }
    }
  }
}

struct TypeInfo {
  uint32_t id;
  const char* name;
  int64_t block_elems;
  int64_t block_bytes;
};

// Every ggml type id known to gguf-py 0.19 (GGML_QUANT_SIZES), so that open() can size and
// bounds-check tensors of types that dequantize() does not support.
constexpr TypeInfo kTypes[] = {
    {0, "F32", 1, 4},         {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},      {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},      {7, "Q5_1", 32, 24},      {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 40},
    {10, "Q2_K", 256, 84},    {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292},   {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74},
    {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},   {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110},
    {22, "IQ2_S", 256, 82},   {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},         {25, "I16", 1, 2},
    {26, "I32", 1, 4},        {27, "I64", 1, 8},        {28, "F64", 1, 8},        {29, "IQ1_M", 256, 56},
    {30, "BF16", 1, 2},       {34, "TQ1_0", 256, 54},   {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},
    {40, "NVFP4", 64, 36},    {41, "Q1_0", 128, 18},
};

const TypeInfo* find_type(GgmlType t) {
  for (const TypeInfo& ti : kTypes)
    if (ti.id == uint32_t(t)) return &ti;
  return nullptr;
}

}  // namespace

std::string_view ggml_type_name(GgmlType t) {
  const TypeInfo* ti = find_type(t);
  return ti ? std::string_view(ti->name) : std::string_view("unknown");
}

bool ggml_type_layout(GgmlType t, int64_t* block_elems, int64_t* block_bytes) {
  const TypeInfo* ti = find_type(t);
  if (!ti) return false;
  *block_elems = ti->block_elems;
  *block_bytes = ti->block_bytes;
  return true;
}

bool ggml_type_can_dequantize(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

Status dequantize(GgmlType t, const void* src, float* dst, int64_t n) {
  if (!ggml_type_can_dequantize(t))
    return error(
        "dequantize: ggml type {} ({}) is not supported (supported: F32, F16, BF16, Q8_0, "
        "Q4_0, Q4_1, Q4_K, Q6_K)",
        ggml_type_name(t), uint32_t(t));
  int64_t be = 0, bb = 0;
  ggml_type_layout(t, &be, &bb);
  if (n < 0 || n % be != 0)
    return error("dequantize: {} elements of {} is not a multiple of its block size {}", n, ggml_type_name(t),
                 be);
  const auto* p = static_cast<const uint8_t*>(src);
  const int64_t nb = n / be;
  switch (t) {
    case GgmlType::kF32:
      std::memcpy(dst, p, size_t(n) * sizeof(float));
      break;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = fp16_to_f32(h);
      }
      break;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      break;
    case GgmlType::kQ8_0:
      dequant_q8_0(p, dst, nb);
      break;
    case GgmlType::kQ4_0:
      dequant_q4_0(p, dst, nb);
      break;
    case GgmlType::kQ4_1:
      dequant_q4_1(p, dst, nb);
      break;
    case GgmlType::kQ4_K:
      dequant_q4_k(p, dst, nb);
      break;
    case GgmlType::kQ6_K:
      dequant_q6_k(p, dst, nb);
      break;
    default:
      break;  // unreachable: filtered by ggml_type_can_dequantize
  }
  return Status::ok();
}

Status encode_q4_row(GgmlType t, const uint8_t* codes, const float* scale, const float* zero, int64_t n,
                     uint8_t* out) {
  if (t != GgmlType::kQ4_0 && t != GgmlType::kQ4_1)
    return error("encode_q4_row: ggml type {} is not Q4_0 or Q4_1", ggml_type_name(t));
  if (n < 0 || n % kQK != 0)
    return error("encode_q4_row: {} elements is not a multiple of the block size {}", n, kQK);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const uint8_t* q = codes + b * kQK;
    for (int j = 0; j < kQK; ++j)
      if (q[j] > 15) return error("element {}: code {} does not fit in 4 bits", b * kQK + j, int(q[j]));
    const float s = scale[b], z = zero[b];
    const uint16_t d = f32_to_fp16(s);
    if (!(fp16_to_f32(d) == s))
      return error("block {} (elements {}..{}): scale {} is not exactly representable in fp16", b, b * kQK,
                   b * kQK + kQK - 1, s);
    uint8_t qs[kQK / 2];
    for (int j = 0; j < kQK / 2; ++j) qs[j] = uint8_t(q[j] | (q[j + kQK / 2] << 4));
    if (t == GgmlType::kQ4_0) {
      if (z != 8.0f)
        return error("block {} (elements {}..{}): zero point {} (Q4_0 needs the symmetric zero 8)", b, b * kQK,
                     b * kQK + kQK - 1, z);
      BlockQ4_0 blk;
      blk.d = d;
      std::memcpy(blk.qs, qs, sizeof(qs));
      std::memcpy(out + b * sizeof(BlockQ4_0), &blk, sizeof(blk));
    } else {
      if (!std::isfinite(z))
        return error("block {} (elements {}..{}): zero point {} is not finite", b, b * kQK, b * kQK + kQK - 1, z);
      BlockQ4_1 blk;
      blk.d = d;
      blk.m = f32_to_fp16(-z * s);
      if (!std::isfinite(fp16_to_f32(blk.m)))
        return error("block {} (elements {}..{}): offset -zero * scale = {} overflows fp16", b, b * kQK,
                     b * kQK + kQK - 1, -z * s);
      std::memcpy(blk.qs, qs, sizeof(qs));
      std::memcpy(out + b * sizeof(BlockQ4_1), &blk, sizeof(blk));
    }
  }
  return Status::ok();
}

}  // namespace qforge::gguf
