#include "model/loader.h"

#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>

#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "formats/gguf_quants.h"
#include "formats/quant_pack.h"
#include "formats/safetensors.h"

namespace qforge {

namespace fs = std::filesystem;

std::string gguf_tensor_name(const std::string& hf) {
  static const std::pair<const char*, const char*> kLayer[] = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const std::string prefix = "model.layers.";
  if (hf.rfind(prefix, 0) == 0) {
    const size_t dot = hf.find('.', prefix.size());
    const std::string layer = hf.substr(prefix.size(), dot - prefix.size());
    const std::string rest = hf.substr(dot + 1);
    for (const auto& [h, g] : kLayer)
      if (rest == h) return "blk." + layer + "." + g;
  }
  return "";
}

namespace {

template <typename T>
void permute_rows(T* w, int64_t rows, int64_t cols, int64_t n_heads, bool to_hf) {
  const int64_t hd = rows / n_heads, half = hd / 2;
  std::vector<T> tmp(size_t(hd * cols));
  for (int64_t h = 0; h < n_heads; ++h) {
    T* head = w + h * hd * cols;
    std::copy(head, head + hd * cols, tmp.begin());
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t gguf_row = 2 * i + j, hf_row = j * half + i;
        const int64_t dst = to_hf ? hf_row : gguf_row, src = to_hf ? gguf_row : hf_row;
        std::copy(tmp.begin() + src * cols, tmp.begin() + (src + 1) * cols, head + dst * cols);
      }
  }
}

}  // namespace

void unpermute_rope_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads) {
  permute_rows<float>(w, rows, cols, n_heads, true);
}
void permute_rope_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads) {
  permute_rows<float>(w, rows, cols, n_heads, false);
}

namespace {

// A Q4_0 / Q4_1 matrix [rows, cols] as codes and per-32 (scale, zero): Q4_0 value = (q - 8) * d; Q4_1 value
// = q * d + m = (q - (-m / d)) * d, the zero -m/d kept in f32 by the runtime layout (so a weight moves by f32
// rounding only); blocks with d == 0 and m != 0 cannot be expressed and leave the tensor dense.
Expected<std::optional<kernels::W4Weight>> q4_to_w4(const gguf::GgufFile& f, const gguf::TensorInfo& ti, int64_t rows,
                                                   int64_t cols, int64_t rope_heads, const std::string& name) {
  if (ti.type != gguf::GgmlType::kQ4_0 && ti.type != gguf::GgmlType::kQ4_1) return std::optional<kernels::W4Weight>();
  const bool q41 = ti.type == gguf::GgmlType::kQ4_1;
  const int64_t block_bytes = q41 ? 20 : 18, nb = cols / 32;
  if (cols % kernels::kW4Chunk != 0) return std::optional<kernels::W4Weight>();
  const std::span<const uint8_t> bytes = f.tensor_bytes(ti);
  if (int64_t(bytes.size()) != rows * nb * block_bytes)
    return error("{}: tensor '{}' has {} bytes, expected {}", f.path(), ti.name, bytes.size(), rows * nb * block_bytes);
  std::vector<uint8_t> codes(size_t(rows * cols));
  std::vector<float> scales(size_t(rows * nb)), zeros(size_t(rows * nb));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = bytes.data() + (r * nb + b) * block_bytes;
      uint16_t dh, mh = 0;
      std::memcpy(&dh, blk, 2);
      if (q41) std::memcpy(&mh, blk + 2, 2);
      const uint8_t* qs = blk + (q41 ? 4 : 2);
      const float d = fp16_to_f32(dh), m = fp16_to_f32(mh);
      if (d == 0 && m != 0) return std::optional<kernels::W4Weight>();
      scales[size_t(r * nb + b)] = d;
      zeros[size_t(r * nb + b)] = q41 ? (d == 0 ? 0.0f : -m / d) : 8.0f;
      for (int j = 0; j < 16; ++j) {
        codes[size_t(r * cols + b * 32 + j)] = qs[j] & 0xF;
        codes[size_t(r * cols + b * 32 + j + 16)] = qs[j] >> 4;
      }
    }
  if (rope_heads > 0) {
    permute_rows<uint8_t>(codes.data(), rows, cols, rope_heads, true);
    permute_rows<float>(scales.data(), rows, nb, rope_heads, true);
    permute_rows<float>(zeros.data(), rows, nb, rope_heads, true);
  }
  QF_ASSIGN_OR_RETURN(kernels::W4Weight w, kernels::w4_pack(codes.data(), scales.data(), zeros.data(), rows, cols, 32, {}, name));
  return std::optional<kernels::W4Weight>(std::move(w));
}

}  // namespace

Expected<ModelConfig> config_from_gguf(const gguf::GgufFile& f) {
  QF_ASSIGN_OR_RETURN(std::string arch, f.get_string("general.architecture"));
  if (arch != "llama")
    return error("{}: unsupported GGUF architecture '{}' (supported: llama)", f.path(), arch);
  auto key = [&](const char* k) { return arch + "." + k; };
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  QF_ASSIGN_OR_RETURN(uint64_t n_layer, f.get_uint(key("block_count")));
  QF_ASSIGN_OR_RETURN(uint64_t n_embd, f.get_uint(key("embedding_length")));
  QF_ASSIGN_OR_RETURN(uint64_t n_ff, f.get_uint(key("feed_forward_length")));
  QF_ASSIGN_OR_RETURN(uint64_t n_head, f.get_uint(key("attention.head_count")));
  c.num_hidden_layers = int64_t(n_layer);
  c.hidden_size = int64_t(n_embd);
  c.intermediate_size = int64_t(n_ff);
  c.num_attention_heads = int64_t(n_head);
  c.num_key_value_heads = c.num_attention_heads;
  if (f.find(key("attention.head_count_kv"))) {
    QF_ASSIGN_OR_RETURN(uint64_t n_kv, f.get_uint(key("attention.head_count_kv")));
    c.num_key_value_heads = int64_t(n_kv);
  }
  if (c.num_attention_heads <= 0) return error("{}: {} must be positive", f.path(), key("attention.head_count"));
  c.head_dim = c.hidden_size / c.num_attention_heads;
  if (f.find(key("attention.key_length"))) {
    QF_ASSIGN_OR_RETURN(uint64_t kl, f.get_uint(key("attention.key_length")));
    c.head_dim = int64_t(kl);
  }
  if (f.find(key("context_length"))) {
    QF_ASSIGN_OR_RETURN(uint64_t ctx, f.get_uint(key("context_length")));
    c.max_position_embeddings = int64_t(ctx);
  }
  QF_ASSIGN_OR_RETURN(c.rms_norm_eps, f.get_float(key("attention.layer_norm_rms_epsilon")));
  if (f.find(key("rope.freq_base"))) {
    QF_ASSIGN_OR_RETURN(c.rope_theta, f.get_float(key("rope.freq_base")));
  }
  const gguf::TensorInfo* emb = f.find_tensor("token_embd.weight");
  if (!emb) return error("{}: tensor 'token_embd.weight' missing", f.path());
  if (emb->ne.size() != 2) return error("{}: tensor 'token_embd.weight' must be 2-D", f.path());
  c.vocab_size = emb->ne[1];
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  c.attention_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  if (f.find("tokenizer.ggml.bos_token_id")) {
    QF_ASSIGN_OR_RETURN(uint64_t bos, f.get_uint("tokenizer.ggml.bos_token_id"));
    c.bos_token_id = int64_t(bos);
  }
  if (f.find("tokenizer.ggml.eos_token_id")) {
    QF_ASSIGN_OR_RETURN(uint64_t eos, f.get_uint("tokenizer.ggml.eos_token_id"));
    c.eos_token_ids = {int64_t(eos)};
  }
  QF_RETURN_IF_ERROR(validate_model_config(c, f.path()));
  return c;
}

namespace {

// One tensor slot from GGUF: checked (present, shape), and with load_data read into the slot (f32 or packed),
// after which its mapped pages leave the resident set.
Status gguf_slot(const gguf::GgufFile& f, const ModelConfig& c, TensorSlot& s, bool pack_q4, bool load_data) {
  std::string gname = gguf_tensor_name(s.name);
  if (gname.empty()) gname = s.name;
  const gguf::TensorInfo* ti = f.find_tensor(gname);
  if (!ti) return error("{}: tensor '{}' (for {}) missing", f.path(), gname, s.name);
  if (!(ti->shape() == s.shape))
    return error("{}: tensor '{}' has shape {}, the model config implies {}", f.path(), gname, ti->shape().str(),
                 s.shape.str());
  if (!load_data) return Status::ok();
  const bool is_q = s.name.ends_with("self_attn.q_proj.weight") || s.name.ends_with("self_attn.q_proj.bias");
  const bool is_k = s.name.ends_with("self_attn.k_proj.weight") || s.name.ends_with("self_attn.k_proj.bias");
  const int64_t rope_heads = is_q ? c.num_attention_heads : is_k ? c.num_key_value_heads : 0;
  const std::span<const uint8_t> bytes = f.tensor_bytes(*ti);
  if (pack_q4 && s.packed) {
    QF_ASSIGN_OR_RETURN(std::optional<kernels::W4Weight> w4, q4_to_w4(f, *ti, s.shape[0], s.shape[1], rope_heads, s.name));
    if (w4) {
      *s.packed = std::make_shared<const kernels::W4Weight>(std::move(*w4));
      drop_resident_pages(bytes.data(), bytes.size());
      return Status::ok();
    }
  }
  QF_ASSIGN_OR_RETURN(*s.tensor, f.load_f32(*ti));
  drop_resident_pages(bytes.data(), bytes.size());
  if (rope_heads > 0) {
    const int64_t rows = s.shape[0], cols = s.shape.rank == 2 ? s.shape[1] : 1;
    unpermute_rope_rows(s.tensor->f32(), rows, cols, rope_heads);
  }
  return Status::ok();
}

// Empties decoder layer l (its tensors and packed forms).
void free_layer(ModelWeights& w, int l) { w.layers[size_t(l)] = LayerWeights{}; }

}  // namespace

Expected<ModelWeights> weights_from_gguf(const gguf::GgufFile& f, const ModelConfig& c, bool pack_q4) {
  return weights_from_gguf(f, c, pack_q4, /*layers=*/true);
}

Expected<ModelWeights> weights_from_gguf(const gguf::GgufFile& f, const ModelConfig& c, bool pack_q4, bool layers) {
  // Every layer has at least 9 tensors: a block count the file cannot hold is refused before any allocation.
  if (uint64_t(c.num_hidden_layers) * 9 > f.tensors().size())
    return error("{}: block_count {} needs at least {} tensors, the file has {}", f.path(), c.num_hidden_layers,
                 uint64_t(c.num_hidden_layers) * 9, f.tensors().size());
  ModelWeights w;
  for (TensorSlot& s : tensor_slots(c, w)) QF_RETURN_IF_ERROR(gguf_slot(f, c, s, pack_q4, layers || s.layer < 0));
  return w;
}

namespace {

Expected<LoadedModel> load_gguf(const std::string& path, const LoadOptions& opt) {
  QF_ASSIGN_OR_RETURN(gguf::GgufFile gf, gguf::GgufFile::open(path));
  auto f = std::make_shared<gguf::GgufFile>(std::move(gf));
  QF_ASSIGN_OR_RETURN(ModelConfig c, config_from_gguf(*f));
  QF_ASSIGN_OR_RETURN(ModelWeights w, weights_from_gguf(*f, c, opt.pack_q4, !opt.stream_layers));
  LoadedModel m;
  m.source = path;
  QF_ASSIGN_OR_RETURN(m.tokenizer, Tokenizer::from_gguf(*f));
  m.model = std::make_unique<LlamaModel>(std::move(c), std::move(w));
  if (opt.stream_layers) {
    LlamaModel* model = m.model.get();
    const bool pack_q4 = opt.pack_q4;
    m.layers.load = [f, model, pack_q4](int l) {
      for (TensorSlot& s : tensor_slots(model->config(), model->mutable_weights()))
        if (s.layer == l) QF_RETURN_IF_ERROR(gguf_slot(*f, model->config(), s, pack_q4, true));
      return Status::ok();
    };
    m.layers.release = [model](int l) { free_layer(model->mutable_weights(), l); };
  }
  return m;
}

Expected<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return error("{}: cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// quantization_config from config.json, else from quantize_config.json (older GPTQ checkpoints); nullopt when
// the checkpoint is not quantized.
Expected<std::optional<formats::QuantizationConfig>> find_quantization_config(const std::string& dir) {
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  QF_ASSIGN_OR_RETURN(std::string text, read_text(cfg_path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("quantization_config")) {
    QF_ASSIGN_OR_RETURN(formats::QuantizationConfig q,
                        formats::parse_quantization_config(j["quantization_config"].dump(), cfg_path));
    return std::optional<formats::QuantizationConfig>(q);
  }
  const std::string qc_path = (fs::path(dir) / "quantize_config.json").string();
  std::error_code ec;
  if (fs::exists(qc_path, ec)) {
    QF_ASSIGN_OR_RETURN(std::string qtext, read_text(qc_path));
    nlohmann::json qj = nlohmann::json::parse(qtext, nullptr, false);
    if (qj.is_object() && !qj.contains("quant_method")) qj["quant_method"] = "gptq";
    QF_ASSIGN_OR_RETURN(formats::QuantizationConfig q, formats::parse_quantization_config(qj.dump(), qc_path));
    return std::optional<formats::QuantizationConfig>(q);
  }
  return std::optional<formats::QuantizationConfig>();
}

// Copies an integer/fp16 tensor of the checkpoint out of the map (the view may be misaligned), checking dtype
// and shape; errors name the tensor.
template <typename T>
Status read_exact(const safetensors::Checkpoint& ckpt, const std::string& dir, const std::string& name, DType dtype,
                  const Shape& shape, std::vector<T>& out) {
  const safetensors::TensorEntry* e = ckpt.find(name);
  if (!e) return error("{}: tensor '{}' missing", dir, name);
  if (e->view.dtype != dtype)
    return error("{}: tensor '{}' has dtype {}, expected {}", dir, name, dtype_name(e->view.dtype), dtype_name(dtype));
  if (!(e->view.shape == shape))
    return error("{}: tensor '{}' has shape {}, expected {}", dir, name, e->view.shape.str(), shape.str());
  out.resize(size_t(shape.numel()));
  std::memcpy(out.data(), e->view.data, out.size() * sizeof(T));
  return Status::ok();
}

// One packed linear of an AWQ/GPTQ checkpoint, unpacked to codes and repacked for the runtime.
Expected<PackedWeight> load_packed_linear(const safetensors::Checkpoint& ckpt, const std::string& dir,
                                          const formats::QuantizationConfig& qc, const std::string& base,
                                          const Shape& shape) {
  formats::PackedLinear p;
  p.out = shape[0];
  p.in = shape[1];
  p.group_size = qc.group_size == -1 ? p.in : qc.group_size;
  if (p.out % formats::kPerWord != 0 || p.in % formats::kPerWord != 0)
    return error("{}: {} is [{}, {}]; packed layers need both dimensions to be multiples of 8", dir, base, p.out, p.in);
  if (p.in % p.group_size != 0)
    return error("{}: group_size {} does not divide in_features {} of {}", dir, p.group_size, p.in, base);
  const int64_t O = p.out, I = p.in, G = p.groups(), W = formats::kPerWord;
  const bool awq = qc.format == formats::PackedFormat::kAwqGemm;
  QF_RETURN_IF_ERROR(read_exact(ckpt, dir, base + ".qweight", DType::kI32, awq ? Shape{I, O / W} : Shape{I / W, O}, p.qweight));
  QF_RETURN_IF_ERROR(read_exact(ckpt, dir, base + ".qzeros", DType::kI32, Shape{G, O / W}, p.qzeros));
  QF_RETURN_IF_ERROR(read_exact(ckpt, dir, base + ".scales", DType::kF16, Shape{G, O}, p.scales));
  if (!awq && ckpt.find(base + ".g_idx"))
    QF_RETURN_IF_ERROR(read_exact(ckpt, dir, base + ".g_idx", DType::kI32, Shape{I}, p.g_idx));
  // Errors of the unpacking name the tensor; prefix the checkpoint directory.
  auto unpacked = formats::unpack_linear(p, qc.format, base);
  if (!unpacked) return error("{}: {}", dir, unpacked.message());
  auto w4 = formats::to_w4_weight(*unpacked, base);
  if (!w4) return error("{}: {}", dir, w4.message());
  return std::make_shared<const kernels::W4Weight>(std::move(*w4));
}

// One tensor slot of a Hugging Face checkpoint: checked (present, shape, dtype), and with load_data read into the
// slot (f32, or packed for AWQ/GPTQ linears), after which its mapped pages leave the resident set.
Status hf_slot(const safetensors::Checkpoint& ckpt, const std::string& dir, const std::string& cfg_path,
               const std::optional<formats::QuantizationConfig>& qc, const LoadOptions& opt, TensorSlot& s,
               bool load_data) {
  if (qc && s.packed) {
    const std::string base = s.name.substr(0, s.name.size() - std::string(".weight").size());
    if (ckpt.find(base + ".qweight")) {
      if (!load_data) return Status::ok();  // load_packed_linear checks its tensors when it reads them
      QF_ASSIGN_OR_RETURN(*s.packed, load_packed_linear(ckpt, dir, *qc, base, s.shape));
      if (opt.dequantize_packed) {
        const std::vector<float> deq = kernels::w4_dequantize(**s.packed);
        *s.tensor = Tensor(DType::kF32, s.shape);
        std::copy(deq.begin(), deq.end(), s.tensor->f32());
        s.packed->reset();
      }
      return Status::ok();
    }
    // Not converted (modules_to_not_convert): a dense weight follows.
  }
  const safetensors::TensorEntry* e = ckpt.find(s.name);
  if (!e) {
    if (s.packed && !qc && ckpt.find(s.name.substr(0, s.name.size() - 7) + ".qweight"))
      return error("{}: '{}' is stored packed (.qweight) but {} has no quantization_config", dir, s.name, cfg_path);
    return error("{}: tensor '{}' missing (required by {})", dir, s.name, cfg_path);
  }
  if (!(e->view.shape == s.shape))
    return error("{}: tensor '{}' has shape {}, but {} implies {}", dir, s.name, e->view.shape.str(), cfg_path,
                 s.shape.str());
  if (e->view.dtype != DType::kF32 && e->view.dtype != DType::kF16 && e->view.dtype != DType::kBF16)
    return error("{}: tensor '{}' has dtype {}, expected F32, F16 or BF16", dir, s.name, dtype_name(e->view.dtype));
  if (!load_data) return Status::ok();
  *s.tensor = Tensor(DType::kF32, s.shape);
  convert_to_f32(e->view, s.tensor->f32());
  drop_resident_pages(e->view.data, size_t(s.shape.numel()) * dtype_size(e->view.dtype));
  return Status::ok();
}

Expected<LoadedModel> load_hf_dir(const std::string& dir, const LoadOptions& opt) {
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  QF_ASSIGN_OR_RETURN(ModelConfig c, load_model_config(cfg_path));
  QF_ASSIGN_OR_RETURN(std::optional<formats::QuantizationConfig> qc, find_quantization_config(dir));
  QF_ASSIGN_OR_RETURN(safetensors::Checkpoint opened, safetensors::Checkpoint::open_dir(dir));
  auto ckpt = std::make_shared<safetensors::Checkpoint>(std::move(opened));
  if (uint64_t(c.num_hidden_layers) * 9 > ckpt->names().size())
    return error("{}: num_hidden_layers {} needs at least {} tensors, the checkpoint has {}", dir, c.num_hidden_layers,
                 uint64_t(c.num_hidden_layers) * 9, ckpt->names().size());
  ModelWeights w;
  for (TensorSlot& s : tensor_slots(c, w))
    QF_RETURN_IF_ERROR(hf_slot(*ckpt, dir, cfg_path, qc, opt, s, !opt.stream_layers || s.layer < 0));
  LoadedModel m;
  m.source = dir;
  const std::string tok_path = (fs::path(dir) / "tokenizer.json").string();
  QF_ASSIGN_OR_RETURN(m.tokenizer, Tokenizer::from_tokenizer_json(tok_path));
  m.model = std::make_unique<LlamaModel>(std::move(c), std::move(w));
  if (opt.stream_layers) {
    LlamaModel* model = m.model.get();
    m.layers.load = [ckpt, dir, cfg_path, qc, opt, model](int l) {
      for (TensorSlot& s : tensor_slots(model->config(), model->mutable_weights()))
        if (s.layer == l) QF_RETURN_IF_ERROR(hf_slot(*ckpt, dir, cfg_path, qc, opt, s, true));
      return Status::ok();
    };
    m.layers.release = [model](int l) { free_layer(model->mutable_weights(), l); };
  }
  return m;
}

}  // namespace

Expected<LoadedModel> load_model(const std::string& path, const LoadOptions& opt) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return load_hf_dir(path, opt);
  if (!fs::exists(path, ec)) return error("{}: no such file or directory", path);
  return load_gguf(path, opt);
}

}  // namespace qforge
