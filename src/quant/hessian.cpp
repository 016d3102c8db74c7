#include "quant/hessian.h"

#include <cblas.h>

#include <cmath>
#include <utility>

namespace qforge::quant {

HessianAccumulator::HessianAccumulator(int64_t in, std::string name)
    : in_(in), name_(std::move(name)), H_(DType::kF32, {in > 0 ? in : 0, in > 0 ? in : 0}) {}

Status HessianAccumulator::add(const float* x, int64_t T) {
  const std::string_view who = name_.empty() ? std::string_view("hessian") : std::string_view(name_);
  if (T < 0) return error("{}: negative sample count {}", who, T);
  if (T == 0) return Status::ok();
  if (in_ <= 0) return error("{}: in_features {} must be positive", who, in_);
  if (x == nullptr) return error("{}: null input for {} samples", who, T);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < in_; ++i)
      if (!std::isfinite(x[t * in_ + i]))
        return error("{}: calibration input row {} (sample {}) column {} is {}", who, t, n_ + t, i,
                     x[t * in_ + i]);
  const int64_t n_new = n_ + T;
  const float beta = float(double(n_) / double(n_new));
  const float alpha = float(2.0 / double(n_new));
  float* H = H_.f32();
  // Upper triangle: H = alpha * x^T x + beta * H.
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(in_), int(T), alpha, x, int(in_), beta, H, int(in_));
  for (int64_t i = 0; i < in_; ++i)
    for (int64_t j = 0; j < i; ++j) H[i * in_ + j] = H[j * in_ + i];
  n_ = n_new;
  return Status::ok();
}

}  // namespace qforge::quant
