// The GPTQ proxy Hessian of one linear layer, H = 2/n * sum_t x_t x_t^T over its n calibration inputs.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"
#include "core/tensor.h"

namespace qforge::quant {

// Accumulates H [in, in] as a running mean, updated as IST-DASLab gptq GPTQ.add_batch does:
//   H *= n / (n + T);  n += T;  H += 2/n * X^T X
// so H stays O(|x|^2) however many samples arrive (no f32 overflow from a raw sum). f32 with BLAS ssyrk,
// as the reference accumulates in f32.
class HessianAccumulator {
 public:
  // `name` (the layer) only prefixes error messages.
  explicit HessianAccumulator(int64_t in, std::string name = {});

  // Adds T input rows x[T, in] (row-major). A NaN/Inf in x is an error naming its row and column, and
  // leaves H and samples() unchanged. T == 0 is a no-op.
  Status add(const float* x /*[T, in]*/, int64_t T);

  const Tensor& H() const { return H_; }  // [in, in] f32, symmetric (both triangles filled)
  // Hands H over (the accumulator is empty afterwards: no further add).
  Tensor take_H() && { return std::move(H_); }
  int64_t samples() const { return n_; }
  int64_t in() const { return in_; }

 private:
  int64_t in_ = 0;
  int64_t n_ = 0;
  std::string name_;
  Tensor H_;  // [in, in]
};

}  // namespace qforge::quant
