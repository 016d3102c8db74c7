#include "model/hf_export.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <filesystem>

#include "core/mapped_file.h"
#include "formats/safetensors.h"
#include "model/layer_spec.h"

namespace qforge {

namespace fs = std::filesystem;

namespace {
Status write_text(const fs::path& p, const std::string& s) { return write_file_atomic(p.string(), s.data(), s.size()); }

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    default: return "float32";
  }
}
}  // namespace

Status save_hf_directory(const std::string& dir, const ModelConfig& config, const ModelWeights& weights,
                         const Tokenizer& tokenizer, const HfExportOptions& opt) {
  if (opt.dtype != DType::kF32 && opt.dtype != DType::kF16 && opt.dtype != DType::kBF16)
    return error("{}: export dtype must be F32, F16 or BF16, got {}", dir, dtype_name(opt.dtype));
  ModelConfig cfg = config;
  cfg.torch_dtype = torch_dtype_name(opt.dtype);
  // Converted copies live as long as the writer needs them.
  std::vector<Tensor> converted;
  std::vector<formats::PackedLinear> packed;
  safetensors::Writer writer;
  writer.set_metadata("format", "pt");
  auto slots = tensor_slots(cfg, weights);
  converted.reserve(slots.size());
  const bool quantized = opt.quantized != nullptr;
  if (quantized) {
    if (opt.dtype == DType::kF32) return error("{}: a packed checkpoint keeps its other tensors in F16 or BF16", dir);
    if (int64_t(opt.quantized->layers.size()) != cfg.num_hidden_layers)
      return error("{}: quantized linears for {} layers, the model has {}", dir, opt.quantized->layers.size(),
                   cfg.num_hidden_layers);
    packed.reserve(opt.quantized->layers.size() * kLlamaLinears.size());
  }
  for (const TensorSlot& s : slots) {
    if (quantized && s.packed) {
      // Which linear of the layer this slot is.
      size_t li = 0;
      while (li < kLlamaLinears.size() && !s.name.ends_with(std::string(kLlamaLinears[li].name) + ".weight")) ++li;
      if (li == kLlamaLinears.size()) return error("{}: '{}' is not a known linear", dir, s.name);
      const auto& layer = opt.quantized->layers[size_t(s.layer)];
      if (layer.size() != kLlamaLinears.size() || layer[li].qweight.empty())
        return error("{}: no quantized weights for '{}'", dir, s.name);
      const std::string base = s.name.substr(0, s.name.size() - std::string(".weight").size());
      QF_ASSIGN_OR_RETURN(formats::PackedLinear p, formats::pack_linear(layer[li], opt.quantization.format, base));
      packed.push_back(std::move(p));
      formats::PackedLinear& pl = packed.back();
      const bool awq = opt.quantization.format == formats::PackedFormat::kAwqGemm;
      const int64_t O = pl.out, I = pl.in, G = pl.groups();
      const Shape qw = awq ? Shape{I, O / formats::kPerWord} : Shape{I / formats::kPerWord, O};
      QF_RETURN_IF_ERROR(writer.add(base + ".qweight", TensorView::contiguous(DType::kI32, qw, pl.qweight.data())));
      QF_RETURN_IF_ERROR(writer.add(base + ".qzeros", TensorView::contiguous(DType::kI32, {G, O / formats::kPerWord},
                                                                             pl.qzeros.data())));
      QF_RETURN_IF_ERROR(writer.add(base + ".scales", TensorView::contiguous(DType::kF16, {G, O}, pl.scales.data())));
      if (!awq)
        QF_RETURN_IF_ERROR(writer.add(base + ".g_idx", TensorView::contiguous(DType::kI32, {I}, pl.g_idx.data())));
      continue;
    }
    if (s.tensor->empty() || !(s.tensor->shape() == s.shape))
      return error("{}: tensor '{}' is missing or has shape {}, expected {}", dir, s.name, s.tensor->shape().str(),
                   s.shape.str());
    if (opt.dtype == DType::kF32) {
      QF_RETURN_IF_ERROR(writer.add(s.name, s.tensor->view()));
    } else {
      converted.emplace_back(opt.dtype, s.shape);
      convert_from_f32(s.tensor->f32(), s.tensor->numel(), opt.dtype, converted.back().data<void>());
      QF_RETURN_IF_ERROR(writer.add(s.name, converted.back().view()));
    }
  }
  std::string config_json = model_config_to_json(cfg);
  if (quantized) {
    nlohmann::ordered_json cj = nlohmann::ordered_json::parse(config_json);
    cj["quantization_config"] =
        nlohmann::ordered_json::parse(formats::quantization_config_json(opt.quantization, opt.true_sequential, opt.damp_percent));
    config_json = cj.dump(2) + "\n";
  }

  const fs::path out(dir);
  std::error_code ec;
  if (out.has_parent_path()) fs::create_directories(out.parent_path(), ec);
  const fs::path tmp = fs::path(dir + fmt::format(".tmp.{}", getpid()));
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec)) return error("{}: cannot create directory: {}", tmp.string(), ec.message());
  auto fail = [&](Status s) {
    fs::remove_all(tmp, ec);
    return s;
  };
  if (Status s = writer.write_sharded(tmp.string(), opt.max_shard_bytes); !s) return fail(s);
  if (Status s = write_text(tmp / "config.json", config_json); !s) return fail(s);
  if (quantized && opt.quantization.format != formats::PackedFormat::kAwqGemm)
    if (Status s = write_text(tmp / "quantize_config.json",
                              formats::quantization_config_json(opt.quantization, opt.true_sequential, opt.damp_percent) + "\n");
        !s)
      return fail(s);
  if (Status s = write_text(tmp / "tokenizer.json", tokenizer.to_tokenizer_json()); !s) return fail(s);
  if (Status s = write_text(tmp / "tokenizer_config.json", tokenizer.to_tokenizer_config_json()); !s) return fail(s);
  nlohmann::json gen;
  if (cfg.bos_token_id >= 0) gen["bos_token_id"] = cfg.bos_token_id;
  if (!cfg.eos_token_ids.empty()) gen["eos_token_id"] = cfg.eos_token_ids[0];
  if (Status s = write_text(tmp / "generation_config.json", gen.dump(2) + "\n"); !s) return fail(s);
  if (!opt.extra_file_name.empty())
    if (Status s = write_text(tmp / opt.extra_file_name, opt.extra_file_text); !s) return fail(s);

  // Replace any previous output only now that the new one is complete.
  if (fs::exists(out, ec)) {
    const fs::path old = fs::path(dir + fmt::format(".old.{}", getpid()));
    fs::rename(out, old, ec);
    if (ec) return fail(error("{}: cannot move the existing output aside: {}", dir, ec.message()));
    fs::rename(tmp, out, ec);
    if (ec) return fail(error("{}: rename from {} failed: {}", dir, tmp.string(), ec.message()));
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, out, ec);
    if (ec) return fail(error("{}: rename from {} failed: {}", dir, tmp.string(), ec.message()));
  }
  return Status::ok();
}

}  // namespace qforge
