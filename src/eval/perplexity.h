// Perplexity as the GPTQ and AWQ papers compute it: the whole text tokenized once, cut into
// non-overlapping windows of ctx tokens (the tail shorter than ctx dropped), mean NLL over every
// predicted token (ctx-1 per window). With a reference model: mean KL(P_ref || P_model) and top-1
// agreement on the same positions.
#pragma once

#include <cstdint>
#include <span>

#include "core/status.h"
#include "model/llama.h"

namespace qforge {

struct EvalOptions {
  int64_t ctx = 2048;
  int64_t max_windows = 0;  // 0: all
  bool progress = true;
};

struct EvalResult {
  int64_t windows = 0;
  int64_t tokens_scored = 0;  // windows * (ctx - 1)
  double mean_nll = 0;        // nats per token
  double nll_stderr = 0;      // standard error of mean_nll (tokens treated as independent)
  double perplexity = 0;      // exp(mean_nll)
  double ppl_stderr = 0;      // delta method: perplexity * nll_stderr
  bool has_ref = false;
  double mean_kl = 0;         // nats per token, KL(P_ref || P_model)
  double kl_stderr = 0;
  double top1_agreement = 0;  // fraction of positions where both argmaxes agree
  double seconds = 0;
};

Expected<EvalResult> evaluate_perplexity(const LlamaModel& model, std::span<const int32_t> tokens,
                                         const EvalOptions& opt, const LlamaModel* ref = nullptr);

// The reference's final hidden states of every evaluation window ([ctx, H] each), computed once, so
// that scoring many quantized models against one reference costs one reference forward in all.
struct ReferenceHidden {
  const LlamaModel* model = nullptr;  // supplies the LM head
  std::vector<Tensor> windows;
};
Expected<ReferenceHidden> compute_reference_hidden(const LlamaModel& ref, std::span<const int32_t> tokens,
                                                   const EvalOptions& opt);
// As above, with the reference's hidden states precomputed by compute_reference_hidden (same tokens
// and options).
Expected<EvalResult> evaluate_perplexity(const LlamaModel& model, std::span<const int32_t> tokens,
                                         const EvalOptions& opt, const ReferenceHidden& ref);

}  // namespace qforge
