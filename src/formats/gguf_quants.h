// ggml block formats read by the GGUF loader, defined once, with their bit order.
// Dequantization to f32 for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K; encoding of Q4_0/Q4_1 from
// already chosen 4-bit codes (so codes optimised by GPTQ/AWQ are kept, not re-rounded from floats).
#pragma once

#include <cstdint>

#include "core/status.h"
#include "formats/gguf.h"

namespace qforge::gguf {

// Elements per block and bytes per block of a ggml type (block size 1 for F32/F16/BF16).
// Returns false for types this reader does not know.
bool ggml_type_layout(GgmlType t, int64_t* block_elems, int64_t* block_bytes);

// True for the types dequantize() supports (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K).
bool ggml_type_can_dequantize(GgmlType t);

// Dequantizes n elements (n a multiple of the block size) from src to dst.
// Returns an error for unsupported types or n not a multiple of the block size.
Status dequantize(GgmlType t, const void* src, float* dst, int64_t n);

// Encodes one row of n 4-bit codes (n a multiple of 32) as n/32 Q4_0 or Q4_1 blocks, each element meaning
// (code - zero[b]) * scale[b] for its block b = element / 32. The block layouts are BlockQ4_0/BlockQ4_1 in
// gguf_quants.cpp (fp16 d [, fp16 m], 16 bytes: byte j low nibble = element j, high nibble = element j+16).
//  Q4_0 (value = (q - 8) * d): needs zero == 8 for every block; d = scale. Exact.
//  Q4_1 (value = q * d + m):   d = scale, m = -zero * scale rounded to fp16 (round to nearest even). The
//    product zero * scale is exact in f32 (4-bit integer times an 11-bit fp16 significand), so this one
//    rounding is the only loss: |m_fp16 - m| <= 2^-11 * |m| for |m| >= 2^-14 (half an fp16 ulp), and
//    <= 2^-25 below (fp16 subnormal spacing 2^-24); every element of the block moves by that same amount
//    (plus the f32 rounding of q * d + m when it is evaluated). zero == 0 gives m = 0: exact.
// Every scale must be exactly representable in fp16 (QuantizedLinear's are) and every code <= 15; else
// an error names the element or block (callers add the tensor and row).
Status encode_q4_row(GgmlType t, const uint8_t* codes /*[n]*/, const float* scale /*[n/32]*/,
                     const float* zero /*[n/32]*/, int64_t n, uint8_t* out /*[n/32 * 18 or 20] bytes*/);

}  // namespace qforge::gguf
