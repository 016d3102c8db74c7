#include "checkpoint/quantize_state.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/mapped_file.h"
#include "formats/safetensors.h"
#include "model/layer_spec.h"

namespace qforge::checkpoint {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string layer_file(const std::string& dir, int l) { return fmt::format("{}/layer-{:04d}.safetensors", dir, l); }
std::string activations_file(const std::string& dir) { return dir + "/activations.safetensors"; }

json linear_report_json(const quant::LinearReport& r) {
  return {{"name", r.name},           {"layer", r.layer},
          {"out", r.out},             {"in", r.in},
          {"output_error", r.output_error}, {"gptq_loss", r.gptq_loss},
          {"damp_percent", r.damp_percent}, {"dead_columns", r.dead_columns},
          {"weight_mse", r.weight_mse}, {"seconds", r.seconds}};
}

json awq_report_json(const quant::AwqGroupReport& g) {
  json top = json::array();
  for (const auto& [ch, sc] : g.top_scales) top.push_back({ch, sc});
  return {{"layer", g.layer},           {"name", g.name},         {"fold_into", g.fold_into},
          {"skipped", g.skipped},       {"best_alpha", g.best_alpha}, {"err_before", g.err_before},
          {"err_after", g.err_after},   {"top_scales", top}};
}

Status read_report(const std::string& text, const std::string& file, quant::PipelineReport& rep) {
  const json j = json::parse(text, nullptr, false);
  if (!j.is_object() || !j.contains("linears") || !j.contains("awq_groups"))
    return error("{}: the saved report is not valid", file);
  try {
    for (const json& r : j["linears"]) {
      quant::LinearReport lr;
      lr.name = r["name"].get<std::string>();
      lr.layer = r["layer"].get<int>();
      lr.out = r["out"].get<int64_t>();
      lr.in = r["in"].get<int64_t>();
      lr.output_error = r["output_error"].get<double>();
      lr.gptq_loss = r["gptq_loss"].get<double>();
      lr.damp_percent = r["damp_percent"].get<double>();
      lr.dead_columns = r["dead_columns"].get<int64_t>();
      lr.weight_mse = r["weight_mse"].get<double>();
      lr.seconds = r["seconds"].get<double>();
      rep.linears.push_back(std::move(lr));
    }
    for (const json& g : j["awq_groups"]) {
      quant::AwqGroupReport gr;
      gr.layer = g["layer"].get<int>();
      gr.name = g["name"].get<std::string>();
      gr.fold_into = g["fold_into"].get<std::string>();
      gr.skipped = g["skipped"].get<std::string>();
      gr.best_alpha = g["best_alpha"].get<double>();
      gr.err_before = g["err_before"].get<double>();
      gr.err_after = g["err_after"].get<double>();
      for (const json& t : g["top_scales"]) gr.top_scales.emplace_back(t[0].get<int64_t>(), t[1].get<float>());
      rep.awq_groups.push_back(std::move(gr));
    }
  } catch (const std::exception& e) {
    return error("{}: the saved report is not valid: {}", file, e.what());
  }
  return Status::ok();
}

// Copies a tensor of a state file into `dst` (whose dtype/shape it must have); errors name the file and tensor.
Status copy_tensor(const safetensors::File& f, const std::string& name, DType dtype, const Shape& shape, void* dst) {
  const safetensors::TensorEntry* e = f.find(name);
  if (!e) return error("{}: tensor '{}' missing", f.path(), name);
  if (e->view.dtype != dtype || !(e->view.shape == shape))
    return error("{}: tensor '{}' is {} {}, expected {} {}", f.path(), name, dtype_name(e->view.dtype),
                 e->view.shape.str(), dtype_name(dtype), shape.str());
  std::memcpy(dst, e->view.data, size_t(shape.numel()) * dtype_size(dtype));
  return Status::ok();
}

}  // namespace

Expected<QuantizeState> QuantizeState::open(const std::string& dir, const std::string& fingerprint, bool resume) {
  QuantizeState st;
  st.dir_ = dir;
  std::error_code ec;
  const std::string run = dir + "/run.json";
  if (fs::exists(dir, ec)) {
    if (!resume)
      return error("{} holds the state of an interrupted run: pass --resume to continue it, or remove it", dir);
    std::ifstream in(run);
    std::stringstream ss;
    ss << in.rdbuf();
    if (!in || ss.str() != fingerprint)
      return error("{}: the interrupted run had other settings ({}); this run's are {}", run, ss.str(), fingerprint);
    return st;
  }
  fs::create_directories(dir, ec);
  if (ec) return error("{}: cannot create the run-state directory: {}", dir, ec.message());
  QF_RETURN_IF_ERROR(write_file_atomic(run, fingerprint.data(), fingerprint.size()));
  return st;
}

Status QuantizeState::save_layer(const LlamaModel& model, const quant::QuantizedLinears* quantized, int l,
                                 const quant::PipelineReport& so_far, const Tensor& next_inputs) const {
  const ModelConfig& cfg = model.config();
  safetensors::Writer w;
  for (const TensorSlot& s : tensor_slots(cfg, model.weights()))
    if (s.layer == l) QF_RETURN_IF_ERROR(w.add(s.name, s.tensor->view()));
  std::vector<Tensor> keep;  // views of the codes and g_idx live until write()
  if (quantized) {
    const auto& layer = quantized->layers[size_t(l)];
    for (size_t i = 0; i < kLlamaLinears.size(); ++i) {
      const quant::QuantizedLinear& q = layer[i];
      const std::string base = fmt::format("quantized.{}.", kLlamaLinears[i].name);
      QF_RETURN_IF_ERROR(w.add(base + "codes", TensorView::contiguous(DType::kU8, {q.out, q.in},
                                                                       const_cast<uint8_t*>(q.qweight.data()))));
      QF_RETURN_IF_ERROR(w.add(base + "scales", q.scales.view()));
      QF_RETURN_IF_ERROR(w.add(base + "zeros", q.zeros.view()));
      QF_RETURN_IF_ERROR(w.add(base + "g_idx", TensorView::contiguous(DType::kI32, {q.in},
                                                                       const_cast<int32_t*>(q.g_idx.data()))));
      w.set_metadata(base + "config", fmt::format("{} {} {} {}", q.cfg.bits, q.cfg.group_size, int(q.cfg.sym),
                                                  int(q.cfg.grid)));
    }
  }
  json rep = {{"linears", json::array()}, {"awq_groups", json::array()}};
  for (const auto& r : so_far.linears)
    if (r.layer == l) rep["linears"].push_back(linear_report_json(r));
  for (const auto& g : so_far.awq_groups)
    if (g.layer == l) rep["awq_groups"].push_back(awq_report_json(g));
  w.set_metadata("report", rep.dump());
  QF_RETURN_IF_ERROR(w.write(layer_file(dir_, l)));
  // Only now point past layer l.
  safetensors::Writer a;
  a.set_metadata("next_layer", std::to_string(l + 1));
  if (!next_inputs.empty()) QF_RETURN_IF_ERROR(a.add("x", next_inputs.view()));
  return a.write(activations_file(dir_));
}

Expected<quant::PipelineResume> QuantizeState::restore(const ModelConfig& cfg) const {
  quant::PipelineResume r;
  std::error_code ec;
  if (!fs::exists(activations_file(dir_), ec)) return r;
  QF_ASSIGN_OR_RETURN(safetensors::File act, safetensors::File::open(activations_file(dir_)));
  const auto it = act.metadata().find("next_layer");
  if (it == act.metadata().end()) return error("{}: next_layer missing from the metadata", act.path());
  int next = -1;
  try {
    next = std::stoi(it->second);
  } catch (...) {
  }
  if (next < 0 || next > cfg.num_hidden_layers)
    return error("{}: next_layer '{}' is outside [0, {}]", act.path(), it->second, cfg.num_hidden_layers);
  if (const safetensors::TensorEntry* e = act.find("x")) {
    if (e->view.dtype != DType::kF32 || e->view.shape.rank != 2 || e->view.shape[1] != cfg.hidden_size)
      return error("{}: tensor 'x' is {} {}, expected F32 [rows, {}]", act.path(), dtype_name(e->view.dtype),
                   e->view.shape.str(), cfg.hidden_size);
    r.x = Tensor(DType::kF32, e->view.shape);
    QF_RETURN_IF_ERROR(copy_tensor(act, "x", DType::kF32, e->view.shape, r.x.data<void>()));
  }
  for (int l = 0; l < next; ++l) {
    QF_ASSIGN_OR_RETURN(safetensors::File f, safetensors::File::open(layer_file(dir_, l)));
    const auto rit = f.metadata().find("report");
    if (rit == f.metadata().end()) return error("{}: the saved report is missing", f.path());
    QF_RETURN_IF_ERROR(read_report(rit->second, f.path(), r.report));
  }
  r.next_layer = next;
  return r;
}

Status QuantizeState::load_layer(LlamaModel& model, quant::QuantizedLinears* quantized, int l) const {
  const ModelConfig& cfg = model.config();
  ModelWeights& weights = model.mutable_weights();
  QF_ASSIGN_OR_RETURN(safetensors::File f, safetensors::File::open(layer_file(dir_, l)));
  for (TensorSlot& s : tensor_slots(cfg, weights))
    if (s.layer == l) {
      *s.tensor = Tensor(DType::kF32, s.shape);
      QF_RETURN_IF_ERROR(copy_tensor(f, s.name, DType::kF32, s.shape, s.tensor->data<void>()));
    }
  if (!quantized) return Status::ok();
  if (quantized->layers.size() != size_t(cfg.num_hidden_layers)) quantized->layers.resize(size_t(cfg.num_hidden_layers));
  auto& layer = quantized->layers[size_t(l)];
  layer.resize(kLlamaLinears.size());
  for (size_t i = 0; i < kLlamaLinears.size(); ++i) {
    const std::string base = fmt::format("quantized.{}.", kLlamaLinears[i].name);
    const Tensor& W = weights.layers[size_t(l)].*kLlamaLinears[i].weight;
    quant::QuantizedLinear& q = layer[i];
    q.out = W.shape()[0];
    q.in = W.shape()[1];
    const auto cit = f.metadata().find(base + "config");
    int bits = 0, sym = 0, grid = 0;
    long long gs = -1;
    if (cit == f.metadata().end() || std::sscanf(cit->second.c_str(), "%d %lld %d %d", &bits, &gs, &sym, &grid) != 4)
      return error("{}: quantization settings of {} missing", f.path(), base);
    q.cfg.bits = bits;
    q.cfg.group_size = gs;
    q.cfg.sym = sym != 0;
    q.cfg.grid = quant::QuantGrid(grid);
    const int64_t G = quant::quant_n_groups(q.cfg, q.in);
    q.qweight.resize(size_t(q.out * q.in));
    q.scales = Tensor(DType::kF32, {q.out, G});
    q.zeros = Tensor(DType::kF32, {q.out, G});
    q.g_idx.resize(size_t(q.in));
    QF_RETURN_IF_ERROR(copy_tensor(f, base + "codes", DType::kU8, {q.out, q.in}, q.qweight.data()));
    QF_RETURN_IF_ERROR(copy_tensor(f, base + "scales", DType::kF32, {q.out, G}, q.scales.data<void>()));
    QF_RETURN_IF_ERROR(copy_tensor(f, base + "zeros", DType::kF32, {q.out, G}, q.zeros.data<void>()));
    QF_RETURN_IF_ERROR(copy_tensor(f, base + "g_idx", DType::kI32, {q.in}, q.g_idx.data()));
  }
  return Status::ok();
}

LayerStream QuantizeState::layer_stream(LlamaModel& model, quant::QuantizedLinears* quantized) const {
  LayerStream s;
  s.load = [this, &model, quantized](int l) { return load_layer(model, quantized, l); };
  s.release = [&model, quantized](int l) {
    model.mutable_weights().layers[size_t(l)] = LayerWeights{};
    if (quantized && size_t(l) < quantized->layers.size()) {
      quantized->layers[size_t(l)].clear();
      quantized->layers[size_t(l)].resize(kLlamaLinears.size());
    }
  };
  return s;
}

void QuantizeState::remove() const {
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

}  // namespace qforge::checkpoint
