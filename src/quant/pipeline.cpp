#include "quant/pipeline.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "core/progress.h"
#include "model/layer_spec.h"
#include "ops/ops.h"
#include "quant/cuda/gptq_cuda_ops.h"
#include "quant/hessian.h"
#include "quant/rtn.h"

namespace qforge::quant {

const char* method_name(Method m) {
  switch (m) {
    case Method::kRtn: return "rtn";
    case Method::kGptq: return "gptq";
    case Method::kAwq: return "awq";
    case Method::kAwqGptq: return "awq+gptq";
  }
  return "?";
}

const char* salient_by_name(SalientBy b) {
  switch (b) {
    case SalientBy::kActivation: return "activation";
    case SalientBy::kWeight: return "weight";
    case SalientBy::kRandom: return "random";
  }
  return "?";
}

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kF32Eps = 1.1920929e-07;

std::string layer_prefix(int layer) { return fmt::format("model.layers.{}.", layer); }
std::string linear_name(int layer, const LinearSpec& s) { return layer_prefix(layer) + s.name; }

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Mean of (w - q)^2 and, with H, tr((W-Q) H (W-Q)^T)/2.
void fill_errors(const float* W, const Tensor& Q, const Tensor* H, LinearReport& r) {
  const int64_t out = r.out, in = r.in;
  double se = 0;
  std::vector<float> diff(static_cast<size_t>(out * in));
  for (int64_t i = 0; i < out * in; ++i) {
    diff[size_t(i)] = W[i] - Q.f32()[i];
    se += double(diff[size_t(i)]) * diff[size_t(i)];
  }
  r.weight_mse = se / double(out * in);
  if (!H) return;
  // D H with one sgemm, then the row-wise dot products with D.
  std::vector<float> dh(static_cast<size_t>(out * in));
  ops::linear(diff.data(), out, in, in, H->f32(), in, nullptr, dh.data(), in);  // H symmetric
  double tr = 0;
  for (int64_t i = 0; i < out * in; ++i) tr += double(dh[size_t(i)]) * diff[size_t(i)];
  r.output_error = tr / 2.0;
}

int64_t slot_width(const ModelConfig& c, LinearInput slot) {
  switch (slot) {
    case LinearInput::kO: return c.q_dim();
    case LinearInput::kDown: return c.intermediate_size;
    default: return c.hidden_size;
  }
}

struct Ctx {
  LlamaModel& model;
  const PipelineOptions& opt;
  PipelineReport& rep;
  Tensor& x;  // [N*L, H] inputs of the current layer
  int64_t N, L;
  QuantizedLinears* quantized;  // null: not kept
  GptqOps* gptq_ops;            // the GPTQ backend (Device::kCuda); null: the CPU reference backend
};

// Keeps the quantized form of linear `s` of layer l when the caller asked for it.
void keep_quantized(Ctx& c, int l, const LinearSpec& s, QuantizedLinear&& q) {
  if (!c.quantized) return;
  c.quantized->layers[size_t(l)][size_t(&s - kLlamaLinears.data())] = std::move(q);
}

// Runs decoder layer l on a copy of every window, calling `hook`; x is not changed. With `stop_after`
// each window's forward ends once that input has been seen.
Status capture(Ctx& c, int l, const LinearInputHook& hook, std::optional<LinearInput> stop_after = std::nullopt) {
  const ModelConfig& cfg = c.model.config();
  const int64_t H = cfg.hidden_size;
  Tensor scratch(DType::kF32, {c.L, H}), k(DType::kF32, {c.L, cfg.kv_dim()}), v(DType::kF32, {c.L, cfg.kv_dim()});
  for (int64_t s = 0; s < c.N; ++s) {
    std::copy(c.x.f32() + s * c.L * H, c.x.f32() + (s + 1) * c.L * H, scratch.f32());
    c.model.decoder_layer(l, scratch.f32(), c.L, 0, k.f32(), v.f32(), hook, stop_after);
  }
  return Status::ok();
}

// x <- layer(x) for every window (with the layer's current weights).
void advance(Ctx& c, int l) {
  const ModelConfig& cfg = c.model.config();
  Tensor k(DType::kF32, {c.L, cfg.kv_dim()}), v(DType::kF32, {c.L, cfg.kv_dim()});
  for (int64_t s = 0; s < c.N; ++s)
    c.model.decoder_layer(l, c.x.f32() + s * c.L * cfg.hidden_size, c.L, 0, k.f32(), v.f32(), nullptr);
}

// Indices of the k most salient input channels of W[out, in] (ablation): by mean |x| of the captured
// input, by mean |w| of the column, or at random.
std::vector<int64_t> salient_channels(const Tensor& W, const std::vector<double>* act_mean, SalientBy by,
                                      int64_t k, uint64_t seed) {
  const int64_t out = W.shape()[0], in = W.shape()[1];
  std::vector<double> score(static_cast<size_t>(in), 0.0);
  if (by == SalientBy::kActivation) {
    score = *act_mean;
  } else if (by == SalientBy::kWeight) {
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) score[size_t(i)] += std::fabs(W.f32()[o * in + i]);
  } else {
    std::mt19937_64 rng(seed);
    for (auto& v : score) v = std::uniform_real_distribution<double>(0, 1)(rng);
  }
  std::vector<int64_t> idx(static_cast<size_t>(in));
  for (int64_t i = 0; i < in; ++i) idx[size_t(i)] = i;
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int64_t a, int64_t b) { return score[size_t(a)] > score[size_t(b)] || (score[size_t(a)] == score[size_t(b)] && a < b); });
  idx.resize(size_t(k));
  return idx;
}

Status rtn_layer(Ctx& c, int l) {
  LayerWeights& lw = c.model.mutable_weights().layers[size_t(l)];
  const ModelConfig& cfg = c.model.config();
  const bool keep = c.opt.keep_fp_fraction > 0;
  std::vector<double> act_mean[4];
  if (keep && c.opt.keep_fp_by == SalientBy::kActivation) {
    for (LinearInput slot : kLlamaInputOrder) act_mean[int(slot)].assign(size_t(slot_width(cfg, slot)), 0.0);
    QF_RETURN_IF_ERROR(capture(c, l, [&](int, LinearInput sl, const float* xin, int64_t T, int64_t in) {
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < in; ++i) act_mean[int(sl)][size_t(i)] += std::fabs(xin[t * in + i]);
    }));
  }
  for (const LinearSpec& s : kLlamaLinears) {
    const auto ts = Clock::now();
    Tensor& W = lw.*s.weight;
    LinearReport r{linear_name(l, s), l, W.shape()[0], W.shape()[1]};
    QF_ASSIGN_OR_RETURN(QuantizedLinear q, rtn_quantize(W.f32(), r.out, r.in, c.opt.quant, r.name));
    Tensor Q = q.dequantize();
    if (keep) {
      const int64_t k = std::max<int64_t>(1, int64_t(std::llround(c.opt.keep_fp_fraction * double(r.in))));
      const uint64_t seed = c.opt.seed * 1000003u + uint64_t(l) * 16u + uint64_t(&s - kLlamaLinears.data());
      for (int64_t ch : salient_channels(W, &act_mean[int(s.input)], c.opt.keep_fp_by, k, seed))
        for (int64_t o = 0; o < r.out; ++o) Q.f32()[o * r.in + ch] = W.f32()[o * r.in + ch];
    }
    fill_errors(W.f32(), Q, nullptr, r);
    W = std::move(Q);
    keep_quantized(c, l, s, std::move(q));
    r.seconds = seconds_since(ts);
    c.rep.linears.push_back(std::move(r));
  }
  return Status::ok();
}

// True-sequential GPTQ: one capture pass per input slot, each after the previous slot's linears were
// replaced by their quantized values.
Status gptq_layer(Ctx& c, int l) {
  const ModelConfig& cfg = c.model.config();
  LayerWeights& lw = c.model.mutable_weights().layers[size_t(l)];
  for (LinearInput slot : kLlamaInputOrder) {
    HessianAccumulator hess(slot_width(cfg, slot), layer_prefix(l) + linear_input_name(slot));
    Status hs;
    QF_RETURN_IF_ERROR(capture(c, l, [&](int, LinearInput sl, const float* xin, int64_t T, int64_t) {
      if (sl == slot && hs.is_ok()) hs = hess.add(xin, T);
    }, slot));
    QF_RETURN_IF_ERROR(hs);
    for (const LinearSpec& s : kLlamaLinears) {
      if (s.input != slot) continue;
      const auto ts = Clock::now();
      Tensor& W = lw.*s.weight;
      LinearReport r{linear_name(l, s), l, W.shape()[0], W.shape()[1]};
      // One driver either way; errors from the CUDA backend come back prefixed with the linear's name.
      QF_ASSIGN_OR_RETURN(GptqResult g,
                          c.gptq_ops ? gptq_quantize(W.f32(), r.out, r.in, hess.H(), c.opt.quant, c.opt.gptq, r.name,
                                                     *c.gptq_ops)
                                     : gptq_quantize(W.f32(), r.out, r.in, hess.H(), c.opt.quant, c.opt.gptq, r.name));
      Tensor Q = g.q.dequantize();
      fill_errors(W.f32(), Q, &hess.H(), r);
      r.gptq_loss = g.loss;
      r.damp_percent = g.damp_percent;
      r.dead_columns = g.dead_columns;
      W = std::move(Q);
      keep_quantized(c, l, s, std::move(g.q));
      r.seconds = seconds_since(ts);
      c.rep.linears.push_back(std::move(r));
    }
  }
  return Status::ok();
}

// One AWQ scaling group: linears sharing an input slot, the module whose output the search compares,
// and where 1/s is folded.
struct AwqGroup {
  const char* name;
  LinearInput slot;
  std::vector<Tensor LayerWeights::*> linears;
  Tensor LayerWeights::*fold_norm;       // gamma [C], or null
  Tensor LayerWeights::*fold_prev;       // previous linear [C, in_prev], or null
  Tensor LayerWeights::*fold_prev_bias;  // its bias, or null
  const char* fold_name;
};

const AwqGroup kAwqGroups[] = {
    {"self_attn.q_proj+k_proj+v_proj", LinearInput::kQKV, {&LayerWeights::wq, &LayerWeights::wk, &LayerWeights::wv},
     &LayerWeights::attn_norm, nullptr, nullptr, "input_layernorm"},
    {"self_attn.o_proj", LinearInput::kO, {&LayerWeights::wo}, nullptr, &LayerWeights::wv, &LayerWeights::bv,
     "self_attn.v_proj"},
    {"mlp.gate_proj+up_proj", LinearInput::kGateUp, {&LayerWeights::w_gate, &LayerWeights::w_up},
     &LayerWeights::mlp_norm, nullptr, nullptr, "post_attention_layernorm"},
    {"mlp.down_proj", LinearInput::kDown, {&LayerWeights::w_down}, nullptr, &LayerWeights::w_up, nullptr,
     "mlp.up_proj"},
};

// The output of the module a group feeds, on the first S windows of its captured input X[N*L, C], with
// candidate weights for the group's linears.
Status awq_block_forward(const LlamaModel& m, int l, LinearInput slot, const Tensor& X, int64_t S, int64_t L,
                         std::span<const float* const> w, Tensor& out) {
  const ModelConfig& c = m.config();
  const int64_t H = c.hidden_size, rows = S * L;
  switch (slot) {
    case LinearInput::kQKV: {
      out = Tensor(DType::kF32, {rows, H});
      Tensor k(DType::kF32, {L, c.kv_dim()}), v(DType::kF32, {L, c.kv_dim()});
      LlamaModel::AttentionWeights aw{w[0], w[1], w[2], nullptr};
      for (int64_t s = 0; s < S; ++s)
        m.attention_forward(l, X.f32() + s * L * H, L, 0, k.f32(), v.f32(), aw, out.f32() + s * L * H);
      return Status::ok();
    }
    case LinearInput::kGateUp: {
      out = Tensor(DType::kF32, {rows, H});
      LlamaModel::MlpWeights mw{w[0], w[1], nullptr};
      m.mlp_forward(l, X.f32(), rows, mw, out.f32());  // position-free: all rows at once
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

// AWQ on one layer: capture the FP inputs of every linear; search the scales of each group against the
// FP weights (as llm-awq does: all searches first, then all applied); apply them and fold 1/s; check
// the folded layer still computes the same function; search and apply clipping (not q/k); the caller
// then quantizes (RTN or GPTQ).
Status awq_layer(Ctx& c, int l) {
  const ModelConfig& cfg = c.model.config();
  LayerWeights& lw = c.model.mutable_weights().layers[size_t(l)];
  const int64_t rows = c.N * c.L;
  const int64_t S = c.opt.awq_search_samples > 0 ? std::min(c.opt.awq_search_samples, c.N) : c.N;
  Tensor X[4];
  for (LinearInput slot : kLlamaInputOrder) X[int(slot)] = Tensor(DType::kF32, {rows, slot_width(cfg, slot)});
  int64_t window = 0;
  QF_RETURN_IF_ERROR(capture(c, l, [&](int, LinearInput sl, const float* xin, int64_t T, int64_t in) {
    std::copy(xin, xin + T * in, X[int(sl)].f32() + window * c.L * in);
    if (sl == LinearInput::kDown) ++window;
  }));
  // FP output of the layer on the first window, for the scale-equivalence check.
  const int64_t H = cfg.hidden_size;
  Tensor ref(DType::kF32, {c.L, H});
  Tensor kbuf(DType::kF32, {c.L, cfg.kv_dim()}), vbuf(DType::kF32, {c.L, cfg.kv_dim()});
  std::copy(c.x.f32(), c.x.f32() + c.L * H, ref.f32());
  c.model.decoder_layer(l, ref.f32(), c.L, 0, kbuf.f32(), vbuf.f32(), nullptr);

  struct Found {
    const AwqGroup* g;
    std::vector<float> scales;
  };
  std::vector<Found> found;
  for (const AwqGroup& g : kAwqGroups) {
    AwqGroupReport gr;
    gr.layer = l;
    gr.name = layer_prefix(l) + g.name;
    const Tensor& Xin = X[int(g.slot)];
    const int64_t C = Xin.shape()[1];
    if (g.fold_prev) {
      const Tensor& prev = lw.*g.fold_prev;
      Status ok = awq_check_fold_into_linear_rows(prev.shape()[0], C, layer_prefix(l) + g.fold_name, gr.name);
      if (!ok) {
        gr.skipped = ok.message();
        c.rep.awq_groups.push_back(std::move(gr));
        continue;
      }
    }
    QF_ASSIGN_OR_RETURN(std::vector<float> mean_abs, awq_mean_abs(Xin.f32(), rows, C, gr.name));
    gr.fold_into = layer_prefix(l) + g.fold_name;
    if (c.opt.awq_fixed_alpha >= 0) {  // ablation: no search
      std::vector<float> sc = awq_scales_for_alpha(mean_abs.data(), C, c.opt.awq_fixed_alpha);
      gr.best_alpha = c.opt.awq_fixed_alpha;
      ScaleResult tmp;
      tmp.scales = sc;
      gr.top_scales = tmp.top_scales(5);
      c.rep.awq_groups.push_back(std::move(gr));
      found.push_back({&g, std::move(sc)});
      continue;
    }
    std::vector<const float*> ws;
    std::vector<int64_t> outs;
    for (auto lin : g.linears) {
      ws.push_back((lw.*lin).f32());
      outs.push_back((lw.*lin).shape()[0]);
    }
    BlockForward fwd = [&](std::span<const float* const> w, Tensor& out) {
      return awq_block_forward(c.model, l, g.slot, Xin, S, c.L, w, out);
    };
    QF_ASSIGN_OR_RETURN(ScaleResult sr,
                        awq_search_scales(mean_abs.data(), C, ws, outs, c.opt.quant, c.opt.awq, fwd, gr.name));
    gr.best_alpha = sr.best_alpha;
    gr.err_before = sr.err_before;
    gr.err_after = sr.err_best;
    gr.top_scales = sr.top_scales(5);
    c.rep.awq_groups.push_back(std::move(gr));
    found.push_back({&g, std::move(sr.scales)});
  }
  // Apply: W[:, c] *= s, the feeding norm's gamma (or previous linear's rows) /= s, and the captured
  // inputs (used by the clip search) /= s.
  for (const Found& f : found) {
    for (auto lin : f.g->linears) awq_apply_scales((lw.*lin).f32(), (lw.*lin).shape()[0], f.scales);
    if (f.g->fold_norm) awq_fold_into_norm((lw.*f.g->fold_norm).f32(), f.scales);
    if (f.g->fold_prev) {
      Tensor& prev = lw.*f.g->fold_prev;
      Tensor* bias = f.g->fold_prev_bias ? &(lw.*f.g->fold_prev_bias) : nullptr;
      awq_fold_into_linear_rows(prev.f32(), prev.shape()[1], bias && !bias->empty() ? bias->f32() : nullptr,
                                f.scales);
    }
    Tensor& Xin = X[int(f.g->slot)];
    const int64_t C = Xin.shape()[1];
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t ch = 0; ch < C; ++ch) Xin.f32()[r * C + ch] /= f.scales[size_t(ch)];
  }
  // Scale equivalence, Y = (W s)(X / s): the folded layer in full precision gives the original output.
  // Bound: each product gains at most two roundings (w*s, x/s) on top of a K-term float sum, and the
  // layer chains two linears per block: 4*K*eps of the output's magnitude, K the widest input.
  {
    Tensor y(DType::kF32, {c.L, H});
    std::copy(c.x.f32(), c.x.f32() + c.L * H, y.f32());
    c.model.decoder_layer(l, y.f32(), c.L, 0, kbuf.f32(), vbuf.f32(), nullptr);
    double max_ref = 0, max_diff = 0;
    for (int64_t i = 0; i < c.L * H; ++i) {
      max_ref = std::max(max_ref, double(std::fabs(ref.f32()[i])));
      max_diff = std::max(max_diff, double(std::fabs(y.f32()[i] - ref.f32()[i])));
    }
    const double bound = 4.0 * double(std::max(cfg.intermediate_size, cfg.hidden_size)) * kF32Eps * max_ref;
    if (!(max_diff <= bound))
      return error("{}: AWQ scale folding changed the layer's full-precision output by {:.3g} (bound {:.3g})",
                   layer_prefix(l), max_diff, bound);
  }
  if (c.opt.awq_clip) {
    for (const LinearSpec& s : kLlamaLinears) {
      // Not q/k: their outputs meet in QK^T, where clipping error is amplified (llm-awq skips them too).
      if (s.weight == &LayerWeights::wq || s.weight == &LayerWeights::wk) continue;
      Tensor& W = lw.*s.weight;
      const Tensor& Xin = X[int(s.input)];
      QF_ASSIGN_OR_RETURN(Tensor max_val, awq_search_clip(W.f32(), W.shape()[0], W.shape()[1], Xin.f32(), rows,
                                                          c.opt.quant, c.opt.awq, linear_name(l, s)));
      QF_RETURN_IF_ERROR(awq_apply_clip(W.f32(), W.shape()[0], W.shape()[1], max_val, c.opt.quant.group_size,
                                        linear_name(l, s)));
    }
  }
  return Status::ok();
}

}  // namespace

Expected<PipelineReport> quantize_model(LlamaModel& model, const std::vector<std::vector<int32_t>>& calibration,
                                        const PipelineOptions& opt, QuantizedLinears* quantized,
                                        PipelineResume* resume, const LayerDoneFn& on_layer_done,
                                        const LayerStream* layers) {
  const auto t0 = Clock::now();
  const ModelConfig& cfg = model.config();
  ModelWeights& w = model.mutable_weights();
  if (w.has_packed())
    return error("the model holds packed int4 linears; quantize from a full-precision checkpoint "
                 "(or load the packed one dequantized)");
  // Shapes from the config: with `layers`, the layers are not loaded yet.
  for (const TensorSlot& s : tensor_slots(cfg, w))
    if (s.packed) {
      const std::string base = s.name.substr(0, s.name.size() - std::string(".weight").size());
      QF_RETURN_IF_ERROR(validate_quant_config(opt.quant, s.shape[1], base));
    }
  PipelineReport rep;
  const bool needs_calib = opt.method != Method::kRtn ||
                           (opt.keep_fp_fraction > 0 && opt.keep_fp_by == SalientBy::kActivation);
  const int64_t N = int64_t(calibration.size());
  const int64_t L = N ? int64_t(calibration[0].size()) : 0;
  if (needs_calib && (N == 0 || L < 2))
    return error("{}: calibration data is required (got {} windows of {} tokens)", method_name(opt.method), N, L);
  for (const auto& win : calibration)
    if (int64_t(win.size()) != L) return error("calibration windows must all have {} tokens", L);
  rep.calibration_tokens = needs_calib ? N * L : 0;

  // Inputs of layer 0: embeddings of every window, [N*L, H] (or, resuming, the inputs of the next layer).
  const int64_t H = cfg.hidden_size;
  Tensor x;
  int first = 0;
  if (resume) {
    first = resume->next_layer;
    if (first < 0 || first > cfg.num_hidden_layers)
      return error("resume: next layer {} outside [0, {}]", first, cfg.num_hidden_layers);
    if (needs_calib && first > 0 && !(resume->x.shape() == Shape{N * L, H}))
      return error("resume: saved activations have shape {}, this run needs [{}, {}]", resume->x.shape().str(), N * L, H);
    rep = std::move(resume->report);
  }
  if (needs_calib && first > 0) {
    x = std::move(resume->x);
  } else if (needs_calib) {
    x = Tensor(DType::kF32, {N * L, H});
    const float* E = w.embed.f32();
    for (int64_t s = 0; s < N; ++s)
      for (int64_t t = 0; t < L; ++t) {
        const int32_t id = calibration[size_t(s)][size_t(t)];
        if (id < 0 || id >= cfg.vocab_size) return error("calibration token id {} outside the vocabulary", id);
        std::copy(E + int64_t(id) * H, E + (int64_t(id) + 1) * H, x.f32() + (s * L + t) * H);
      }
  }
  rep.calibration_tokens = needs_calib ? N * L : 0;
  // The GPTQ backend, once per run and before any layer is touched: no GPU (or no CUDA in this build) fails
  // here, naming the first linear it was wanted for, with nothing quantized or handed to on_layer_done.
  std::unique_ptr<GptqOps> gptq_ops;
  const bool runs_gptq = opt.method == Method::kGptq || opt.method == Method::kAwqGptq;
  if (runs_gptq && opt.device == Device::kCuda && first < int(cfg.num_hidden_layers)) {
    Expected<std::unique_ptr<GptqOps>> ops = make_cuda_gptq_ops(opt.cuda_device);
    if (!ops) return ops.status().with_context(linear_name(first, kLlamaLinears[0]));
    gptq_ops = std::move(*ops);
  }
  if (quantized) {
    if (opt.keep_fp_fraction > 0)
      return error("the keep-fp ablation leaves weights off the quantization grid; they cannot be kept as codes");
    // Resuming keeps the layers the caller restored.
    if (!resume || quantized->layers.size() != size_t(cfg.num_hidden_layers)) {
      quantized->layers.clear();
      quantized->layers.resize(size_t(cfg.num_hidden_layers));
    }
    for (auto& layer : quantized->layers) layer.resize(kLlamaLinears.size());
  }
  Ctx c{model, opt, rep, x, N, L, quantized, gptq_ops.get()};
  Progress bar(fmt::format("quantize {}", method_name(opt.method)), cfg.num_hidden_layers, opt.progress);
  bar.update(first);
  for (int l = first; l < int(cfg.num_hidden_layers); ++l) {
    if (layers) QF_RETURN_IF_ERROR(layers->load(l));
    switch (opt.method) {
      case Method::kRtn:
        QF_RETURN_IF_ERROR(rtn_layer(c, l));
        break;
      case Method::kGptq:
        QF_RETURN_IF_ERROR(gptq_layer(c, l));
        break;
      case Method::kAwq:
        QF_RETURN_IF_ERROR(awq_layer(c, l));
        QF_RETURN_IF_ERROR(rtn_layer(c, l));
        break;
      case Method::kAwqGptq:
        QF_RETURN_IF_ERROR(awq_layer(c, l));
        QF_RETURN_IF_ERROR(gptq_layer(c, l));
        break;
    }
    // The layer's outputs with all its linears quantized feed the next layer.
    if (needs_calib) advance(c, l);
    if (on_layer_done) QF_RETURN_IF_ERROR(on_layer_done(l, rep, x));
    if (layers) layers->release(l);
    bar.update(l + 1);
  }
  bar.finish();
  rep.seconds = seconds_since(t0);
  return rep;
}

}  // namespace qforge::quant
