// qforge quantize --model M --method rtn|gptq|awq|awq-gptq --bits B --group-size G [--sym] [--act-order]
//                 [--calib FILE --calib-samples N --calib-seqlen L --seed S] [--format F] --out DIR [--report JSON]
//                 [--device cpu|cuda|cuda:N,M,...|cuda:all [--gpu-gemm bf16|tf32|f32]]
// --device cuda runs the per-layer work of every method on GPU 0 (cuda:N,M,...: on several GPUs, each with its share
// of the calibration windows, Hessians and AWQ's statistics combined with NCCL): the layer forwards over the calibration windows,
// GPTQ's Hessians and solves, AWQ's statistics, scale search and clipping, and the error statistics; the host keeps
// the weights, the drivers and the output (docs/gpu-pipeline.md).
// --format hf (default): a Hugging Face directory of dequantized f32 weights (what the quantizers' tables score);
// awq / gptq / gptq-v2: a packed 4-bit checkpoint (AutoAWQ GEMM or GPTQ layout, vLLM/transformers load it);
// gguf: a llama.cpp GGUF file at --out (Q4_0 when symmetric, else Q4_1). Every output is written atomically,
// with quantization_report.json (per-linear statistics) inside the directory formats.
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include <filesystem>
#include <map>
#include <optional>

#include "checkpoint/quantize_state.h"
#include "checkpoint/resources.h"
#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "model/gguf_export.h"
#include "model/hf_export.h"
#include "model/layer_spec.h"
#include "model/loader.h"
#include "ops/ops.h"
#include "quant/calibration.h"
#include "quant/pipeline.h"
#include "tools/commands.h"

namespace qforge::tools {

namespace {

struct QuantizeArgs {
  std::string model, method = "gptq", out, report, calib, grid, format = "hf", dtype = "f16", device = "cpu", gpu_gemm = "bf16";
  int64_t awq_search_samples = 0;
  bool no_awq_clip = false;
  int bits = 4;
  int64_t group_size = 128;
  bool sym = false, act_order = false, static_groups = false, resume = false;
  double damp = 0.01;
  int64_t calib_samples = 128, calib_seqlen = 512;
  uint64_t seed = 0;
  int threads = 0;
};

int64_t peak_rss_kb() {
  struct rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

Status run_quantize(const QuantizeArgs& a) {
  ops::set_num_threads(a.threads);
  const std::map<std::string, quant::Method> kMethods = {{"rtn", quant::Method::kRtn},
                                                          {"gptq", quant::Method::kGptq},
                                                          {"awq", quant::Method::kAwq},
                                                          {"awq-gptq", quant::Method::kAwqGptq}};
  quant::PipelineOptions opt;
  opt.method = kMethods.at(a.method);
  opt.quant.bits = a.bits;
  opt.quant.group_size = a.group_size;
  opt.quant.sym = a.sym;
  opt.gptq.damp_percent = a.damp;
  opt.gptq.act_order = a.act_order;
  opt.gptq.static_groups = a.static_groups;
  // Each method's own grid by default: AWQ's [min, max] grid for AWQ (AutoAWQ), GPTQ's zero-inclusive grid
  // for GPTQ and RTN (the GPTQ reference's RTN baseline) and for AWQ+GPTQ.
  const std::string grid = a.grid.empty() ? (a.method == "awq" ? "awq" : "gptq") : a.grid;
  opt.quant.grid = grid == "awq" ? quant::QuantGrid::kAwq : quant::QuantGrid::kGptq;
  opt.awq_search_samples = a.awq_search_samples;
  opt.awq_clip = !a.no_awq_clip;
  QF_RETURN_IF_ERROR(quant::parse_device(a.device, &opt.device, &opt.cuda_devices));
  opt.gpu_gemm = a.gpu_gemm == "f32" ? quant::GpuGemm::kF32 : a.gpu_gemm == "tf32" ? quant::GpuGemm::kTF32
                                                                                  : quant::GpuGemm::kBF16;

  // One decoder layer in memory at a time: the loader reads layer l from the mapped input when the pipeline gets
  // to it, and the writers read the quantized layers back from the run state. Sampling calibration from the model
  // itself (no --calib) runs the whole model, so that case loads every layer up front.
  const bool stream = opt.method == quant::Method::kRtn || !a.calib.empty();
  // Refuse up front a run the machine cannot finish (estimated from the config, before loading anything).
  {
    QF_ASSIGN_OR_RETURN(ModelConfig pc, checkpoint::peek_model_config(a.model));
    const bool calibrated = opt.method != quant::Method::kRtn;
    const checkpoint::ResourceEstimate est = checkpoint::estimate_quantize_resources(
        pc, calibrated ? a.calib_samples : 0, calibrated ? a.calib_seqlen : 0, a.format != "hf", stream);
    QF_RETURN_IF_ERROR(checkpoint::check_resources(est, a.out));
    fmt::print(stderr, "resources: {}\n", est.breakdown);
  }
  LoadOptions lo;
  lo.stream_layers = stream;
  QF_ASSIGN_OR_RETURN(LoadedModel m, load_model(a.model, lo));
  std::vector<std::vector<int32_t>> calib;
  if (opt.method != quant::Method::kRtn) {
    if (a.calib.empty()) {
      fmt::print(stderr,
                 "calibration: no --calib given: sampling {} sequences of {} tokens from the model itself (seed {}); "
                 "this takes {} decode steps\n",
                 a.calib_samples, a.calib_seqlen, a.seed, a.calib_samples * a.calib_seqlen);
      QF_ASSIGN_OR_RETURN(calib, quant::generate_calibration(*m.model, a.calib_samples, a.calib_seqlen, a.seed, true));
    }
  }
  if (opt.method != quant::Method::kRtn && !a.calib.empty()) {
    QF_ASSIGN_OR_RETURN(std::string text, quant::read_calibration_text(a.calib));
    std::vector<int32_t> ids = m.tokenizer.encode(text);
    QF_ASSIGN_OR_RETURN(calib, quant::sample_calibration_windows(ids, a.calib_samples, a.calib_seqlen, a.seed, a.calib));
    fmt::print(stderr, "calibration: {} windows x {} tokens from {} ({} tokens), seed {}\n", calib.size(),
               a.calib_seqlen, a.calib, ids.size(), a.seed);
  }
  const bool packed = a.format != "hf";
  if (packed && a.bits != 4)
    return error("--format {}: the packed formats hold 4-bit weights; got --bits {}", a.format, a.bits);
  if (a.format == "awq" && a.group_size == 0)
    return error("--format awq: AutoAWQ checkpoints need a group size (32, 64 or 128), not per-channel");
  if (a.format == "gguf" && a.act_order && !a.static_groups)
    return error("--format gguf: act-order without --static-groups permutes the groups, which GGUF blocks cannot hold");
  if (a.format == "awq" && a.act_order && !a.static_groups)
    return error("--format awq: act-order without --static-groups needs g_idx, which the AWQ format lacks; use gptq");
  quant::QuantizedLinears qlin;
  // Per-layer state beside the output, so that an interrupted run resumes (--resume) where it stopped.
  std::error_code ec;
  nlohmann::json fp = {{"model", std::filesystem::absolute(a.model).string()},
                       {"model_bytes", std::filesystem::is_regular_file(a.model, ec) ? std::filesystem::file_size(a.model, ec) : 0},
                       {"method", a.method}, {"bits", a.bits}, {"group_size", a.group_size}, {"sym", a.sym},
                       {"act_order", a.act_order}, {"static_groups", a.static_groups}, {"damp", a.damp},
                       {"grid", grid}, {"calib", a.calib}, {"calib_samples", a.calib_samples},
                       {"calib_seqlen", a.calib_seqlen}, {"seed", a.seed}, {"awq_search_samples", a.awq_search_samples},
                       {"no_awq_clip", a.no_awq_clip}, {"format", a.format}};
  // GPU and CPU runs give different (equally good) codes (docs/gpu-pipeline.md), so a run resumes only on the device
  // it started on. Only GPU runs record it: the state of a CPU run stays as before.
  if (opt.device != quant::Device::kCpu) {
    fp["device"] = quant::device_name(opt.device, opt.cuda_devices);
    fp["gpu_gemm"] = a.gpu_gemm;
  }
  QF_ASSIGN_OR_RETURN(checkpoint::QuantizeState state,
                      checkpoint::QuantizeState::open(a.out + ".partial", fp.dump(2) + "\n", a.resume));
  std::optional<quant::PipelineResume> resume;
  if (a.resume) {
    QF_ASSIGN_OR_RETURN(quant::PipelineResume r, state.restore(m.model->config()));
    fmt::print(stderr, "resume: {} of {} layers done in {}\n", r.next_layer, m.model->config().num_hidden_layers,
               state.dir());
    // Without streaming every layer was loaded; the saved ones are read back from the state when written.
    if (!stream)
      for (int l = 0; l < r.next_layer; ++l) m.model->mutable_weights().layers[size_t(l)] = LayerWeights{};
    resume.emplace(std::move(r));
  }
  bool saved_a_layer = false;
  auto on_layer_done = [&](int l, const quant::PipelineReport& so_far, const Tensor& next) {
    QF_RETURN_IF_ERROR(state.save_layer(*m.model, packed ? &qlin : nullptr, l, so_far, next));
    saved_a_layer = true;
    return Status::ok();
  };
  // Once a layer is saved, neither it nor its codes stay in memory.
  LayerStream pipeline_layers;
  pipeline_layers.load = [&](int l) { return stream ? m.layers.load(l) : Status::ok(); };
  pipeline_layers.release = [&](int l) {
    if (stream) m.layers.release(l);
    else m.model->mutable_weights().layers[size_t(l)] = LayerWeights{};
    if (packed) {
      qlin.layers[size_t(l)].clear();
      qlin.layers[size_t(l)].resize(kLlamaLinears.size());
    }
  };
  Expected<quant::PipelineReport> run = quant::quantize_model(*m.model, calib, opt, packed ? &qlin : nullptr,
                                                              resume ? &*resume : nullptr, on_layer_done,
                                                              &pipeline_layers);
  if (!run) {
    // Nothing is written at --out. A run that fails before its first layer is saved (no usable GPU, say) leaves
    // no state either; one that fails later keeps its finished layers in OUT.partial/ for --resume.
    if (!a.resume && !saved_a_layer) state.remove();
    return run.status();
  }
  const quant::PipelineReport rep = std::move(*run);
  // The writers read the quantized layers back from the run state, one at a time.
  const LayerStream saved_layers = state.layer_stream(*m.model, packed ? &qlin : nullptr);

  nlohmann::json j;
  j["model"] = a.model;
  j["method"] = a.method;
  j["bits"] = a.bits;
  j["group_size"] = a.group_size;
  j["sym"] = a.sym;
  j["act_order"] = a.act_order;
  j["static_groups"] = a.static_groups;
  j["damp_percent"] = a.damp;
  j["grid"] = grid;
  j["calibration"] = {{"file", a.calib}, {"samples", a.calib_samples}, {"seqlen", a.calib_seqlen}, {"seed", a.seed},
                      {"tokens", rep.calibration_tokens}};
  if (opt.device != quant::Device::kCpu) {  // CPU reports stay byte for byte as before
    j["device"] = quant::device_name(opt.device, opt.cuda_devices);
    j["gpu_gemm"] = a.gpu_gemm;
  }
  j["seconds"] = rep.seconds;
  j["peak_rss_mb"] = double(peak_rss_kb()) / 1024.0;
  nlohmann::json lin = nlohmann::json::array();
  for (const auto& r : rep.linears)
    lin.push_back({{"name", r.name}, {"layer", r.layer}, {"out", r.out}, {"in", r.in},
                   {"output_error", r.output_error}, {"gptq_loss", r.gptq_loss}, {"damp_percent", r.damp_percent},
                   {"dead_columns", r.dead_columns}, {"weight_mse", r.weight_mse}, {"seconds", r.seconds}});
  j["linears"] = lin;
  nlohmann::json groups = nlohmann::json::array();
  for (const auto& g : rep.awq_groups) {
    nlohmann::json top = nlohmann::json::array();
    for (const auto& [ch, sc] : g.top_scales) top.push_back({{"channel", ch}, {"scale", sc}});
    groups.push_back({{"name", g.name}, {"fold_into", g.fold_into}, {"skipped", g.skipped},
                      {"best_alpha", g.best_alpha}, {"err_before", g.err_before}, {"err_after", g.err_after},
                      {"top_scales", top}});
  }
  if (!rep.awq_groups.empty()) j["awq_groups"] = groups;
  const std::string report = j.dump(2) + "\n";

  if (a.format == "gguf") {
    GgufExportOptions go;
    go.q4_type = a.sym ? gguf::GgmlType::kQ4_0 : gguf::GgmlType::kQ4_1;
    go.layers = &saved_layers;
    std::optional<gguf::GgufFile> src;
    if (a.model.ends_with(".gguf")) {
      QF_ASSIGN_OR_RETURN(gguf::GgufFile f, gguf::GgufFile::open(a.model));
      src.emplace(std::move(f));
    }
    QF_RETURN_IF_ERROR(save_gguf_checkpoint(a.out, m.model->config(), m.model->weights(), qlin, m.tokenizer,
                                            src ? &*src : nullptr, go));
  } else {
    HfExportOptions eo;
    eo.extra_file_name = "quantization_report.json";
    eo.extra_file_text = report;
    eo.layers = &saved_layers;
    if (packed) {
      eo.quantized = &qlin;
      eo.dtype = a.dtype == "bf16" ? DType::kBF16 : DType::kF16;
      eo.quantization.format = a.format == "awq"    ? formats::PackedFormat::kAwqGemm
                               : a.format == "gptq" ? formats::PackedFormat::kGptqV1
                                                    : formats::PackedFormat::kGptqV2;
      eo.quantization.bits = a.bits;
      eo.quantization.group_size = a.group_size == 0 ? -1 : a.group_size;
      eo.quantization.sym = a.sym;
      eo.quantization.desc_act = a.act_order;
      eo.quantization.zero_point = true;
      eo.true_sequential = true;
      eo.damp_percent = a.damp;
    }
    QF_RETURN_IF_ERROR(save_hf_directory(a.out, m.model->config(), m.model->weights(), m.tokenizer, eo));
  }
  if (!a.report.empty()) QF_RETURN_IF_ERROR(write_file_atomic(a.report, report.data(), report.size()));
  state.remove();  // the output is complete

  // Summary: the largest output errors.
  auto sorted = rep.linears;
  std::sort(sorted.begin(), sorted.end(), [](auto& x, auto& y) { return x.output_error > y.output_error; });
  fmt::print("{} {}-bit g{}{}{}: {} linears in {:.1f}s, peak RSS {:.0f} MiB -> {}\n", a.method, a.bits, a.group_size,
             a.act_order ? " act-order" : "", opt.device == quant::Device::kCuda ? fmt::format(" (on {}, {} GEMMs)", quant::device_name(opt.device, opt.cuda_devices), a.gpu_gemm) : std::string(),
             rep.linears.size(), rep.seconds, double(peak_rss_kb()) / 1024.0, a.out);
  if (!rep.awq_groups.empty()) {
    fmt::print("AWQ scales (alpha, block error before -> after, largest scales as channel:scale):\n");
    for (const auto& g : rep.awq_groups) {
      if (!g.skipped.empty()) {
        fmt::print("  {:<48} skipped: {}\n", g.name, g.skipped);
        continue;
      }
      std::string top;
      for (const auto& [ch, sc] : g.top_scales) top += fmt::format(" {}:{:.2f}", ch, sc);
      fmt::print("  {:<48} alpha {:.2f}  {:10.4g} -> {:10.4g} ({:+.1f}%) {}\n", g.name, g.best_alpha, g.err_before,
                 g.err_after, g.err_before > 0 ? 100.0 * (g.err_after / g.err_before - 1.0) : 0.0, top);
    }
  }
  if (opt.method == quant::Method::kGptq || opt.method == quant::Method::kAwqGptq) {
    fmt::print("largest output errors (mean ||(W-Q)x||^2 over calibration tokens):\n");
    for (size_t i = 0; i < std::min<size_t>(5, sorted.size()); ++i)
      fmt::print("  {:<40} {:12.5g}  gptq loss {:12.5g}\n", sorted[i].name, sorted[i].output_error, sorted[i].gptq_loss);
  }
  return Status::ok();
}

}  // namespace

Command make_quantize_command() {
  auto args = std::make_shared<QuantizeArgs>();
  Command c;
  c.declare = [args](CLI::App& app) {
    CLI::App* sub = app.add_subcommand("quantize", "Quantize a model (RTN, GPTQ, AWQ, AWQ+GPTQ) layer by layer");
    sub->add_option("--model", args->model, "model directory or .gguf file")->required();
    sub->add_option("--method", args->method, "quantization method")->check(CLI::IsMember({"rtn", "gptq", "awq", "awq-gptq"}));
    sub->add_option("--grid", args->grid, "min/max grid: gptq (range includes 0) or awq ([min, max]); default per method")
        ->check(CLI::IsMember({"gptq", "awq"}));
    sub->add_option("--awq-search-samples", args->awq_search_samples,
                    "AWQ: calibration windows the scale search runs the block on (0: all)")
        ->check(CLI::NonNegativeNumber);
    sub->add_flag("--no-awq-clip", args->no_awq_clip, "AWQ: skip the clipping search");
    sub->add_option("--bits", args->bits, "weight bits")->check(CLI::Range(2, 8));
    sub->add_option("--group-size", args->group_size, "weights per group along the input (0: per channel)")
        ->check(CLI::IsMember({0, 32, 64, 128}));
    sub->add_flag("--sym", args->sym, "symmetric grid (no zero point)");
    sub->add_flag("--act-order", args->act_order, "GPTQ: quantize columns by decreasing Hessian diagonal");
    sub->add_flag("--static-groups", args->static_groups, "GPTQ: group grids fixed before the column loop");
    sub->add_option("--damp", args->damp, "GPTQ damping, fraction of mean diag(H)")->check(CLI::Range(1e-6, 1.0));
    sub->add_option("--calib", args->calib, "calibration text (plain text, or JSON lines with a \"text\" field)")
        ->check(CLI::ExistingFile);
    sub->add_option("--calib-samples", args->calib_samples, "calibration windows")->check(CLI::PositiveNumber);
    sub->add_option("--calib-seqlen", args->calib_seqlen, "tokens per calibration window")
        ->check(CLI::Range(int64_t(2), int64_t(1) << 20));
    sub->add_option("--seed", args->seed, "calibration sampling seed");
    sub->add_option("--format", args->format,
                    "output: hf (dequantized f32 weights), awq (AutoAWQ GEMM), gptq (v1), gptq-v2, gguf (a file)")
        ->check(CLI::IsMember({"hf", "awq", "gptq", "gptq-v2", "gguf"}));
    sub->add_option("--dtype", args->dtype, "packed formats: dtype of the non-quantized tensors")
        ->check(CLI::IsMember({"f16", "bf16"}));
    sub->add_option("--out", args->out, "output directory (the .gguf file for --format gguf)")->required();
    sub->add_option("--report", args->report, "also write the per-linear report JSON here");
    sub->add_flag("--resume", args->resume, "continue an interrupted run from its state in OUT.partial/");
    sub->add_option("--threads", args->threads, "BLAS threads (0: default)")->check(CLI::NonNegativeNumber);
    sub->add_option("--device", args->device,
                    "where the per-layer work runs (forwards, Hessians, GPTQ, AWQ): cpu, cuda (GPU 0), cuda:N, or "
                    "several GPUs: cuda:N,M,... or cuda:all (calibration windows split, NCCL)")
        ->check(quant_device_validator());
    sub->add_option("--gpu-gemm", args->gpu_gemm, "--device cuda: GEMM precision of the layer forward")
        ->check(CLI::IsMember({"bf16", "tf32", "f32"}));
    return sub;
  };
  c.run = [args]() { return exit_code(run_quantize(*args)); };
  return c;
}

}  // namespace qforge::tools
