// qforge compare: the AWQ-vs-GPTQ table on one model. For FP and each method x bit width: WikiText-2
// perplexity, KL divergence and top-1 agreement against FP on the same windows, quantization wall time
// and peak memory; optionally the same with calibration text from another domain, and the ablations
// behind AWQ (keep 1% of input channels in FP by activation / weight / random; scale every channel with
// alpha = 1 instead of the searched scales).
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <fstream>

#include "core/mapped_file.h"
#include "eval/perplexity.h"
#include "model/loader.h"
#include "ops/ops.h"
#include "quant/calibration.h"
#include "quant/pipeline.h"
#include "tools/commands.h"

namespace qforge::tools {

namespace {

struct CompareArgs {
  std::string model, calib, calib_other, data, json_out, device = "cpu", gpu_gemm = "bf16";
  std::vector<int> bits = {4, 3};
  std::vector<std::string> methods = {"rtn", "gptq", "gptq-act", "awq", "awq-gptq"};
  int64_t group_size = 64, ctx = 2048, max_windows = 0, calib_samples = 128, calib_seqlen = 512;
  int64_t awq_search_samples = 0;
  uint64_t seed = 0;
  bool ablations = false;
  int threads = 0;
};

// VmRSS or VmHWM of this process from /proc/self/status, in bytes.
int64_t proc_status_bytes(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string k = std::string(key) + ":";
  while (std::getline(f, line))
    if (line.rfind(k, 0) == 0) return std::stoll(line.substr(k.size())) * 1024;  // "VmRSS:   1234 kB"
  return 0;
}

struct Row {
  std::string name, calib;
  int bits = 16;
  EvalResult eval;
  double quant_seconds = 0;
  // Peak RSS of quantization above the process's RSS when it started: the model copy being quantized,
  // the calibration activations, Hessians and scratch (measured in a child process, see below).
  double peak_mb = 0;
  std::string error;
};

ModelWeights clone_weights(const ModelConfig& c, const ModelWeights& src) {
  ModelWeights dst;
  auto from = tensor_slots(c, src);
  auto to = tensor_slots(c, dst);
  for (size_t i = 0; i < from.size(); ++i) {
    *to[i].tensor = Tensor(DType::kF32, from[i].shape);
    std::copy(from[i].tensor->f32(), from[i].tensor->f32() + from[i].tensor->numel(), to[i].tensor->f32());
  }
  return dst;
}

struct Variant {
  std::string name;
  quant::PipelineOptions opt;
};

// A method name of the table -> pipeline options.
Expected<Variant> variant(const std::string& m, int bits, const CompareArgs& a) {
  Variant v;
  v.name = m;
  auto& o = v.opt;
  o.quant.bits = bits;
  o.quant.group_size = a.group_size;
  o.awq_search_samples = a.awq_search_samples;
  o.seed = a.seed;
  o.progress = false;
  // Every method's per-layer work on the GPU (forwards, Hessians, GPTQ, AWQ); drivers and evaluation on the CPU.
  QF_RETURN_IF_ERROR(quant::parse_device(a.device, &o.device, &o.cuda_devices));
  o.gpu_gemm = a.gpu_gemm == "f32" ? quant::GpuGemm::kF32 : a.gpu_gemm == "tf32" ? quant::GpuGemm::kTF32
                                                                                : quant::GpuGemm::kBF16;
  if (m == "rtn") o.method = quant::Method::kRtn;
  else if (m == "gptq") o.method = quant::Method::kGptq;
  else if (m == "gptq-act") { o.method = quant::Method::kGptq; o.gptq.act_order = true; o.gptq.static_groups = true; }
  else if (m == "awq") { o.method = quant::Method::kAwq; o.quant.grid = quant::QuantGrid::kAwq; }
  else if (m == "awq-gptq") o.method = quant::Method::kAwqGptq;
  else if (m == "rtn-keep1%-act") { o.method = quant::Method::kRtn; o.keep_fp_fraction = 0.01; o.keep_fp_by = quant::SalientBy::kActivation; }
  else if (m == "rtn-keep1%-weight") { o.method = quant::Method::kRtn; o.keep_fp_fraction = 0.01; o.keep_fp_by = quant::SalientBy::kWeight; }
  else if (m == "rtn-keep1%-random") { o.method = quant::Method::kRtn; o.keep_fp_fraction = 0.01; o.keep_fp_by = quant::SalientBy::kRandom; }
  else if (m == "awq-all-alpha1") { o.method = quant::Method::kAwq; o.quant.grid = quant::QuantGrid::kAwq; o.awq_fixed_alpha = 1.0; o.awq_clip = false; }
  else if (m == "awq-noclip") { o.method = quant::Method::kAwq; o.quant.grid = quant::QuantGrid::kAwq; o.awq_clip = false; }
  else return error("--methods: unknown method '{}' (known: rtn, gptq, gptq-act, awq, awq-gptq)", m);
  return v;
}

Status run_compare(const CompareArgs& a) {
  ops::set_num_threads(a.threads);
  QF_ASSIGN_OR_RETURN(LoadedModel fp, load_model(a.model));
  const ModelConfig& cfg = fp.model->config();
  QF_ASSIGN_OR_RETURN(std::string text, read_text_file(a.data));
  std::vector<int32_t> ids = fp.tokenizer.encode(text, true);
  EvalOptions eo;
  eo.ctx = a.ctx;
  eo.max_windows = a.max_windows;
  fmt::print(stderr, "compare: FP reference on {} ({} tokens)\n", a.data, ids.size());
  QF_ASSIGN_OR_RETURN(ReferenceHidden ref, compute_reference_hidden(*fp.model, ids, eo));
  eo.progress = false;

  auto calib_windows = [&](const std::string& path) -> Expected<std::vector<std::vector<int32_t>>> {
    QF_ASSIGN_OR_RETURN(std::string t, quant::read_calibration_text(path));
    return quant::sample_calibration_windows(fp.tokenizer.encode(t), a.calib_samples, a.calib_seqlen, a.seed, path);
  };
  QF_ASSIGN_OR_RETURN(auto calib, calib_windows(a.calib));
  std::vector<std::vector<int32_t>> calib_other;
  if (a.calib_other == "model") {
    fmt::print(stderr, "compare: sampling {} x {} calibration tokens from the model itself (seed {})\n",
               a.calib_samples, a.calib_seqlen, a.seed);
    QF_ASSIGN_OR_RETURN(calib_other, quant::generate_calibration(*fp.model, a.calib_samples, a.calib_seqlen, a.seed, true));
  } else if (!a.calib_other.empty()) {
    QF_ASSIGN_OR_RETURN(calib_other, calib_windows(a.calib_other));
  }

  std::vector<Row> rows;
  {
    Row r;
    r.name = "fp";
    QF_ASSIGN_OR_RETURN(r.eval, evaluate_perplexity(*fp.model, ids, eo, ref));
    rows.push_back(r);
  }
  struct Job {
    std::string method;
    int bits;
    const std::vector<std::vector<int32_t>>* calib;
    std::string calib_name;
  };
  std::vector<Job> jobs;
  for (int b : a.bits)
    for (const auto& m : a.methods) jobs.push_back({m, b, &calib, a.calib});
  if (!a.calib_other.empty())
    for (int b : a.bits)
      for (const auto& m : a.methods)
        if (m != "rtn") jobs.push_back({m, b, &calib_other, a.calib_other});
  if (a.ablations) {
    const int b = *std::min_element(a.bits.begin(), a.bits.end());
    for (const char* m : {"rtn-keep1%-act", "rtn-keep1%-weight", "rtn-keep1%-random", "awq-all-alpha1", "awq-noclip"})
      jobs.push_back({m, b, &calib, a.calib});
  }
  if (a.device != "cpu")
    fmt::print(stderr, "compare: --device {}: every method's per-layer work runs on the GPU(s) ({} GEMMs); the "
                       "evaluation on the CPU; peak +MiB counts host memory only\n", a.device, a.gpu_gemm);
  const auto t_all = std::chrono::steady_clock::now();
  for (size_t j = 0; j < jobs.size(); ++j) {
    const Job& job = jobs[j];
    QF_ASSIGN_OR_RETURN(Variant v, variant(job.method, job.bits, a));
    Row r;
    r.name = v.name;
    r.calib = job.calib_name;
    r.bits = job.bits;
    fmt::print(stderr, "compare [{}/{}]: {} {}-bit g{} (calibration {}) ...\n", j + 1, jobs.size(), v.name, job.bits,
               a.group_size, job.calib_name);
    // Each configuration runs in a child process: its peak RSS (VmHWM, reset at the start) is then that
    // method's own footprint, and a crash or an out-of-memory kill costs one row, not the table.
    int fds[2];
    if (pipe(fds) != 0) return error("compare: pipe failed");
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid < 0) return error("compare: fork failed");
    if (pid == 0) {
      close(fds[0]);
      nlohmann::json out;
      { std::ofstream("/proc/self/clear_refs") << "5"; }  // reset VmHWM to the current RSS
      const int64_t start_rss = proc_status_bytes("VmRSS");
      const auto t0 = std::chrono::steady_clock::now();
      LlamaModel m(cfg, clone_weights(cfg, fp.model->weights()));
      auto rep = quant::quantize_model(m, *job.calib, v.opt);
      out["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      out["peak_mb"] = double(proc_status_bytes("VmHWM") - start_rss) / (1024.0 * 1024.0);
      if (!rep) {
        out["error"] = rep.message();
      } else {
        auto e = evaluate_perplexity(m, ids, eo, ref);
        if (!e) {
          out["error"] = e.message();
        } else {
          out["ppl"] = e->perplexity;
          out["ppl_se"] = e->ppl_stderr;
          out["nll"] = e->mean_nll;
          out["nll_se"] = e->nll_stderr;
          out["kl"] = e->mean_kl;
          out["kl_se"] = e->kl_stderr;
          out["top1"] = e->top1_agreement;
          out["windows"] = e->windows;
          out["tokens"] = e->tokens_scored;
        }
      }
      const std::string msg = out.dump();
      const ssize_t wrote = write(fds[1], msg.data(), msg.size());
      _exit(wrote == ssize_t(msg.size()) ? 0 : 3);
    }
    close(fds[1]);
    std::string msg;
    char buf[4096];
    for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) msg.append(buf, size_t(n));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || msg.empty()) {
      r.error = WIFSIGNALED(status) ? fmt::format("the child process was killed by signal {}", WTERMSIG(status))
                                    : fmt::format("the child process failed (status {})", status);
    } else {
      const auto res = nlohmann::json::parse(msg);
      r.quant_seconds = res["seconds"].get<double>();
      r.peak_mb = res["peak_mb"].get<double>();
      if (res.contains("error")) {
        r.error = res["error"].get<std::string>();
      } else {
        r.eval.perplexity = res["ppl"].get<double>();
        r.eval.ppl_stderr = res["ppl_se"].get<double>();
        r.eval.mean_nll = res["nll"].get<double>();
        r.eval.nll_stderr = res["nll_se"].get<double>();
        r.eval.mean_kl = res["kl"].get<double>();
        r.eval.kl_stderr = res["kl_se"].get<double>();
        r.eval.top1_agreement = res["top1"].get<double>();
        r.eval.windows = res["windows"].get<int64_t>();
        r.eval.tokens_scored = res["tokens"].get<int64_t>();
        r.eval.has_ref = true;
      }
    }
    if (!r.error.empty()) fmt::print(stderr, "compare: {} {}-bit failed: {}\n", v.name, job.bits, r.error);
    else
      fmt::print(stderr, "compare: {} {}-bit: ppl {:.4f}, KL {:.5f}, top-1 {:.4f}, quantized in {:.1f}s\n", v.name,
                 job.bits, r.eval.perplexity, r.eval.mean_kl, r.eval.top1_agreement, r.quant_seconds);
    rows.push_back(std::move(r));
  }

  // The table.
  fmt::print("\nWikiText-2 ({} windows x {} tokens, {} predicted tokens), group size {}, calibration {} x {} tokens\n",
             rows[0].eval.windows, a.ctx, rows[0].eval.tokens_scored, a.group_size, a.calib_samples, a.calib_seqlen);
  fmt::print("{:<20} {:>4} {:<24} {:>10} {:>8} {:>10} {:>8} {:>9} {:>9}\n", "method", "bits", "calibration", "ppl",
             "+/-", "KL", "top-1", "quant s", "peak +MiB");
  for (const Row& r : rows) {
    const std::string cal = r.calib.empty() ? "-" : r.calib.substr(r.calib.find_last_of('/') + 1);
    if (!r.error.empty()) {
      fmt::print("{:<20} {:>4} {:<24} failed: {}\n", r.name, r.bits, cal, r.error);
      continue;
    }
    fmt::print("{:<20} {:>4} {:<24} {:>10.4f} {:>8.4f} {:>10.5f} {:>8.4f} {:>9.1f} {:>9.0f}\n", r.name, r.bits, cal,
               r.eval.perplexity, r.eval.ppl_stderr, r.eval.mean_kl, r.eval.top1_agreement, r.quant_seconds, r.peak_mb);
  }
  fmt::print("total {:.1f}s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t_all).count());

  if (!a.json_out.empty()) {
    nlohmann::json j;
    j["model"] = a.model;
    j["data"] = a.data;
    j["ctx"] = a.ctx;
    j["windows"] = rows[0].eval.windows;
    j["tokens_scored"] = rows[0].eval.tokens_scored;
    j["group_size"] = a.group_size;
    if (a.device != "cpu") {
      j["device"] = a.device;
      j["gpu_gemm"] = a.gpu_gemm;
    }
    j["calibration"] = {{"file", a.calib}, {"other_file", a.calib_other}, {"samples", a.calib_samples},
                        {"seqlen", a.calib_seqlen}, {"seed", a.seed}, {"awq_search_samples", a.awq_search_samples}};
    nlohmann::json arr = nlohmann::json::array();
    for (const Row& r : rows) {
      nlohmann::json e = {{"method", r.name}, {"bits", r.bits}, {"calibration", r.calib}};
      if (!r.error.empty()) e["error"] = r.error;
      else {
        e["perplexity"] = r.eval.perplexity;
        e["ppl_stderr"] = r.eval.ppl_stderr;
        e["mean_nll"] = r.eval.mean_nll;
        e["mean_kl"] = r.eval.mean_kl;
        e["kl_stderr"] = r.eval.kl_stderr;
        e["top1_agreement"] = r.eval.top1_agreement;
        e["quant_seconds"] = r.quant_seconds;
        e["peak_rss_increase_mb"] = r.peak_mb;
      }
      arr.push_back(e);
    }
    j["rows"] = arr;
    const std::string s = j.dump(2) + "\n";
    QF_RETURN_IF_ERROR(write_file_atomic(a.json_out, s.data(), s.size()));
  }
  return Status::ok();
}

}  // namespace

Command make_compare_command() {
  auto args = std::make_shared<CompareArgs>();
  Command c;
  c.declare = [args](CLI::App& app) {
    CLI::App* sub = app.add_subcommand("compare", "RTN vs GPTQ vs AWQ vs AWQ+GPTQ: perplexity, KL, time, memory");
    sub->add_option("--model", args->model, "model directory or .gguf file")->required();
    sub->add_option("--calib", args->calib, "calibration text (plain text or JSON lines)")->required()->check(CLI::ExistingFile);
    sub->add_option("--calib-other", args->calib_other,
                    "calibration from another domain (second set of rows): a text file, or 'model' for text "
                    "sampled from the model itself")
        ->check(CLI::ExistingFile | CLI::IsMember({"model"}));
    sub->add_option("--data", args->data, "evaluation text (WikiText-2 test)")->required()->check(CLI::ExistingFile);
    sub->add_option("--ctx", args->ctx, "evaluation window")->check(CLI::Range(int64_t(2), int64_t(1) << 20));
    sub->add_option("--max-windows", args->max_windows, "evaluate at most N windows (0: all)")->check(CLI::NonNegativeNumber);
    sub->add_option("--bits", args->bits, "bit widths (comma separated)")->delimiter(',')->check(CLI::Range(2, 8));
    sub->add_option("--methods", args->methods, "rtn,gptq,gptq-act,awq,awq-gptq")->delimiter(',');
    sub->add_option("--group-size", args->group_size, "group size (0: per channel)")->check(CLI::IsMember({0, 32, 64, 128}));
    sub->add_option("--calib-samples", args->calib_samples, "calibration windows")->check(CLI::PositiveNumber);
    sub->add_option("--calib-seqlen", args->calib_seqlen, "tokens per calibration window")->check(CLI::Range(int64_t(2), int64_t(1) << 20));
    sub->add_option("--awq-search-samples", args->awq_search_samples, "AWQ scale search windows (0: all)")->check(CLI::NonNegativeNumber);
    sub->add_option("--seed", args->seed, "calibration seed");
    sub->add_flag("--ablations", args->ablations, "add AWQ's ablations at the lowest bit width");
    sub->add_option("--json", args->json_out, "write the table as JSON");
    sub->add_option("--threads", args->threads, "BLAS threads (0: default)")->check(CLI::NonNegativeNumber);
    sub->add_option("--device", args->device,
                    "where the quantizers' per-layer work runs: cpu, cuda (GPU 0), cuda:N, cuda:N,M,... or cuda:all")
        ->check(quant_device_validator());
    sub->add_option("--gpu-gemm", args->gpu_gemm, "--device cuda: GEMM precision of the layer forward")
        ->check(CLI::IsMember({"bf16", "tf32", "f32"}));
    return sub;
  };
  c.run = [args]() { return exit_code(run_compare(*args)); };
  return c;
}

}  // namespace qforge::tools
