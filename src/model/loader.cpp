#include "model/loader.h"

#include <filesystem>
#include <map>

#include "formats/gguf.h"
#include "formats/safetensors.h"

namespace qforge {

namespace fs = std::filesystem;

namespace {

// Hugging Face tensor name -> GGUF tensor name (llama.cpp convention).
std::string gguf_name(const std::string& hf) {
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
  return hf;
}

void permute_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads, bool to_hf) {
  const int64_t hd = rows / n_heads, half = hd / 2;
  std::vector<float> tmp(size_t(hd * cols));
  for (int64_t h = 0; h < n_heads; ++h) {
    float* head = w + h * hd * cols;
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
  permute_rows(w, rows, cols, n_heads, true);
}
void permute_rope_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads) {
  permute_rows(w, rows, cols, n_heads, false);
}

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

Expected<ModelWeights> weights_from_gguf(const gguf::GgufFile& f, const ModelConfig& c) {
  ModelWeights w;
  for (TensorSlot& s : tensor_slots(c, w)) {
    const std::string gname = gguf_name(s.name);
    const gguf::TensorInfo* ti = f.find_tensor(gname);
    if (!ti) return error("{}: tensor '{}' (for {}) missing", f.path(), gname, s.name);
    if (!(ti->shape() == s.shape))
      return error("{}: tensor '{}' has shape {}, the model config implies {}", f.path(), gname,
                   ti->shape().str(), s.shape.str());
    QF_ASSIGN_OR_RETURN(*s.tensor, f.load_f32(*ti));
    const bool is_q = s.name.ends_with("self_attn.q_proj.weight") || s.name.ends_with("self_attn.q_proj.bias");
    const bool is_k = s.name.ends_with("self_attn.k_proj.weight") || s.name.ends_with("self_attn.k_proj.bias");
    if (is_q || is_k) {
      const int64_t rows = s.shape[0], cols = s.shape.rank == 2 ? s.shape[1] : 1;
      unpermute_rope_rows(s.tensor->f32(), rows, cols, is_q ? c.num_attention_heads : c.num_key_value_heads);
    }
  }
  return w;
}

namespace {

Expected<LoadedModel> load_gguf(const std::string& path) {
  QF_ASSIGN_OR_RETURN(gguf::GgufFile f, gguf::GgufFile::open(path));
  QF_ASSIGN_OR_RETURN(ModelConfig c, config_from_gguf(f));
  QF_ASSIGN_OR_RETURN(ModelWeights w, weights_from_gguf(f, c));
  LoadedModel m;
  m.source = path;
  QF_ASSIGN_OR_RETURN(m.tokenizer, Tokenizer::from_gguf(f));
  m.model = std::make_unique<LlamaModel>(std::move(c), std::move(w));
  return m;
}

Expected<LoadedModel> load_hf_dir(const std::string& dir) {
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  QF_ASSIGN_OR_RETURN(ModelConfig c, load_model_config(cfg_path));
  QF_ASSIGN_OR_RETURN(safetensors::Checkpoint ckpt, safetensors::Checkpoint::open_dir(dir));
  ModelWeights w;
  std::map<std::string, bool> used;
  for (TensorSlot& s : tensor_slots(c, w)) {
    const safetensors::TensorEntry* e = ckpt.find(s.name);
    if (!e) return error("{}: tensor '{}' missing (required by {})", dir, s.name, cfg_path);
    used[s.name] = true;
    if (!(e->view.shape == s.shape))
      return error("{}: tensor '{}' has shape {}, but {} implies {}", dir, s.name, e->view.shape.str(), cfg_path,
                   s.shape.str());
    if (e->view.dtype != DType::kF32 && e->view.dtype != DType::kF16 && e->view.dtype != DType::kBF16)
      return error("{}: tensor '{}' has dtype {}, expected F32, F16 or BF16", dir, s.name,
                   dtype_name(e->view.dtype));
    *s.tensor = Tensor(DType::kF32, s.shape);
    convert_to_f32(e->view, s.tensor->f32());
  }
  LoadedModel m;
  m.source = dir;
  const std::string tok_path = (fs::path(dir) / "tokenizer.json").string();
  QF_ASSIGN_OR_RETURN(m.tokenizer, Tokenizer::from_tokenizer_json(tok_path));
  m.model = std::make_unique<LlamaModel>(std::move(c), std::move(w));
  return m;
}

}  // namespace

Expected<LoadedModel> load_model(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return load_hf_dir(path);
  if (!fs::exists(path, ec)) return error("{}: no such file or directory", path);
  return load_gguf(path);
}

}  // namespace qforge
