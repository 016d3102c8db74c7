#include "quant/pipeline.h"

#include <fmt/format.h>

#include <chrono>
#include <map>

#include "core/progress.h"
#include "model/layer_spec.h"
#include "quant/hessian.h"
#include "quant/rtn.h"

namespace qforge::quant {

const char* method_name(Method m) {
  switch (m) {
    case Method::kRtn: return "rtn";
    case Method::kGptq: return "gptq";
  }
  return "?";
}

namespace {

using Clock = std::chrono::steady_clock;

std::string linear_name(int layer, const LinearSpec& s) { return fmt::format("model.layers.{}.{}", layer, s.name); }

// Mean of (w - q)^2 and tr((W-Q) H (W-Q)^T)/2 (H may be null).
void fill_errors(const float* W, const Tensor& Q, const Tensor* H, LinearReport& r) {
  const int64_t out = r.out, in = r.in;
  double se = 0;
  std::vector<float> diff(size_t(out * in));
  for (int64_t i = 0; i < out * in; ++i) {
    diff[size_t(i)] = W[i] - Q.f32()[i];
    se += double(diff[size_t(i)]) * diff[size_t(i)];
  }
  r.weight_mse = se / double(out * in);
  if (!H) return;
  // sum_rows d H d^T / 2
  std::vector<float> dh(static_cast<size_t>(in));
  double tr = 0;
  for (int64_t o = 0; o < out; ++o) {
    const float* d = diff.data() + o * in;
    for (int64_t j = 0; j < in; ++j) dh[size_t(j)] = 0;
    for (int64_t i = 0; i < in; ++i) {
      const float di = d[i];
      if (di == 0) continue;
      const float* hr = H->f32() + i * in;
      for (int64_t j = 0; j < in; ++j) dh[size_t(j)] += di * hr[j];
    }
    for (int64_t j = 0; j < in; ++j) tr += double(dh[size_t(j)]) * d[j];
  }
  r.output_error = tr / 2.0;
}

// Runs decoder layer `l` on every calibration window of x[N*L, H] in place (or on a copy when
// `in_place` is false), calling `hook` with each linear input.
void run_layer(const LlamaModel& m, int l, float* x, int64_t N, int64_t L, const LinearInputHook& hook) {
  const ModelConfig& c = m.config();
  Tensor k(DType::kF32, {L, c.kv_dim()}), v(DType::kF32, {L, c.kv_dim()});
  for (int64_t s = 0; s < N; ++s) m.decoder_layer(l, x + s * L * c.hidden_size, L, 0, k.f32(), v.f32(), hook);
}

}  // namespace

Expected<PipelineReport> quantize_model(LlamaModel& model, const std::vector<std::vector<int32_t>>& calibration,
                                        const PipelineOptions& opt) {
  const auto t0 = Clock::now();
  const ModelConfig& c = model.config();
  ModelWeights& w = model.mutable_weights();
  for (int l = 0; l < int(c.num_hidden_layers); ++l)
    for (const LinearSpec& s : kLlamaLinears) {
      const Tensor& W = w.layers[size_t(l)].*s.weight;
      QF_RETURN_IF_ERROR(validate_quant_config(opt.quant, W.shape()[1], linear_name(l, s)));
    }
  PipelineReport rep;
  const bool needs_calib = opt.method != Method::kRtn;
  const int64_t N = int64_t(calibration.size());
  const int64_t L = N ? int64_t(calibration[0].size()) : 0;
  if (needs_calib && (N == 0 || L < 2))
    return error("{}: calibration data is required (got {} windows of {} tokens)", method_name(opt.method), N, L);
  for (const auto& win : calibration)
    if (int64_t(win.size()) != L) return error("calibration windows must all have {} tokens", L);
  rep.calibration_tokens = N * L;

  // Inputs of layer 0: embeddings of every window, [N*L, H].
  const int64_t H = c.hidden_size;
  Tensor x;
  if (needs_calib) {
    x = Tensor(DType::kF32, {N * L, H});
    const float* E = w.embed.f32();
    for (int64_t s = 0; s < N; ++s)
      for (int64_t t = 0; t < L; ++t) {
        const int32_t id = calibration[size_t(s)][size_t(t)];
        if (id < 0 || id >= c.vocab_size) return error("calibration token id {} outside the vocabulary", id);
        std::copy(E + int64_t(id) * H, E + (int64_t(id) + 1) * H, x.f32() + (s * L + t) * H);
      }
  }

  Progress bar(fmt::format("quantize {}", method_name(opt.method)), c.num_hidden_layers, opt.progress);
  for (int l = 0; l < int(c.num_hidden_layers); ++l) {
    LayerWeights& lw = w.layers[size_t(l)];
    if (opt.method == Method::kRtn) {
      for (const LinearSpec& s : kLlamaLinears) {
        const auto ts = Clock::now();
        Tensor& W = lw.*s.weight;
        LinearReport r{linear_name(l, s), l, W.shape()[0], W.shape()[1]};
        QF_ASSIGN_OR_RETURN(QuantizedLinear q, rtn_quantize(W.f32(), r.out, r.in, opt.quant, r.name));
        Tensor Q = q.dequantize();
        fill_errors(W.f32(), Q, nullptr, r);
        W = std::move(Q);
        r.seconds = std::chrono::duration<double>(Clock::now() - ts).count();
        rep.linears.push_back(std::move(r));
      }
    } else {
      // True-sequential: one capture pass per input slot, each after the previous slot's linears
      // were replaced by their quantized values.
      for (LinearInput slot : kLlamaInputOrder) {
        const int64_t in = slot == LinearInput::kDown ? c.intermediate_size
                         : slot == LinearInput::kO ? c.q_dim() : H;
        HessianAccumulator hess(in, fmt::format("model.layers.{}.{}", l, linear_input_name(slot)));
        Status hook_status;
        Tensor scratch(DType::kF32, {L, H});
        for (int64_t s = 0; s < N; ++s) {
          // The capture pass must not change x: run on a copy of the window.
          std::copy(x.f32() + s * L * H, x.f32() + (s + 1) * L * H, scratch.f32());
          Tensor k(DType::kF32, {L, c.kv_dim()}), v(DType::kF32, {L, c.kv_dim()});
          model.decoder_layer(l, scratch.f32(), L, 0, k.f32(), v.f32(),
                              [&](int, LinearInput sl, const float* xin, int64_t T, int64_t) {
                                if (sl == slot && hook_status.is_ok()) hook_status = hess.add(xin, T);
                              });
          QF_RETURN_IF_ERROR(hook_status);
        }
        for (const LinearSpec& s : kLlamaLinears) {
          if (s.input != slot) continue;
          const auto ts = Clock::now();
          Tensor& W = lw.*s.weight;
          LinearReport r{linear_name(l, s), l, W.shape()[0], W.shape()[1]};
          QF_ASSIGN_OR_RETURN(GptqResult g, gptq_quantize(W.f32(), r.out, r.in, hess.H(), opt.quant, opt.gptq, r.name));
          Tensor Q = g.q.dequantize();
          fill_errors(W.f32(), Q, &hess.H(), r);
          r.gptq_loss = g.loss;
          r.damp_percent = g.damp_percent;
          r.dead_columns = g.dead_columns;
          W = std::move(Q);
          r.seconds = std::chrono::duration<double>(Clock::now() - ts).count();
          rep.linears.push_back(std::move(r));
        }
      }
      // The layer's outputs with all its linears quantized feed the next layer.
      run_layer(model, l, x.f32(), N, L, nullptr);
    }
    bar.update(l + 1);
  }
  bar.finish();
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return rep;
}

}  // namespace qforge::quant
