// qforge eval --model DIR --data FILE [--ctx 2048] [--max-windows N] [--ref DIR] [--json FILE]
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>

#include "core/mapped_file.h"
#include "eval/perplexity.h"
#include "model/loader.h"
#include "ops/ops.h"
#include "tools/commands.h"

namespace qforge::tools {

namespace {

struct EvalArgs {
  std::string model, data, ref, json_out;
  int64_t ctx = 2048, max_windows = 0;
  int threads = 0;
  bool w4 = false;
};

Status run_eval(const EvalArgs& a) {
  ops::set_num_threads(a.threads);
  QF_ASSIGN_OR_RETURN(LoadedModel m, load_model(a.model, LoadOptions{.pack_q4 = a.w4}));
  LoadedModel r;
  if (!a.ref.empty()) {
    QF_ASSIGN_OR_RETURN(r, load_model(a.ref));
  }
  QF_ASSIGN_OR_RETURN(std::string text, read_text_file(a.data));
  if (text.empty()) return error("{}: the evaluation text is empty", a.data);
  const auto t0 = std::chrono::steady_clock::now();
  // Tokenized once, as `tokenizer(text)` does in the papers' evaluation code.
  std::vector<int32_t> ids = m.tokenizer.encode(text, /*add_special=*/true);
  const double tok_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print(stderr, "eval: {} -> {} tokens ({:.1f}s)\n", a.data, ids.size(), tok_s);
  EvalOptions opt;
  opt.ctx = a.ctx;
  opt.max_windows = a.max_windows;
  QF_ASSIGN_OR_RETURN(EvalResult res, evaluate_perplexity(*m.model, ids, opt, r.model.get()));

  fmt::print("model       {}\n", a.model);
  fmt::print("data        {} ({} tokens)\n", a.data, ids.size());
  fmt::print("windows     {} x {} tokens, {} predicted tokens scored\n", res.windows, a.ctx, res.tokens_scored);
  fmt::print("perplexity  {:.4f} +/- {:.4f}\n", res.perplexity, res.ppl_stderr);
  fmt::print("mean NLL    {:.6f} +/- {:.6f} nats/token\n", res.mean_nll, res.nll_stderr);
  if (res.has_ref) {
    fmt::print("reference   {}\n", a.ref);
    fmt::print("KL(ref||m)  {:.6f} +/- {:.6f} nats/token\n", res.mean_kl, res.kl_stderr);
    fmt::print("top-1 agree {:.4f}\n", res.top1_agreement);
  }
  fmt::print("time        {:.1f}s ({:.0f} tokens/s)\n", res.seconds,
             double(res.windows * a.ctx) / (res.seconds > 0 ? res.seconds : 1));
  if (!a.json_out.empty()) {
    nlohmann::json j = {{"model", a.model}, {"data", a.data}, {"ctx", a.ctx}, {"windows", res.windows},
                        {"tokens_in_file", ids.size()}, {"tokens_scored", res.tokens_scored},
                        {"perplexity", res.perplexity}, {"ppl_stderr", res.ppl_stderr},
                        {"mean_nll", res.mean_nll}, {"nll_stderr", res.nll_stderr}, {"seconds", res.seconds}};
    if (res.has_ref) {
      j["ref"] = a.ref;
      j["mean_kl"] = res.mean_kl;
      j["kl_stderr"] = res.kl_stderr;
      j["top1_agreement"] = res.top1_agreement;
    }
    const std::string s = j.dump(2) + "\n";
    QF_RETURN_IF_ERROR(write_file_atomic(a.json_out, s.data(), s.size()));
  }
  return Status::ok();
}

}  // namespace

Command make_eval_command() {
  auto args = std::make_shared<EvalArgs>();
  Command c;
  c.declare = [args](CLI::App& app) {
    CLI::App* sub = app.add_subcommand("eval", "Perplexity (and KL divergence against a reference) on a text file");
    sub->add_option("--model", args->model, "model directory or .gguf file")->required();
    sub->add_option("--data", args->data, "evaluation text file")->required()->check(CLI::ExistingFile);
    sub->add_option("--ctx", args->ctx, "window length in tokens")->check(CLI::Range(int64_t(2), int64_t(1) << 20));
    sub->add_option("--max-windows", args->max_windows, "evaluate at most N windows (0: all)")
        ->check(CLI::NonNegativeNumber);
    sub->add_option("--ref", args->ref, "reference model for KL divergence and top-1 agreement");
    sub->add_option("--json", args->json_out, "also write the result as JSON to this file");
    sub->add_flag("--w4", args->w4,
                  "GGUF: run the Q4_0/Q4_1 linears through the int4 kernels (AWQ/GPTQ checkpoints always do)");
    sub->add_option("--threads", args->threads, "BLAS threads (0: default)")->check(CLI::NonNegativeNumber);
    return sub;
  };
  c.run = [args]() { return exit_code(run_eval(*args)); };
  return c;
}

}  // namespace qforge::tools
