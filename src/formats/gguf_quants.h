// ggml block formats read by the GGUF loader, defined once, with their bit order.
// Dequantization to f32 for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K.
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

}  // namespace qforge::gguf
