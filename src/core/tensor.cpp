#include "core/tensor.h"

#include "core/parallel.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <new>

namespace qforge {

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) s += fmt::format("{}{}", i ? ", " : "", dims[i]);
  return s + "]";
}

void AlignedFree::operator()(void* p) const { std::free(p); }

Tensor::Tensor(DType t, Shape s) {
  size_t bytes = size_t(s.numel()) * dtype_size(t);
  size_t alloc = (bytes + 63) / 64 * 64;
  if (alloc == 0) alloc = 64;
  void* p = std::aligned_alloc(64, alloc);
  if (!p) throw std::bad_alloc();
  // Large tensors are zeroed by all host threads: the first touch of fresh pages (page faults) dominates, and
  // one thread does it at ~2-4 GB/s.
  char* bytes_p = static_cast<char*>(p);
  parallel_rows(int64_t(alloc), int64_t(16) << 20,
                [&](int64_t a, int64_t b) { std::memset(bytes_p + a, 0, size_t(b - a)); });
  buf_.reset(p);
  view_ = TensorView::contiguous(t, s, p);
}

void Tensor::reshape(Shape s) {
  view_ = TensorView::contiguous(view_.dtype, s, view_.data);
}

void convert_to_f32(const TensorView& src, float* dst) {
  const int64_t n = src.numel();
  if (n == 0) return;  // memcpy of nothing from/to a null pointer is undefined
  switch (src.dtype) {
    case DType::kF32:
      std::memcpy(dst, src.data, size_t(n) * 4);
      break;
    case DType::kF16: {
      const uint16_t* p = src.as<uint16_t>();
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(p[i]);
      break;
    }
    case DType::kBF16: {
      const uint16_t* p = src.as<uint16_t>();
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(p[i]);
      break;
    }
    default:
      for (int64_t i = 0; i < n; ++i) dst[i] = 0.f;
  }
}

void convert_from_f32(const float* src, int64_t n, DType dst_type, void* dst) {
  switch (dst_type) {
    case DType::kF32:
      std::memcpy(dst, src, size_t(n) * 4);
      break;
    case DType::kF16: {
      uint16_t* p = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) p[i] = f32_to_fp16(src[i]);
      break;
    }
    case DType::kBF16: {
      uint16_t* p = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) p[i] = f32_to_bf16(src[i]);
      break;
    }
    default:
      break;
  }
}

}  // namespace qforge
