#include "eval/perplexity.h"

#include <chrono>
#include <cmath>
#include <functional>
#include <vector>

#include "core/progress.h"
#include "ops/ops.h"

namespace qforge {

namespace {

}  // namespace

namespace {

Expected<int64_t> count_windows(const LlamaModel& model, std::span<const int32_t> tokens, const EvalOptions& opt) {
  const int64_t ctx = opt.ctx;
  if (ctx < 2) return error("eval: --ctx must be at least 2, got {}", ctx);
  if (ctx > model.config().max_position_embeddings)
    return error("eval: --ctx {} exceeds the model's max_position_embeddings {}", ctx,
                 model.config().max_position_embeddings);
  int64_t n_windows = int64_t(tokens.size()) / ctx;
  if (n_windows == 0)
    return error("eval: the text has {} tokens, fewer than one window of --ctx {}", tokens.size(), ctx);
  if (opt.max_windows > 0) n_windows = std::min(n_windows, opt.max_windows);
  return n_windows;
}

// The shared scoring loop. `ref_hidden(w)` gives the reference's hidden states of window w (or null).
Expected<EvalResult> score(const LlamaModel& model, std::span<const int32_t> tokens, const EvalOptions& opt,
                           const LlamaModel* ref, const std::function<Expected<Tensor>(int64_t)>& ref_hidden);

}  // namespace

Expected<ReferenceHidden> compute_reference_hidden(const LlamaModel& ref, std::span<const int32_t> tokens,
                                                   const EvalOptions& opt) {
  QF_ASSIGN_OR_RETURN(int64_t n_windows, count_windows(ref, tokens, opt));
  ReferenceHidden out;
  out.model = &ref;
  KVCache cache = ref.make_cache(opt.ctx);
  Progress bar("reference", n_windows, opt.progress);
  for (int64_t w = 0; w < n_windows; ++w) {
    cache.reset();
    QF_ASSIGN_OR_RETURN(Tensor h, ref.forward_hidden(tokens.data() + w * opt.ctx, opt.ctx, cache));
    out.windows.push_back(std::move(h));
    bar.update(w + 1);
  }
  bar.finish();
  return out;
}

Expected<EvalResult> evaluate_perplexity(const LlamaModel& model, std::span<const int32_t> tokens,
                                         const EvalOptions& opt, const ReferenceHidden& ref) {
  QF_ASSIGN_OR_RETURN(int64_t n_windows, count_windows(model, tokens, opt));
  if (int64_t(ref.windows.size()) != n_windows || !ref.model)
    return error("eval: reference hidden states cover {} windows, the evaluation needs {}", ref.windows.size(),
                 n_windows);
  return score(model, tokens, opt, ref.model, [&](int64_t w) -> Expected<Tensor> {
    Tensor t(DType::kF32, ref.windows[size_t(w)].shape());
    std::copy(ref.windows[size_t(w)].f32(), ref.windows[size_t(w)].f32() + t.numel(), t.f32());
    return t;
  });
}

Expected<EvalResult> evaluate_perplexity(const LlamaModel& model, std::span<const int32_t> tokens,
                                         const EvalOptions& opt, const LlamaModel* ref) {
  KVCache ref_cache = ref ? ref->make_cache(opt.ctx) : KVCache{};
  return score(model, tokens, opt, ref, [&](int64_t w) -> Expected<Tensor> {
    ref_cache.reset();
    return ref->forward_hidden(tokens.data() + w * opt.ctx, opt.ctx, ref_cache);
  });
}

namespace {

Expected<EvalResult> score(const LlamaModel& model, std::span<const int32_t> tokens, const EvalOptions& opt,
                           const LlamaModel* ref, const std::function<Expected<Tensor>(int64_t)>& ref_hidden) {
  const int64_t ctx = opt.ctx;
  QF_ASSIGN_OR_RETURN(int64_t n_windows, count_windows(model, tokens, opt));
  const int64_t V = model.config().vocab_size;
  if (ref && ref->config().vocab_size != V)
    return error("eval: reference vocabulary {} differs from the model's {}", ref->config().vocab_size, V);

  const auto t0 = std::chrono::steady_clock::now();
  KVCache cache = model.make_cache(ctx);
  constexpr int64_t kRowsPerChunk = 64;
  std::vector<float> logits(size_t(kRowsPerChunk * V)), ref_logits(ref ? size_t(kRowsPerChunk * V) : 0);

  double sum_nll = 0, sum_nll2 = 0, sum_kl = 0, sum_kl2 = 0;
  int64_t n = 0, agree = 0;
  Progress bar("eval", n_windows, opt.progress);
  for (int64_t w = 0; w < n_windows; ++w) {
    const int32_t* win = tokens.data() + w * ctx;
    cache.reset();
    QF_ASSIGN_OR_RETURN(Tensor hidden, model.forward_hidden(win, ctx, cache));
    Tensor ref_h;
    if (ref) {
      QF_ASSIGN_OR_RETURN(ref_h, ref_hidden(w));
    }
    const int64_t H = model.config().hidden_size, RH = ref ? ref->config().hidden_size : 0;
    for (int64_t r0 = 0; r0 < ctx - 1; r0 += kRowsPerChunk) {
      const int64_t rows = std::min(kRowsPerChunk, ctx - 1 - r0);
      model.logits(hidden.f32() + r0 * H, rows, logits.data());
      if (ref) ref->logits(ref_h.f32() + r0 * RH, rows, ref_logits.data());
      for (int64_t r = 0; r < rows; ++r) {
        const float* lr = logits.data() + r * V;
        int64_t am = 0;
        const double lse = ops::logsumexp_row(lr, V, &am);
        const double nll = lse - double(lr[win[r0 + r + 1]]);
        sum_nll += nll;
        sum_nll2 += nll * nll;
        ++n;
        if (ref) {
          const float* pr = ref_logits.data() + r * V;
          int64_t ref_am = 0;
          const double ref_lse = ops::logsumexp_row(pr, V, &ref_am);
          // Rounding can give a tiny negative value for nearly identical rows.
          const double kl = std::max(ops::kl_row(pr, ref_lse, lr, lse, V), 0.0);
          sum_kl += kl;
          sum_kl2 += kl * kl;
          agree += (am == ref_am);
        }
      }
    }
    bar.update(w + 1, fmt::format("ppl {:.4f}", std::exp(sum_nll / double(n))));
  }
  bar.finish();

  EvalResult res;
  res.windows = n_windows;
  res.tokens_scored = n;
  res.mean_nll = sum_nll / double(n);
  const double var = std::max(0.0, sum_nll2 / double(n) - res.mean_nll * res.mean_nll);
  res.nll_stderr = std::sqrt(var / double(n > 1 ? n - 1 : 1));
  res.perplexity = std::exp(res.mean_nll);
  res.ppl_stderr = res.perplexity * res.nll_stderr;
  if (ref) {
    res.has_ref = true;
    res.mean_kl = sum_kl / double(n);
    const double kvar = std::max(0.0, sum_kl2 / double(n) - res.mean_kl * res.mean_kl);
    res.kl_stderr = std::sqrt(kvar / double(n > 1 ? n - 1 : 1));
    res.top1_agreement = double(agree) / double(n);
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace

}  // namespace qforge
