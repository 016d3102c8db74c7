#include "quant/quant_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>

#include "core/parallel.h"

namespace qforge::quant {

Status validate_quant_config(const QuantConfig& cfg, int64_t in_features, std::string_view layer_name) {
  if (cfg.bits < 2 || cfg.bits > 8)
    return error("{}: {} bits is not supported; valid: 2..8", layer_name, cfg.bits);
  if (in_features <= 0) return error("{}: in_features {} must be positive", layer_name, in_features);
  bool known = cfg.group_size == 0;
  for (int64_t g : kValidGroupSizes) known = known || cfg.group_size == g;
  if (!known) {
    std::string all;
    for (int64_t g : kValidGroupSizes) all += fmt::format("{}, ", g);
    return error("{}: group size {} is not supported; valid group sizes: {}per-channel (0)", layer_name,
                 cfg.group_size, all);
  }
  if (cfg.group_size != 0 && in_features % cfg.group_size != 0) {
    std::string fits;
    for (int64_t g : kValidGroupSizes)
      if (in_features % g == 0) fits += fmt::format("{}, ", g);
    return error("{}: group size {} does not divide in_features {}; valid: {}per-channel (0)", layer_name,
                 cfg.group_size, in_features, fits);
  }
  return Status::ok();
}

Tensor QuantizedLinear::dequantize() const {
  Tensor w(DType::kF32, {out, in});
  const int64_t ng = scales.shape().rank == 2 ? scales.shape()[1] : 1;
  const float* s = scales.f32();
  const float* z = zeros.f32();
  float* dst = w.f32();
  parallel_rows(out, std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, in)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < in; ++c) {
        const int64_t g = r * ng + g_idx[size_t(c)];
        dst[r * in + c] = (float(qweight[size_t(r * in + c)]) - z[g]) * s[g];
      }
  });
  return w;
}

}  // namespace qforge::quant
