// The reference LayerOps: LlamaModel's f32 forward, one window at a time, host activations, OpenBLAS.
#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "model/layer_spec.h"
#include "ops/ops.h"
#include "quant/hessian.h"
#include "quant/layer_ops.h"

namespace qforge::quant {
namespace {

class CpuLayerOps final : public LayerOps {
 public:
  explicit CpuLayerOps(const LlamaModel& model) : model_(model) {}

  std::string name() const override { return "cpu"; }
  bool uses_host_blas() const override { return true; }

  Status set_inputs(Tensor x, int64_t N, int64_t L) override {
    x_ = std::move(x);
    N_ = N;
    L_ = L;
    return Status::ok();
  }
  Expected<const Tensor*> host_inputs() override { return &x_; }
  Status input_rows(int64_t rows, float* dst) override {
    std::copy(x_.f32(), x_.f32() + rows * model_.config().hidden_size, dst);
    return Status::ok();
  }
  Status load_layer(int) override { return Status::ok(); }

  Status hessian(int l, LinearInput slot, const std::string& name, Tensor* H) override {
    HessianAccumulator hess(slot_width(slot), name);
    Status hs;
    capture(l, [&](int, LinearInput sl, const float* xin, int64_t T, int64_t) {
      if (sl == slot && hs.is_ok()) hs = hess.add(xin, T);
    }, slot);
    QF_RETURN_IF_ERROR(hs);
    *H = std::move(hess).take_H();
    return Status::ok();
  }

  Status awq_capture(int l, const std::string& name, SlotMeans* means) override {
    const int64_t rows = N_ * L_;
    for (LinearInput slot : kLlamaInputOrder) X_[int(slot)] = Tensor(DType::kF32, {rows, slot_width(slot)});
    int64_t window = 0;
    capture(l, [&](int, LinearInput sl, const float* xin, int64_t T, int64_t in) {
      std::copy(xin, xin + T * in, X_[int(sl)].f32() + window * L_ * in);
      if (sl == LinearInput::kDown) ++window;
    });
    for (LinearInput slot : kLlamaInputOrder) {
      const Tensor& X = X_[int(slot)];
      QF_ASSIGN_OR_RETURN((*means)[size_t(slot)],
                          awq_mean_abs(X.f32(), rows, X.shape()[1], name + linear_input_name(slot)));
    }
    return Status::ok();
  }

  Expected<std::unique_ptr<AwqSearchOps>> awq_search(int l, LinearInput slot, std::span<const float* const> weights,
                                                     std::span<const int64_t> outs, int64_t windows,
                                                     const QuantConfig& cfg, const std::string& name) override {
    const Tensor& X = X_[int(slot)];
    const int64_t S = windows;
    const int64_t L = L_;
    BlockForward forward = [this, l, slot, &X, S, L](std::span<const float* const> w, Tensor& out) {
      return block_forward(l, slot, X, S, L, w, out);
    };
    return make_block_forward_search_ops(weights, outs, X.shape()[1], cfg, std::move(forward), name);
  }

  Status awq_scale_inputs(LinearInput slot, std::span<const float> s) override {
    Tensor& X = X_[int(slot)];
    const int64_t rows = X.shape()[0], C = X.shape()[1];
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t ch = 0; ch < C; ++ch) X.f32()[r * C + ch] /= s[size_t(ch)];
    return Status::ok();
  }

  Expected<Tensor> awq_clip(LinearInput slot, const float* W, int64_t out, int64_t C, const QuantConfig& cfg,
                            const AwqOptions& opt, const std::string& name) override {
    const Tensor& X = X_[int(slot)];
    return awq_search_clip(W, out, C, X.f32(), X.shape()[0], cfg, opt, name);
  }

  void awq_release() override {
    for (Tensor& X : X_) X = Tensor();
  }

  // D = W - Q; D H with one sgemm, then the row-wise dot products with D.
  Status linear_errors(const float* W, const Tensor& Q, const Tensor* H, double* weight_mse,
                       double* output_error) override {
    const int64_t out = Q.shape()[0], in = Q.shape()[1];
    double se = 0;
    std::vector<float> diff(static_cast<size_t>(out * in));
    for (int64_t i = 0; i < out * in; ++i) {
      diff[size_t(i)] = W[i] - Q.f32()[i];
      se += double(diff[size_t(i)]) * diff[size_t(i)];
    }
    *weight_mse = se / double(out * in);
    if (!H) return Status::ok();
    std::vector<float> dh(static_cast<size_t>(out * in));
    ops::linear(diff.data(), out, in, in, H->f32(), in, nullptr, dh.data(), in);  // H symmetric
    double tr = 0;
    for (int64_t i = 0; i < out * in; ++i) tr += double(dh[size_t(i)]) * diff[size_t(i)];
    *output_error = tr / 2.0;
    return Status::ok();
  }

  Status advance(int l) override {
    const ModelConfig& cfg = model_.config();
    Tensor k(DType::kF32, {L_, cfg.kv_dim()}), v(DType::kF32, {L_, cfg.kv_dim()});
    for (int64_t s = 0; s < N_; ++s)
      model_.decoder_layer(l, x_.f32() + s * L_ * cfg.hidden_size, L_, 0, k.f32(), v.f32(), nullptr);
    return Status::ok();
  }

 private:
  int64_t slot_width(LinearInput slot) const { return linear_input_width(model_.config(), slot); }

  // Runs decoder layer l on a copy of every window, calling `hook`; x is not changed. With `stop_after`
  // each window's forward ends once that input has been seen.
  void capture(int l, const LinearInputHook& hook, std::optional<LinearInput> stop_after = std::nullopt) const {
    const ModelConfig& cfg = model_.config();
    const int64_t H = cfg.hidden_size;
    Tensor scratch(DType::kF32, {L_, H}), k(DType::kF32, {L_, cfg.kv_dim()}), v(DType::kF32, {L_, cfg.kv_dim()});
    for (int64_t s = 0; s < N_; ++s) {
      std::copy(x_.f32() + s * L_ * H, x_.f32() + (s + 1) * L_ * H, scratch.f32());
      model_.decoder_layer(l, scratch.f32(), L_, 0, k.f32(), v.f32(), hook, stop_after);
    }
  }

  // The output of the module a group feeds, on the first S windows of its captured input X[N*L, C], with
  // candidate weights for the group's linears.
  Status block_forward(int l, LinearInput slot, const Tensor& X, int64_t S, int64_t L,
                       std::span<const float* const> w, Tensor& out) const {
    const ModelConfig& c = model_.config();
    const int64_t H = c.hidden_size, rows = S * L;
    switch (slot) {
      case LinearInput::kQKV: {
        out = Tensor(DType::kF32, {rows, H});
        Tensor k(DType::kF32, {L, c.kv_dim()}), v(DType::kF32, {L, c.kv_dim()});
        LlamaModel::AttentionWeights aw{w[0], w[1], w[2], nullptr};
        for (int64_t s = 0; s < S; ++s)
          model_.attention_forward(l, X.f32() + s * L * H, L, 0, k.f32(), v.f32(), aw, out.f32() + s * L * H);
        return Status::ok();
      }
      case LinearInput::kGateUp: {
        out = Tensor(DType::kF32, {rows, H});
        LlamaModel::MlpWeights mw{w[0], w[1], nullptr};
        model_.mlp_forward(l, X.f32(), rows, mw, out.f32());  // position-free: all rows at once
        return Status::ok();
      }
      case LinearInput::kO:
      case LinearInput::kDown: {
        const int64_t C = X.shape()[1];
        out = Tensor(DType::kF32, {rows, H});
        ops::linear(X.f32(), rows, C, C, w[0], H, nullptr, out.f32(), H);
        return Status::ok();
      }
    }
    return error("unknown input slot");
  }

  const LlamaModel& model_;
  Tensor x_;
  int64_t N_ = 0, L_ = 0;
  Tensor X_[4];
};

}  // namespace

std::unique_ptr<LayerOps> make_cpu_layer_ops(const LlamaModel& model) { return std::make_unique<CpuLayerOps>(model); }

}  // namespace qforge::quant
