// TensorView: non-owning (dtype, shape, strides, pointer). Tensor: owning, contiguous, 64-byte aligned.
// Shapes are row-major with the last dimension contiguous; for a weight [out, in] the row is an output.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace qforge {

constexpr int kMaxDims = 4;

struct Shape {
  int rank = 0;
  std::array<int64_t, kMaxDims> dims{};

  Shape() = default;
  Shape(std::initializer_list<int64_t> d) {
    for (int64_t v : d) dims[rank++] = v;
  }
  static Shape from_vector(const std::vector<int64_t>& d) {
    Shape s;
    for (int64_t v : d) s.dims[s.rank++] = v;
    return s;
  }
  int64_t operator[](int i) const { return dims[i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= dims[i];
    return n;
  }
  std::vector<int64_t> to_vector() const { return {dims.begin(), dims.begin() + rank}; }
  bool operator==(const Shape& o) const {
    if (rank != o.rank) return false;
    for (int i = 0; i < rank; ++i)
      if (dims[i] != o.dims[i]) return false;
    return true;
  }
  std::string str() const;  // "[576, 1536]"
};

struct TensorView {
  DType dtype = DType::kF32;
  Shape shape;
  std::array<int64_t, kMaxDims> strides{};  // in elements
  void* data = nullptr;

  static TensorView contiguous(DType t, Shape s, void* p) {
    TensorView v;
    v.dtype = t;
    v.shape = s;
    v.data = p;
    int64_t st = 1;
    for (int i = s.rank - 1; i >= 0; --i) {
      v.strides[i] = st;
      st *= s.dims[i];
    }
    return v;
  }
  int64_t numel() const { return shape.numel(); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  bool is_contiguous() const {
    int64_t st = 1;
    for (int i = shape.rank - 1; i >= 0; --i) {
      if (strides[i] != st) return false;
      st *= shape.dims[i];
    }
    return true;
  }
  template <typename T>
  T* as() const { return static_cast<T*>(data); }
  std::span<float> f32() const { return {static_cast<float*>(data), size_t(numel())}; }
};

struct AlignedFree {
  void operator()(void* p) const;
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(DType t, Shape s);  // zero-filled
  static Tensor zeros(DType t, Shape s) { return Tensor(t, s); }

  const TensorView& view() const { return view_; }
  DType dtype() const { return view_.dtype; }
  const Shape& shape() const { return view_.shape; }
  int64_t numel() const { return view_.numel(); }
  size_t nbytes() const { return view_.nbytes(); }
  bool empty() const { return buf_ == nullptr; }
  template <typename T>
  T* data() { return static_cast<T*>(view_.data); }
  template <typename T>
  const T* data() const { return static_cast<const T*>(view_.data); }
  float* f32() { return data<float>(); }
  const float* f32() const { return data<float>(); }
  // Reinterpret with a new shape of the same element count.
  void reshape(Shape s);

 private:
  std::unique_ptr<void, AlignedFree> buf_;
  TensorView view_;
};

// Converts any float dtype view (F32/F16/BF16, contiguous) into f32 at dst (numel floats).
void convert_to_f32(const TensorView& src, float* dst);
// Converts f32 to F32/F16/BF16 storage.
void convert_from_f32(const float* src, int64_t n, DType dst_type, void* dst);

}  // namespace qforge
