#include "model/hf_export.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>

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

// The packed tensors of one linear [out, in] as the header lists them (shapes per format in quant_pack.h).
struct PackedPart {
  const char* suffix;  // ".qweight", ".qzeros", ".scales", ".g_idx"
  DType dtype;
  Shape shape;
};

// From out, in and the checkpoint's group size alone (<= 0: per channel), before any code exists.
Expected<std::vector<PackedPart>> packed_parts(formats::PackedFormat f, int64_t O, int64_t I,
                                               int64_t group_size, const std::string& base) {
  const bool awq = f == formats::PackedFormat::kAwqGemm;
  const int64_t gs = group_size > 0 ? group_size : I;
  if (O % formats::kPerWord != 0 || (!awq && I % formats::kPerWord != 0))
    return error("{}: [{}, {}] cannot be packed in {}: {} features must be a multiple of {}", base, O, I,
                 formats::packed_format_name(f), awq ? "out" : "out and in", formats::kPerWord);
  if (I % gs != 0) return error("{}: group size {} does not divide in_features {}", base, gs, I);
  const int64_t G = I / gs, W = formats::kPerWord;
  std::vector<PackedPart> parts;
  parts.push_back({".qweight", DType::kI32, awq ? Shape{I, O / W} : Shape{I / W, O}});
  parts.push_back({".qzeros", DType::kI32, {G, O / W}});
  parts.push_back({".scales", DType::kF16, {G, O}});
  if (!awq) parts.push_back({".g_idx", DType::kI32, {I}});
  return parts;
}

// The bytes of part k of a packed linear (in the order packed_parts lists them).
std::span<const uint8_t> packed_bytes(const formats::PackedLinear& p, size_t k) {
  auto bytes = [](const auto& v) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(v[0]));
  };
  switch (k) {
    case 0:
      return bytes(p.qweight);
    case 1:
      return bytes(p.qzeros);
    case 2:
      return bytes(p.scales);
    default:
      return bytes(p.g_idx);
  }
}

// What a streamed export keeps between fill callbacks: the layer cursor and the packed form of the one linear
// whose tensors are being written.
struct StreamState {
  explicit StreamState(const LayerStream* s) : cursor(s) {}
  LayerCursor cursor;
  int packed_layer = -1;
  size_t packed_linear = 0;
  std::optional<formats::PackedLinear> packed;
};

// Adds every tensor eagerly: views of `weights`, converted copies and packed linears kept in `converted` and
// `packed` until the write.
Status add_in_memory(safetensors::Writer& writer, const std::string& dir, const ModelConfig& cfg,
                     const ModelWeights& weights, const HfExportOptions& opt, std::vector<Tensor>& converted,
                     std::vector<formats::PackedLinear>& packed) {
  const bool quantized = opt.quantized != nullptr;
  auto slots = tensor_slots(cfg, weights);
  converted.reserve(slots.size());
  if (quantized) {
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
  return Status::ok();
}

// Plans every tensor from the config alone and adds it streamed: its fill loads the layer it belongs to
// (through state.cursor), checks what the load produced, and converts or packs just that tensor.
Status add_streamed(safetensors::Writer& writer, const std::string& dir, const ModelConfig& cfg,
                    const ModelWeights& weights, const HfExportOptions& opt, StreamState& state) {
  const formats::PackedFormat format = opt.quantization.format;
  const DType dtype = opt.dtype;
  for (const TensorSlot& s : tensor_slots(cfg, weights)) {
    const int l = s.layer;
    if (l < 0 && (s.tensor->empty() || !(s.tensor->shape() == s.shape)))  // not streamed: must be here now
      return error("{}: tensor '{}' is missing or has shape {}, expected {}", dir, s.name,
                   s.tensor->shape().str(), s.shape.str());
    if (opt.quantized && s.packed) {
      size_t li = 0;
      while (li < kLlamaLinears.size() && !s.name.ends_with(std::string(kLlamaLinears[li].name) + ".weight"))
        ++li;
      if (li == kLlamaLinears.size()) return error("{}: '{}' is not a known linear", dir, s.name);
      const std::string base = s.name.substr(0, s.name.size() - std::string(".weight").size());
      const int64_t O = s.shape[0], I = s.shape[1];
      auto planned = packed_parts(format, O, I, opt.quantization.group_size, base);
      if (!planned) return planned.status().with_context(dir);
      const std::vector<PackedPart> parts = std::move(planned).value();
      for (size_t k = 0; k < parts.size(); ++k) {
        const bool last = k + 1 == parts.size();
        const Shape shape = parts[k].shape;
        const uint64_t nbytes = uint64_t(shape.numel()) * dtype_size(parts[k].dtype);
        auto fill = [&state, &opt, format, l, li, k, last, O, I, nbytes,
                     base](const safetensors::ByteSink& sink) -> Status {
          QF_RETURN_IF_ERROR(state.cursor.enter(l));
          if (!state.packed || state.packed_layer != l || state.packed_linear != li) {
            state.packed.reset();
            const auto& layers = opt.quantized->layers;
            if (size_t(l) >= layers.size() || layers[size_t(l)].size() != kLlamaLinears.size() ||
                layers[size_t(l)][li].qweight.empty())
              return error("no quantized weights for '{}' after loading its layer", base);
            QF_ASSIGN_OR_RETURN(formats::PackedLinear p,
                                formats::pack_linear(layers[size_t(l)][li], format, base));
            if (p.out != O || p.in != I)
              return error("{}: quantized as [{}, {}], the config implies [{}, {}]", base, p.out, p.in, O, I);
            state.packed = std::move(p);
            state.packed_layer = l;
            state.packed_linear = li;
          }
          const std::span<const uint8_t> bytes = packed_bytes(*state.packed, k);
          if (bytes.size() != nbytes)
            return error(
                "{}: packed with group size {} ({} bytes), but quantization.group_size {} planned {} bytes",
                base, state.packed->group_size, bytes.size(), opt.quantization.group_size, nbytes);
          QF_RETURN_IF_ERROR(sink(bytes));
          if (last) state.packed.reset();  // one linear's packed form at a time
          return Status::ok();
        };
        QF_RETURN_IF_ERROR(
            writer.add_streamed(base + parts[k].suffix, parts[k].dtype, shape, std::move(fill)));
      }
      continue;
    }
    const Tensor* tensor = s.tensor;
    auto fill = [&state, &dir, tensor, dtype, l, name = s.name,
                 shape = s.shape](const safetensors::ByteSink& sink) -> Status {
      QF_RETURN_IF_ERROR(state.cursor.enter(l));
      if (tensor->empty() || !(tensor->shape() == shape) || tensor->dtype() != DType::kF32)
        return error(
            "{}: tensor '{}' is missing, not f32, or has shape {} (expected {}) after loading its layer", dir,
            name, tensor->shape().str(), shape.str());
      const float* src = tensor->f32();
      const int64_t n = tensor->numel();
      if (dtype == DType::kF32)
        return sink(
            std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(src), size_t(n) * sizeof(float)));
      // Converted a chunk at a time: no whole converted copy.
      constexpr int64_t kChunk = int64_t(1) << 16;
      std::vector<uint8_t> buf(size_t(std::min(n, kChunk)) * dtype_size(dtype));
      for (int64_t i = 0; i < n; i += kChunk) {
        const int64_t m = std::min(kChunk, n - i);
        convert_from_f32(src + i, m, dtype, buf.data());
        QF_RETURN_IF_ERROR(sink(std::span<const uint8_t>(buf.data(), size_t(m) * dtype_size(dtype))));
      }
      return Status::ok();
    };
    QF_RETURN_IF_ERROR(writer.add_streamed(s.name, dtype, s.shape, std::move(fill)));
  }
  return Status::ok();
}

}  // namespace

Status save_hf_directory(const std::string& dir, const ModelConfig& config, const ModelWeights& weights,
                         const Tokenizer& tokenizer, const HfExportOptions& opt) {
  if (opt.dtype != DType::kF32 && opt.dtype != DType::kF16 && opt.dtype != DType::kBF16)
    return error("{}: export dtype must be F32, F16 or BF16, got {}", dir, dtype_name(opt.dtype));
  ModelConfig cfg = config;
  cfg.torch_dtype = torch_dtype_name(opt.dtype);
  const bool quantized = opt.quantized != nullptr;
  if (quantized && opt.dtype == DType::kF32)
    return error("{}: a packed checkpoint keeps its other tensors in F16 or BF16", dir);
  safetensors::Writer writer;
  writer.set_metadata("format", "pt");
  // Converted copies live as long as the writer needs them (in-memory export).
  std::vector<Tensor> converted;
  std::vector<formats::PackedLinear> packed;
  // Streamed export: what the fill callbacks share; outlives the write.
  std::unique_ptr<StreamState> stream;
  if (opt.layers) {
    if (!opt.layers->load || !opt.layers->release)
      return error("{}: the layer stream has no load or release", dir);
    stream = std::make_unique<StreamState>(opt.layers);
    QF_RETURN_IF_ERROR(add_streamed(writer, dir, cfg, weights, opt, *stream));
  } else {
    QF_RETURN_IF_ERROR(add_in_memory(writer, dir, cfg, weights, opt, converted, packed));
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
  const Status written = writer.write_sharded(tmp.string(), opt.max_shard_bytes);
  if (stream) stream->cursor.release();  // the layer a failed write stopped in
  if (!written) return fail(written);
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
