#include "quant/pipeline.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <future>
#include <random>

#include "core/parallel.h"
#include "core/progress.h"
#include "core/trace.h"
#include "model/layer_spec.h"
#include "ops/ops.h"
#include "quant/cuda/gptq_cuda_ops.h"
#include "quant/cuda/layer_ops_cuda.h"
#include "quant/hessian.h"
#include "quant/layer_ops.h"
#include "quant/rtn.h"

namespace qforge::quant {

Status parse_device(std::string_view spec, Device* device, std::vector<int>* cuda_devices) {
  if (spec == "cpu") {
    *device = Device::kCpu;
    cuda_devices->assign(1, 0);
    return Status::ok();
  }
  if (spec == "cuda") {
    *device = Device::kCuda;
    cuda_devices->assign(1, 0);
    return Status::ok();
  }
  if (!spec.starts_with("cuda:"))
    return error("--device {}: expected cpu, cuda, cuda:N, cuda:N,M,... or cuda:all", spec);
  const std::string_view list = spec.substr(5);
  std::vector<int> devs;
  if (list == "all") {
    const Expected<int> count = cuda_device_count();
    if (!count) return count.status().with_context(fmt::format("--device {}", spec));
    const int n = *count;
    if (n < 1) return error("--device {}: no CUDA device is visible", spec);
    for (int d = 0; d < n; ++d) devs.push_back(d);
  } else {
    size_t at = 0;
    while (at <= list.size()) {
      const size_t end = std::min(list.find(',', at), list.size());
      const std::string_view part = list.substr(at, end - at);
      int d = -1;
      const auto [p, ec] = std::from_chars(part.data(), part.data() + part.size(), d);
      if (part.empty() || ec != std::errc() || p != part.data() + part.size() || d < 0)
        return error("--device {}: '{}' is not a GPU number", spec, part);
      if (std::find(devs.begin(), devs.end(), d) != devs.end())
        return error("--device {}: GPU {} is listed twice", spec, d);
      devs.push_back(d);
      at = end + 1;
    }
  }
  *device = Device::kCuda;
  *cuda_devices = std::move(devs);
  return Status::ok();
}

std::string device_name(Device device, const std::vector<int>& cuda_devices) {
  if (device == Device::kCpu) return "cpu";
  if (cuda_devices.size() == 1 && cuda_devices[0] == 0) return "cuda";
  return fmt::format("cuda:{}", fmt::join(cuda_devices, ","));
}

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

// Adds the scope's wall time to `acc` (PipelineTimes).
struct Timed {
  double& acc;
  Clock::time_point t0 = Clock::now();
  ~Timed() { acc += seconds_since(t0); }
};

struct Ctx {
  LlamaModel& model;
  const PipelineOptions& opt;
  PipelineReport& rep;
  LayerOps& ops;  // holds the [N*L, H] inputs of the current layer
  int64_t N, L;
  QuantizedLinears* quantized;  // null: not kept
  GptqOps* gptq_ops;            // the GPTQ backend (Device::kCuda); null: the CPU reference backend
};

// The report's error statistics of W against its quantized values Q (with H: the output error too).
Status fill_errors(Ctx& c, const float* W, const Tensor& Q, const Tensor* H, LinearReport& r) {
  Timed t{c.rep.times.errors};
  return c.ops.linear_errors(W, Q, H, &r.weight_mse, H ? &r.output_error : nullptr)
      .with_context(r.name);
}

// Hands layer l's weights, as the driver changed them, to the backend again.
Status reload(Ctx& c, int l) {
  Timed t{c.rep.times.load};
  return c.ops.load_layer(l);
}

// Keeps the quantized form of linear `s` of layer l when the caller asked for it.
void keep_quantized(Ctx& c, int l, const LinearSpec& s, QuantizedLinear&& q) {
  if (!c.quantized) return;
  c.quantized->layers[size_t(l)][size_t(&s - kLlamaLinears.data())] = std::move(q);
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
  const bool keep = c.opt.keep_fp_fraction > 0;
  std::vector<double> act_mean[4];
  if (keep && c.opt.keep_fp_by == SalientBy::kActivation) {
    SlotMeans means;
    QF_RETURN_IF_ERROR(c.ops.awq_capture(l, layer_prefix(l), &means));
    c.ops.awq_release();
    for (LinearInput slot : kLlamaInputOrder)
      act_mean[int(slot)].assign(means[size_t(slot)].begin(), means[size_t(slot)].end());
  }
  for (const LinearSpec& s : kLlamaLinears) {
    const auto ts = Clock::now();
    Tensor& W = lw.*s.weight;
    LinearReport r{linear_name(l, s), l, W.shape()[0], W.shape()[1]};
    Tensor Q;
    QuantizedLinear q;
    {
      Timed t{c.rep.times.rtn};
      QF_ASSIGN_OR_RETURN(q, rtn_quantize(W.f32(), r.out, r.in, c.opt.quant, r.name));
      Q = q.dequantize();
    }
    if (keep) {
      const int64_t k = std::max<int64_t>(1, int64_t(std::llround(c.opt.keep_fp_fraction * double(r.in))));
      const uint64_t seed = c.opt.seed * 1000003u + uint64_t(l) * 16u + uint64_t(&s - kLlamaLinears.data());
      for (int64_t ch : salient_channels(W, &act_mean[int(s.input)], c.opt.keep_fp_by, k, seed))
        for (int64_t o = 0; o < r.out; ++o) Q.f32()[o * r.in + ch] = W.f32()[o * r.in + ch];
    }
    QF_RETURN_IF_ERROR(fill_errors(c, W.f32(), Q, nullptr, r));
    W = std::move(Q);
    keep_quantized(c, l, s, std::move(q));
    r.seconds = seconds_since(ts);
    c.rep.linears.push_back(std::move(r));
  }
  return reload(c, l);
}

// True-sequential GPTQ: one capture pass per input slot, each after the previous slot's linears were
// replaced by their quantized values.
Status gptq_layer(Ctx& c, int l) {
  LayerWeights& lw = c.model.mutable_weights().layers[size_t(l)];
  for (LinearInput slot : kLlamaInputOrder) {
    Tensor H;
    {
      Timed t{c.rep.times.hessians};
      QF_RETURN_IF_ERROR(c.ops.hessian(l, slot, layer_prefix(l) + linear_input_name(slot), &H));
    }
    for (const LinearSpec& s : kLlamaLinears) {
      if (s.input != slot) continue;
      const auto ts = Clock::now();
      Tensor& W = lw.*s.weight;
      LinearReport r{linear_name(l, s), l, W.shape()[0], W.shape()[1]};
      // One driver either way; errors from the CUDA backend come back prefixed with the linear's name.
      const auto tg = Clock::now();
      GptqOptions go = c.opt.gptq;
      go.hessian_id = uint64_t(l) * 4 + uint64_t(slot) + 1;  // this slot's H, shared by its linears
      QF_ASSIGN_OR_RETURN(GptqResult g,
                          c.gptq_ops ? gptq_quantize(W.f32(), r.out, r.in, H, c.opt.quant, go, r.name, *c.gptq_ops)
                                     : gptq_quantize(W.f32(), r.out, r.in, H, c.opt.quant, go, r.name));
      Tensor Q;
      {
        TraceScope tr("dequantize");
        Q = g.q.dequantize();
      }
      c.rep.times.gptq += seconds_since(tg);
      QF_RETURN_IF_ERROR(fill_errors(c, W.f32(), Q, &H, r));
      r.gptq_loss = g.loss;
      r.damp_percent = g.damp_percent;
      r.dead_columns = g.dead_columns;
      {
        TraceScope tr("replace W, keep codes");
        W = std::move(Q);
        keep_quantized(c, l, s, std::move(g.q));
      }
      r.seconds = seconds_since(ts);
      c.rep.linears.push_back(std::move(r));
    }
    // The next slot's inputs (and the advance) see this slot's linears quantized.
    {
      Timed t{c.rep.times.load};
      QF_RETURN_IF_ERROR(c.ops.load_linears(l, slot));
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

// The first min(L, kAwqCheckTokens) tokens of window 0 through layer l on the host, in place (causal: a
// window's prefix does not see the rest of it). AWQ's scale-equivalence check runs on them: any misfolded
// channel shows on every token; the CPU forward of a 7B layer on 16 tokens costs about one read of its weights.
constexpr int64_t kAwqCheckTokens = 16;
// y [T, H] <- layer l (y) on the host, positions 0..T-1.
void layer_forward_host(const LlamaModel& m, int l, Tensor& y) {
  const int64_t T = y.shape()[0];
  Tensor kbuf(DType::kF32, {T, m.config().kv_dim()}), vbuf(DType::kF32, {T, m.config().kv_dim()});
  m.decoder_layer(l, y.f32(), T, 0, kbuf.f32(), vbuf.f32(), nullptr);
}

// The first min(L, kAwqCheckTokens) rows of the current activations (the check's input).
Status prefix_inputs(Ctx& c, Tensor& y) {
  y = Tensor(DType::kF32, {std::min(c.L, kAwqCheckTokens), c.model.config().hidden_size});
  return c.ops.input_rows(y.shape()[0], y.f32());
}

// AWQ on one layer: capture the FP inputs of every linear; search the scales of each group against the
// FP weights (as llm-awq does: all searches first, then all applied); apply them and fold 1/s; check
// the folded layer still computes the same function; search and apply clipping (not q/k); the caller
// then quantizes (RTN or GPTQ).
Status awq_layer(Ctx& c, int l) {
  const ModelConfig& cfg = c.model.config();
  LayerWeights& lw = c.model.mutable_weights().layers[size_t(l)];
  const int64_t S = c.opt.awq_search_samples > 0 ? std::min(c.opt.awq_search_samples, c.N) : c.N;
  SlotMeans means;
  auto tc = Clock::now();
  QF_RETURN_IF_ERROR(c.ops.awq_capture(l, layer_prefix(l), &means));
  c.rep.times.awq_capture += seconds_since(tc);
  const auto ts = Clock::now();
  // FP output of the layer on a prefix of the first window, for the scale-equivalence check.
  const int64_t H = cfg.hidden_size;
  // With a GPU backend it runs on host threads while the scale search below scores candidates (which reads the
  // weights and never writes them); it is joined before the scales are applied. With the CPU backend it runs
  // first, alone (two BLAS users at once would share the cores and need a thread-safe BLAS).
  Tensor ref;
  QF_RETURN_IF_ERROR(prefix_inputs(c, ref));
  std::future<void> ref_job = std::async(c.ops.uses_host_blas() ? std::launch::deferred : std::launch::async, [&] {
    TraceScope tr("awq reference prefix (cpu)");
    layer_forward_host(c.model, l, ref);
  });
  struct JoinOnExit {
    std::future<void>& f;
    ~JoinOnExit() {
      if (f.valid()) f.wait();
    }
  } join_ref{ref_job};

  struct Found {
    const AwqGroup* g;
    std::vector<float> scales;
  };
  std::vector<Found> found;
  for (const AwqGroup& g : kAwqGroups) {
    AwqGroupReport gr;
    gr.layer = l;
    gr.name = layer_prefix(l) + g.name;
    const std::vector<float>& mean_abs = means[size_t(g.slot)];
    const int64_t C = int64_t(mean_abs.size());
    if (g.fold_prev) {
      const Tensor& prev = lw.*g.fold_prev;
      Status ok = awq_check_fold_into_linear_rows(prev.shape()[0], C, layer_prefix(l) + g.fold_name, gr.name);
      if (!ok) {
        gr.skipped = ok.message();
        c.rep.awq_groups.push_back(std::move(gr));
        continue;
      }
    }
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
    QF_ASSIGN_OR_RETURN(std::unique_ptr<AwqSearchOps> scorer,
                        c.ops.awq_search(l, g.slot, ws, outs, S, c.opt.quant, gr.name));
    TraceScope tr_search("awq search (driver)");
    QF_ASSIGN_OR_RETURN(ScaleResult sr,
                        awq_search_scales(mean_abs.data(), C, ws, outs, c.opt.quant, c.opt.awq, *scorer, gr.name));
    gr.best_alpha = sr.best_alpha;
    gr.err_before = sr.err_before;
    gr.err_after = sr.err_best;
    gr.top_scales = sr.top_scales(5);
    c.rep.awq_groups.push_back(std::move(gr));
    found.push_back({&g, std::move(sr.scales)});
  }
  // Apply: W[:, c] *= s, the feeding norm's gamma (or previous linear's rows) /= s, and the captured
  // inputs (used by the clip search) /= s.
  ref_job.get();
  TraceScope tr_apply("awq apply + check");
  for (const Found& f : found) {
    for (auto lin : f.g->linears) awq_apply_scales((lw.*lin).f32(), (lw.*lin).shape()[0], f.scales);
    if (f.g->fold_norm) awq_fold_into_norm((lw.*f.g->fold_norm).f32(), f.scales);
    if (f.g->fold_prev) {
      Tensor& prev = lw.*f.g->fold_prev;
      Tensor* bias = f.g->fold_prev_bias ? &(lw.*f.g->fold_prev_bias) : nullptr;
      awq_fold_into_linear_rows(prev.f32(), prev.shape()[1], bias && !bias->empty() ? bias->f32() : nullptr,
                                f.scales);
    }
    QF_RETURN_IF_ERROR(c.ops.awq_scale_inputs(f.g->slot, f.scales));
  }
  // Scale equivalence, Y = (W s)(X / s): the folded layer in full precision gives the original output.
  // Bound: each product gains at most two roundings (w*s, x/s) on top of a K-term float sum, and the
  // layer chains two linears per block: 4*K*eps of the output's magnitude, K the widest input.
  {
    Tensor y;
    QF_RETURN_IF_ERROR(prefix_inputs(c, y));
    layer_forward_host(c.model, l, y);
    double max_ref = 0, max_diff = 0;
    for (int64_t i = 0; i < ref.numel(); ++i) {
      max_ref = std::max(max_ref, double(std::fabs(ref.f32()[i])));
      max_diff = std::max(max_diff, double(std::fabs(y.f32()[i] - ref.f32()[i])));
    }
    const double bound = 4.0 * double(std::max(cfg.intermediate_size, H)) * kF32Eps * max_ref;
    if (!(max_diff <= bound))
      return error("{}: AWQ scale folding changed the layer's full-precision output by {:.3g} (bound {:.3g})",
                   layer_prefix(l), max_diff, bound);
  }
  c.rep.times.awq_search += seconds_since(ts);
  Timed tclip{c.rep.times.awq_clip};
  if (c.opt.awq_clip) {
    for (const LinearSpec& s : kLlamaLinears) {
      // Not q/k: their outputs meet in QK^T, where clipping error is amplified (llm-awq skips them too).
      if (s.weight == &LayerWeights::wq || s.weight == &LayerWeights::wk) continue;
      Tensor& W = lw.*s.weight;
      QF_ASSIGN_OR_RETURN(Tensor max_val, c.ops.awq_clip(s.input, W.f32(), W.shape()[0], W.shape()[1], c.opt.quant,
                                                         c.opt.awq, linear_name(l, s)));
      QF_RETURN_IF_ERROR(awq_apply_clip(W.f32(), W.shape()[0], W.shape()[1], max_val, c.opt.quant.group_size,
                                        linear_name(l, s)));
    }
  }
  c.ops.awq_release();
  return reload(c, l);
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
    for (const auto& win : calibration)
      for (const int32_t id : win)
        if (id < 0 || id >= cfg.vocab_size) return error("calibration token id {} outside the vocabulary", id);
    x = Tensor(DType::kF32, {N * L, H});
    const float* E = w.embed.f32();
    parallel_rows(N * L, 1024, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t id = calibration[size_t(r / L)][size_t(r % L)];
        std::copy(E + id * H, E + (id + 1) * H, x.f32() + r * H);
      }
    });
  }
  rep.calibration_tokens = needs_calib ? N * L : 0;
  // The backends, once per run and before any layer is touched: no GPU (or no CUDA in this build, or too little
  // GPU memory) fails here, naming the first linear it was wanted for, with nothing quantized or handed to
  // on_layer_done.
  std::unique_ptr<GptqOps> gptq_ops;
  std::unique_ptr<LayerOps> layer_ops;
  const bool runs_gptq = opt.method == Method::kGptq || opt.method == Method::kAwqGptq;
  const bool runs_awq = opt.method == Method::kAwq || opt.method == Method::kAwqGptq;
  if (opt.device == Device::kCuda && first < int(cfg.num_hidden_layers)) {
    const std::string at = linear_name(first, kLlamaLinears[0]);
    if (opt.cuda_devices.empty()) return error("{}: --device cuda with no GPU listed", at);
    Expected<std::unique_ptr<LayerOps>> lops = make_cuda_layer_ops(model, opt.cuda_devices, opt.gpu_gemm);
    if (!lops) return lops.status().with_context(at);
    layer_ops = std::move(*lops);
    // Each GPU holds its share of the windows (round-robin: at most ceil(N / K)); the Hessians and GPTQ's working
    // set are counted on every GPU, though only the first keeps them for long.
    const int64_t K = int64_t(opt.cuda_devices.size()), Nk = (N + K - 1) / K;
    const int64_t need = cuda_pipeline_bytes(cfg, needs_calib ? Nk : 0, needs_calib ? L : 0, opt.gpu_gemm,
                                             runs_awq || opt.keep_fp_fraction > 0, runs_gptq);
    for (int dev : opt.cuda_devices) {
      int64_t free_b = 0, total_b = 0;
      QF_RETURN_IF_ERROR(cuda_device_memory(dev, &free_b, &total_b).with_context(at));
      if (need > free_b)
        return error("{}: this run needs about {:.1f} GiB of GPU memory ({} calibration windows of {} tokens{}), "
                     "GPU {} has {:.1f} GiB free of {:.1f} GiB; lower --calib-samples (the activations and AWQ's "
                     "kept inputs grow with it) or --calib-seqlen{}",
                     at, double(need) / (1 << 30), needs_calib ? Nk : 0, L,
                     K > 1 ? fmt::format(" on each of {} GPUs", K) : std::string(), dev, double(free_b) / (1 << 30),
                     double(total_b) / (1 << 30), K > 1 ? ", or spread them over more GPUs" : "");
    }
    if (runs_gptq) {
      LayerOps* lops_ptr = layer_ops.get();
      Expected<std::unique_ptr<GptqOps>> ops = make_cuda_gptq_ops(
          opt.cuda_devices.front(), [lops_ptr](const float* host, int64_t n) { return lops_ptr->device_copy(host, n); });
      if (!ops) return ops.status().with_context(at);
      gptq_ops = std::move(*ops);
    }
  } else {
    layer_ops = make_cpu_layer_ops(model);
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
  QF_RETURN_IF_ERROR(layer_ops->set_inputs(std::move(x), N, L).with_context(linear_name(first, kLlamaLinears[0])));
  Ctx c{model, opt, rep, *layer_ops, N, L, quantized, gptq_ops.get()};
  Progress bar(fmt::format("quantize {}", method_name(opt.method)), cfg.num_hidden_layers, opt.progress);
  bar.update(first);
  // With a GPU backend the host is mostly idle while a layer computes: layer l + 1 is read (from the mapped
  // checkpoint, converted to f32) and uploaded to the GPU on another thread meanwhile, and waited for when its
  // turn comes. The CPU backend needs the host's cores itself and loads in turn.
  const bool prefetch = layers && opt.device == Device::kCuda;
  std::future<Status> next_load;
  for (int l = first; l < int(cfg.num_hidden_layers); ++l) {
    {
      Timed t{rep.times.load};
      if (layers) QF_RETURN_IF_ERROR(next_load.valid() ? next_load.get() : layers->load(l));
      QF_RETURN_IF_ERROR(layer_ops->load_layer(l));
    }
    if (prefetch && l + 1 < int(cfg.num_hidden_layers))
      next_load = std::async(std::launch::async, [layers, l, ops = layer_ops.get()] {
        QF_RETURN_IF_ERROR(layers->load(l + 1));
        // Its upload too (into a second device buffer), while layer l computes; without memory for it, load_layer
        // uploads as before.
        (void)ops->prefetch_layer(l + 1);
        return Status::ok();
      });
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
    if (needs_calib) {
      Timed t{rep.times.advance};
      QF_RETURN_IF_ERROR(layer_ops->advance(l));
    }
    if (on_layer_done) {
      QF_ASSIGN_OR_RETURN(const Tensor* next_inputs, layer_ops->host_inputs());
      QF_RETURN_IF_ERROR(on_layer_done(l, rep, *next_inputs));
    }
    if (layers) layers->release(l);
    bar.update(l + 1);
  }
  bar.finish();
  rep.seconds = seconds_since(t0);
  return rep;
}

}  // namespace qforge::quant
