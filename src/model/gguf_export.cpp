#include "model/gguf_export.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <numbers>
#include <span>
#include <unordered_map>

#include "formats/gguf_quants.h"
#include "formats/gguf_writer.h"
#include "model/layer_spec.h"
#include "model/loader.h"

namespace qforge {

using gguf::GgmlType;
using nlohmann::json;

namespace {

constexpr int64_t kQ4Block = 32;  // elements per Q4_0/Q4_1 block
// llama.cpp llama_ftype values and the gguf-py quantization version of the *_0/*_1 block formats.
constexpr uint32_t kFtypeMostlyQ4_0 = 2;
constexpr uint32_t kFtypeMostlyQ4_1 = 3;
constexpr uint32_t kQuantizationVersion = 2;
// llama.cpp token types (llama_token_type / gguf-py TokenType).
constexpr int32_t kTokNormal = 1, kTokUnknown = 2, kTokControl = 3, kTokUserDefined = 4, kTokUnused = 5,
                  kTokByte = 6;

// Pre-tokenizer regexes of the byte-level families llama.cpp names in tokenizer.ggml.pre (the same
// strings as tokenizer_gguf.cpp reads back; from llama.cpp's llama-vocab.cpp).
constexpr const char* kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// gguf_row -> Hugging Face row for q/k (llama.cpp's RoPE permutation, per head), identity otherwise.
// Derived by applying permute_rope_rows to the row indices, so the export and the loader share one
// definition of the permutation.
std::vector<int64_t> rope_row_map(int64_t rows, int64_t n_heads) {
  std::vector<float> idx(static_cast<size_t>(rows));  // row indices < 2^24: exact in f32
  for (int64_t r = 0; r < rows; ++r) idx[size_t(r)] = float(r);
  if (n_heads > 0) permute_rope_rows(idx.data(), rows, 1, n_heads);
  std::vector<int64_t> map(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) map[size_t(r)] = int64_t(idx[size_t(r)]);
  return map;
}

// Checks one quantized linear against the config and the block format; errors name the layer.
Status check_linear(const quant::QuantizedLinear& q, const std::string& name, int64_t out, int64_t in,
                    GgmlType type) {
  if (q.out != out || q.in != in)
    return error("{}: quantized linear is [{}, {}], the model config implies [{}, {}]", name, q.out, q.in,
                 out, in);
  if (q.cfg.bits != 4) return error("{}: {}-bit codes; GGUF Q4_0/Q4_1 hold 4-bit codes", name, q.cfg.bits);
  const int64_t gs = q.cfg.group_size == 0 ? in : q.cfg.group_size;
  if (gs <= 0 || gs % kQ4Block != 0 || in % gs != 0)
    return error("{}: group size {} is not a multiple of the {}-weight {} block (in_features {})", name,
                 q.cfg.group_size, kQ4Block, gguf::ggml_type_name(type), in);
  const int64_t n_groups = in / gs;
  if (int64_t(q.qweight.size()) != out * in)
    return error("{}: {} codes for a [{}, {}] weight", name, q.qweight.size(), out, in);
  const Shape sg{out, n_groups};
  if (!(q.scales.shape() == sg) || !(q.zeros.shape() == sg))
    return error("{}: scales {} / zeros {}, expected {}", name, q.scales.shape().str(), q.zeros.shape().str(),
                 sg.str());
  if (!q.g_idx.empty()) {
    if (int64_t(q.g_idx.size()) != in)
      return error("{}: g_idx has {} entries for {} inputs", name, q.g_idx.size(), in);
    for (int64_t i = 0; i < in; ++i)
      if (q.g_idx[size_t(i)] != i / gs)
        return error(
            "{}: g_idx[{}] = {} but GGUF blocks need i / group_size = {}: act-order (desc_act) permuted "
            "groups "
            "cannot be stored as Q4_0/Q4_1; quantize without act-order",
            name, i, q.g_idx[size_t(i)], i / gs);
  }
  if (type == GgmlType::kQ4_0) {
    const float* z = q.zeros.f32();
    for (int64_t k = 0; k < out * n_groups; ++k)
      if (z[k] != 8.0f)
        return error(
            "{}: zero point {} at row {} group {}: Q4_0 needs symmetric quantization (zero 8) "
            "everywhere; use Q4_1 for asymmetric codes",
            name, z[k], k / n_groups, k % n_groups);
  }
  return Status::ok();
}

// Encodes a checked quantized linear as Q4 rows into out[out_features * row bytes], rows in GGUF order.
Status encode_linear(const quant::QuantizedLinear& q, GgmlType type, int64_t rope_heads,
                     const std::string& hf_name, std::span<uint8_t> out) {
  const int64_t gs = q.cfg.group_size == 0 ? q.in : q.cfg.group_size;
  int64_t be = 0, bb = 0;
  gguf::ggml_type_layout(type, &be, &bb);
  const int64_t row_bytes = q.in / be * bb;
  const int64_t nb = q.in / kQ4Block, n_groups = q.in / gs;
  const std::vector<int64_t> src_row = rope_row_map(q.out, rope_heads);
  std::vector<float> scale(static_cast<size_t>(nb)),
      zero(static_cast<size_t>(nb));  // [in/32] this row's per-block copies
  for (int64_t r = 0; r < q.out; ++r) {
    const int64_t src = src_row[size_t(r)];
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t g = b * kQ4Block / gs;  // a block never straddles groups: gs % 32 == 0
      scale[size_t(b)] = q.scales.f32()[src * n_groups + g];
      zero[size_t(b)] = q.zeros.f32()[src * n_groups + g];
    }
    QF_RETURN_IF_ERROR(gguf::encode_q4_row(type, q.qweight.data() + src * q.in, scale.data(), zero.data(),
                                           q.in, out.data() + r * row_bytes)
                           .with_context(fmt::format("{} row {}", hf_name, src)));
  }
  return Status::ok();
}

// Adds a quantized linear whose blocks are encoded from its codes at write time.
Status add_linear(gguf::GgufWriter& w, std::string gname, const std::string& hf_name,
                  const quant::QuantizedLinear& q, GgmlType type, int64_t rope_heads) {
  auto fill = [&q, type, rope_heads, hf_name](std::span<uint8_t> out) -> Status {
    return encode_linear(q, type, rope_heads, hf_name, out);
  };
  return w.add_tensor(std::move(gname), type, {q.in, q.out}, std::move(fill));
}

// A dense tensor (f32 in memory) as F32 or F16 into out, rows permuted for q/k biases.
void encode_dense(const Tensor& t, GgmlType type, int64_t rope_heads, std::span<uint8_t> out) {
  const int64_t rows = t.shape()[0], cols = t.numel() / rows;
  std::vector<float> tmp;
  const float* src = t.f32();
  if (rope_heads > 0) {
    tmp.assign(t.f32(), t.f32() + t.numel());
    permute_rope_rows(tmp.data(), rows, cols, rope_heads);
    src = tmp.data();
  }
  if (type == GgmlType::kF32)
    std::memcpy(out.data(), src, size_t(t.numel()) * sizeof(float));
  else
    convert_from_f32(src, t.numel(), DType::kF16, out.data());
}

// Adds a dense tensor (f32 in memory, outside the decoder layers) as F32 or F16, rows permuted for q/k
// biases. Writing it releases a streamed layer still loaded.
Status add_dense(gguf::GgufWriter& w, std::string gname, const Tensor& t, GgmlType type, int64_t rope_heads,
                 LayerCursor& cursor) {
  std::vector<int64_t> ne = t.shape().to_vector();
  std::reverse(ne.begin(), ne.end());
  auto fill = [&t, type, rope_heads, &cursor](std::span<uint8_t> out) -> Status {
    QF_RETURN_IF_ERROR(cursor.enter(-1));
    encode_dense(t, type, rope_heads, out);
    return Status::ok();
  };
  return w.add_tensor(std::move(gname), type, std::move(ne), std::move(fill));
}

// llama.cpp's rope_freqs for Llama-3 rope scaling (convert_hf_to_gguf.py LlamaModel): per frequency pair,
// 1 for short wavelengths, `factor` for long ones, a smooth blend between.
std::vector<float> llama3_rope_factors(const ModelConfig& c) {
  const RopeScaling& rs = c.rope_scaling;
  const double low_wavelen = double(rs.original_max_position_embeddings) / rs.low_freq_factor;
  const double high_wavelen = double(rs.original_max_position_embeddings) / rs.high_freq_factor;
  std::vector<float> out;
  for (int64_t i = 0; i < c.head_dim; i += 2) {
    const float freq = 1.0f / std::pow(float(c.rope_theta), float(i) / float(c.head_dim));
    const double wavelen = 2 * std::numbers::pi / double(freq);
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(float(rs.factor));
    } else {
      const double smooth = (double(rs.original_max_position_embeddings) / wavelen - rs.low_freq_factor) /
                            (rs.high_freq_factor - rs.low_freq_factor);
      out.push_back(float(1.0 / ((1 - smooth) / rs.factor + smooth)));
    }
  }
  return out;
}

// "<0xXX>": a byte-fallback token.
bool is_byte_token(const std::string& t) {
  return t.size() == 6 && t.starts_with("<0x") && t[5] == '>' && std::isxdigit(uint8_t(t[3])) &&
         std::isxdigit(uint8_t(t[4]));
}

// Bytes of the UTF-8 sequence that starts with byte b (1 for invalid lead bytes).
int utf8_char_len(uint8_t b) {
  return b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 1;
}

// tokenizer.ggml.pre for a byte-level pre-tokenizer (the value tokenizer_gguf.cpp and llama.cpp map back
// to the same splitting), or an error naming it.
Expected<std::string> byte_level_pre(const json& pre) {
  auto type_of = [](const json& j) {
    return j.is_object() && j.contains("type") ? j["type"].get<std::string>() : "";
  };
  if (type_of(pre) == "ByteLevel" && pre.value("use_regex", true)) return std::string("gpt-2");
  if (type_of(pre) == "Sequence" && pre.contains("pretokenizers") && pre["pretokenizers"].size() == 2) {
    const json& a = pre["pretokenizers"][0];
    const json& b = pre["pretokenizers"][1];
    if (type_of(b) == "ByteLevel") {
      if (type_of(a) == "Digits" && a.value("individual_digits", false) && b.value("use_regex", true))
        return std::string("smollm");
      if (type_of(a) == "Split" && a.contains("pattern") && a["pattern"].contains("Regex") &&
          !b.value("use_regex", true)) {
        const std::string re = a["pattern"]["Regex"].get<std::string>();
        if (re == kLlama3Split) return std::string("llama-bpe");
        if (re == kQwen2Split) return std::string("qwen2");
      }
    }
  }
  return error(
      "tokenizer: pre-tokenizer {} has no tokenizer.ggml.pre equivalent known to qforge (known: GPT-2 "
      "ByteLevel, SmolLM digits, Llama-3 and Qwen2 regex splits)",
      pre.dump().substr(0, 200));
}

// tokenizer.ggml.* from the tokenizer's own tokenizer.json, vocabulary padded to n_vocab.
Status add_tokenizer_from_json(gguf::GgufWriter& w, const Tokenizer& tok, const ModelConfig& c) {
  const int64_t n_vocab = c.vocab_size;
  json root, cfg;
  try {
    root = json::parse(tok.to_tokenizer_json());
    cfg = json::parse(tok.to_tokenizer_config_json());
  } catch (const json::exception& e) {
    return error("tokenizer: cannot re-read its tokenizer.json: {}", e.what());
  }
  const json& model = root["model"];
  if (!model.is_object() || model.value("type", "") != "BPE")
    return error("tokenizer: model type {} is not BPE", model.is_object() ? model.value("type", "?") : "?");
  const bool byte_fallback = model.value("byte_fallback", false);

  std::vector<std::string> tokens(static_cast<size_t>(n_vocab));
  std::vector<int32_t> types(static_cast<size_t>(n_vocab), kTokUnused);
  std::vector<bool> set(static_cast<size_t>(n_vocab), false);
  std::unordered_map<std::string, int64_t> id_of;
  auto put = [&](int64_t id, const std::string& text, int32_t type) -> Status {
    if (id < 0 || id >= n_vocab)
      return error("tokenizer: token '{}' has id {}, outside the model's vocabulary of {} (embedding rows)",
                   text, id, n_vocab);
    tokens[size_t(id)] = text;
    types[size_t(id)] = type;
    set[size_t(id)] = true;
    id_of[text] = id;
    return Status::ok();
  };
  for (const auto& [text, id] : model["vocab"].items())
    QF_RETURN_IF_ERROR(
        put(id.get<int64_t>(), text, byte_fallback && is_byte_token(text) ? kTokByte : kTokNormal));
  for (const json& a : root["added_tokens"])
    QF_RETURN_IF_ERROR(put(a["id"].get<int64_t>(), a["content"].get<std::string>(),
                           a.value("special", false) ? kTokControl : kTokUserDefined));
  int64_t unk = -1;
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    auto it = id_of.find(model["unk_token"].get<std::string>());
    if (it != id_of.end()) {
      unk = it->second;
      types[size_t(unk)] = kTokUnknown;
    }
  }
  for (int64_t i = 0; i < n_vocab; ++i)
    if (!set[size_t(i)]) tokens[size_t(i)] = fmt::format("[PAD{}]", i);  // convert_hf_to_gguf's padding

  std::vector<std::string> merges;
  for (const json& m : model["merges"]) {
    if (m.is_string())
      merges.push_back(m.get<std::string>());
    else if (m.is_array() && m.size() == 2)
      merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
    else
      return error("tokenizer: merge {} is neither \"a b\" nor [a, b]", m.dump());
  }

  w.set_string("tokenizer.ggml.model", byte_fallback ? "llama" : "gpt2");
  if (!byte_fallback) {
    QF_ASSIGN_OR_RETURN(std::string pre, byte_level_pre(root["pre_tokenizer"]));
    w.set_string("tokenizer.ggml.pre", pre);
  } else {
    // SentencePiece-style: llama.cpp merges the adjacent pair whose concatenation has the highest score.
    // Score a token by the rank of the first merge that makes it (earlier merge = higher score), which
    // gives HF BPE's merge order. Single characters, bytes and added tokens are never merge results
    // (score 0); a longer normal token that no merge makes gets a score below every merge, since HF BPE
    // never produces it.
    const float kNeverMerged = -float(merges.size() + 1);
    std::vector<float> scores(static_cast<size_t>(n_vocab), 0.0f);
    std::vector<bool> scored(static_cast<size_t>(n_vocab), false);
    for (size_t k = 0; k < merges.size(); ++k) {
      const size_t sp = merges[k].find(' ');
      auto it = id_of.find(merges[k].substr(0, sp) + merges[k].substr(sp + 1));
      if (it != id_of.end() && !scored[size_t(it->second)]) {
        scores[size_t(it->second)] = -float(k + 1);
        scored[size_t(it->second)] = true;
      }
    }
    for (int64_t i = 0; i < n_vocab; ++i) {
      const std::string& t = tokens[size_t(i)];
      const bool one_char = !t.empty() && size_t(utf8_char_len(uint8_t(t[0]))) == t.size();
      if (!scored[size_t(i)] && types[size_t(i)] == kTokNormal && !one_char) scores[size_t(i)] = kNeverMerged;
    }
    // Prefix space: a Metaspace pre-tokenizer that prepends, or Llama-2's Prepend("▁") normalizer.
    bool add_space_prefix = false;
    const json& pre = root["pre_tokenizer"];
    if (pre.is_object() && pre.value("type", "") == "Metaspace")
      add_space_prefix = pre.value("prepend_scheme", "always") != "never";
    const json& norm = root["normalizer"];
    if (norm.is_object()) {
      const json steps = norm.value("type", "") == "Sequence" ? norm["normalizers"] : json::array({norm});
      for (const json& s : steps)
        if (s.value("type", "") == "Prepend" && s.value("prepend", "") == "\xE2\x96\x81")
          add_space_prefix = true;
    }
    w.set_float32_array("tokenizer.ggml.scores", scores);
    w.set_bool("tokenizer.ggml.add_space_prefix", add_space_prefix);
  }
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_int32_array("tokenizer.ggml.token_type", types);
  w.set_string_array("tokenizer.ggml.merges", merges);
  // The tokenizer's own special tokens, else the model config's (a tokenizer.json alone may not name them).
  const int64_t bos = tok.bos_id() >= 0 ? tok.bos_id() : c.bos_token_id;
  const int64_t eos = tok.eos_id() >= 0 ? tok.eos_id() : c.eos_token_ids.empty() ? -1 : c.eos_token_ids[0];
  if (bos >= 0 && bos < n_vocab) w.set_uint32("tokenizer.ggml.bos_token_id", uint32_t(bos));
  if (eos >= 0 && eos < n_vocab) w.set_uint32("tokenizer.ggml.eos_token_id", uint32_t(eos));
  if (unk >= 0) w.set_uint32("tokenizer.ggml.unknown_token_id", uint32_t(unk));
  if (cfg.contains("pad_token") && cfg["pad_token"].is_string()) {
    auto it = id_of.find(cfg["pad_token"].get<std::string>());
    if (it != id_of.end()) w.set_uint32("tokenizer.ggml.padding_token_id", uint32_t(it->second));
  }
  w.set_bool("tokenizer.ggml.add_bos_token", cfg.value("add_bos_token", false));
  w.set_bool("tokenizer.ggml.add_eos_token", cfg.value("add_eos_token", false));
  if (cfg.contains("chat_template") && cfg["chat_template"].is_string())
    w.set_string("tokenizer.chat_template", cfg["chat_template"].get<std::string>());
  return Status::ok();
}

}  // namespace

uint32_t gguf_file_type(GgmlType q4_type) {
  return q4_type == GgmlType::kQ4_0 ? kFtypeMostlyQ4_0 : kFtypeMostlyQ4_1;
}

Status save_gguf_checkpoint(const std::string& path, const ModelConfig& c, const ModelWeights& weights,
                            const quant::QuantizedLinears& linears, const Tokenizer& tokenizer,
                            const gguf::GgufFile* source, const GgufExportOptions& opt) {
  auto fail = [&](const Status& s) { return s.with_context(fmt::format("{}: GGUF export", path)); };
  if (opt.q4_type != GgmlType::kQ4_0 && opt.q4_type != GgmlType::kQ4_1)
    return fail(error("quantized type must be Q4_0 or Q4_1, got {}", gguf::ggml_type_name(opt.q4_type)));
  if (opt.embed_type != GgmlType::kF16 && opt.embed_type != GgmlType::kF32)
    return fail(error("embedding type must be F16 or F32, got {}", gguf::ggml_type_name(opt.embed_type)));
  if (opt.layers && (!opt.layers->load || !opt.layers->release))
    return fail(error("the layer stream has no load or release"));
  // Streamed: linears.layers[l] is filled by the stream's load(l) and checked then.
  if (!opt.layers && int64_t(linears.layers.size()) != c.num_hidden_layers)
    return fail(error("{} layers of quantized linears for a model of {} layers", linears.layers.size(),
                      c.num_hidden_layers));

  gguf::GgufWriter w;
  const std::string arch = "llama";
  auto key = [&](const char* k) { return arch + "." + k; };
  w.set_string("general.architecture", arch);
  w.set_string("general.name", opt.name.empty() ? "qforge" : opt.name);
  w.set_uint32("general.file_type", gguf_file_type(opt.q4_type));
  w.set_uint32("general.quantization_version", kQuantizationVersion);
  w.set_uint32(key("vocab_size"), uint32_t(c.vocab_size));
  w.set_uint32(key("context_length"), uint32_t(c.max_position_embeddings));
  w.set_uint32(key("embedding_length"), uint32_t(c.hidden_size));
  w.set_uint32(key("block_count"), uint32_t(c.num_hidden_layers));
  w.set_uint32(key("feed_forward_length"), uint32_t(c.intermediate_size));
  w.set_uint32(key("rope.dimension_count"), uint32_t(c.head_dim));
  w.set_uint32(key("attention.head_count"), uint32_t(c.num_attention_heads));
  w.set_uint32(key("attention.head_count_kv"), uint32_t(c.num_key_value_heads));
  w.set_uint32(key("attention.key_length"), uint32_t(c.head_dim));
  w.set_uint32(key("attention.value_length"), uint32_t(c.head_dim));
  w.set_float32(key("attention.layer_norm_rms_epsilon"), float(c.rms_norm_eps));
  w.set_float32(key("rope.freq_base"), float(c.rope_theta));
  if (c.rope_scaling.type == "linear") {
    w.set_string(key("rope.scaling.type"), "linear");
    w.set_float32(key("rope.scaling.factor"), float(c.rope_scaling.factor));
  }

  // Tokenizer.
  if (source) {
    bool any = false;
    for (const auto& [k, v] : source->metadata())
      if (k.starts_with("tokenizer.")) {
        w.set_value(k, v);
        any = true;
      }
    if (!any) return fail(error("source {} has no tokenizer.* metadata to copy", source->path()));
  } else {
    QF_RETURN_IF_ERROR(fail(add_tokenizer_from_json(w, tokenizer, c)));
  }

  // Tensors, in tensor_slots order; linears from their codes.
  std::vector<float> rope_factors;
  LayerCursor cursor(opt.layers);
  for (const TensorSlot& s : tensor_slots(c, weights)) {
    const LinearSpec* spec = nullptr;
    for (const LinearSpec& ls : kLlamaLinears)
      if (s.layer >= 0 && s.name == fmt::format("model.layers.{}.{}.weight", s.layer, ls.name)) spec = &ls;
    const bool is_q =
        s.name.ends_with("self_attn.q_proj.weight") || s.name.ends_with("self_attn.q_proj.bias");
    const bool is_k =
        s.name.ends_with("self_attn.k_proj.weight") || s.name.ends_with("self_attn.k_proj.bias");
    const int64_t rope_heads = is_q ? c.num_attention_heads : is_k ? c.num_key_value_heads : 0;
    if (spec) {
      const size_t i = size_t(spec - kLlamaLinears.data());
      const std::string hf = fmt::format("model.layers.{}.{}", s.layer, spec->name);
      if (opt.layers) {
        // Planned from the config: ne {in, out}; the codes are checked and encoded once the layer is loaded.
        const int l = s.layer;
        const int64_t out = s.shape[0], in = s.shape[1];
        auto fill = [&cursor, &linears, &opt, l, i, out, in, hf,
                     rope_heads](std::span<uint8_t> bytes) -> Status {
          QF_RETURN_IF_ERROR(cursor.enter(l));
          if (size_t(l) >= linears.layers.size() || linears.layers[size_t(l)].size() != kLlamaLinears.size())
            return error("model.layers.{}: no quantized linears after loading the layer", l);
          const quant::QuantizedLinear& q = linears.layers[size_t(l)][i];
          QF_RETURN_IF_ERROR(check_linear(q, hf, out, in, opt.q4_type));
          return encode_linear(q, opt.q4_type, rope_heads, hf, bytes);
        };
        QF_RETURN_IF_ERROR(
            fail(w.add_tensor(gguf_tensor_name(s.name), opt.q4_type, {in, out}, std::move(fill))));
        continue;
      }
      const auto& layer = linears.layers[size_t(s.layer)];
      if (layer.size() != kLlamaLinears.size())
        return fail(error("model.layers.{}: {} quantized linears, expected {}", s.layer, layer.size(),
                          kLlamaLinears.size()));
      const quant::QuantizedLinear& q = layer[i];
      QF_RETURN_IF_ERROR(fail(check_linear(q, hf, s.shape[0], s.shape[1], opt.q4_type)));
      QF_RETURN_IF_ERROR(fail(add_linear(w, gguf_tensor_name(s.name), hf, q, opt.q4_type, rope_heads)));
      continue;
    }
    const std::string gname = gguf_tensor_name(s.name);
    if (gname.empty()) return fail(error("tensor '{}' has no GGUF name", s.name));
    if (opt.layers && s.layer >= 0) {
      std::vector<int64_t> ne = s.shape.to_vector();
      std::reverse(ne.begin(), ne.end());
      auto fill = [&cursor, l = s.layer, t = s.tensor, name = s.name, shape = s.shape,
                   rope_heads](std::span<uint8_t> bytes) -> Status {
        QF_RETURN_IF_ERROR(cursor.enter(l));
        if (t->empty() || !(t->shape() == shape) || t->dtype() != DType::kF32)
          return error(
              "tensor '{}' is missing, not f32, or has shape {} (expected {}) after loading its layer", name,
              t->shape().str(), shape.str());
        encode_dense(*t, GgmlType::kF32, rope_heads, bytes);
        return Status::ok();
      };
      QF_RETURN_IF_ERROR(fail(w.add_tensor(gname, GgmlType::kF32, std::move(ne), std::move(fill))));
      continue;
    }
    if (s.tensor->empty() || !(s.tensor->shape() == s.shape) || s.tensor->dtype() != DType::kF32)
      return fail(error("tensor '{}' is missing, not f32, or has shape {} (expected {})", s.name,
                        s.tensor->shape().str(), s.shape.str()));
    const bool matrix = s.name == "model.embed_tokens.weight" || s.name == "lm_head.weight";
    QF_RETURN_IF_ERROR(
        fail(add_dense(w, gname, *s.tensor, matrix ? opt.embed_type : GgmlType::kF32, rope_heads, cursor)));
  }
  if (c.rope_scaling.type == "llama3") {
    rope_factors = llama3_rope_factors(c);
    std::vector<uint8_t> bytes(rope_factors.size() * sizeof(float));
    std::memcpy(bytes.data(), rope_factors.data(), bytes.size());
    QF_RETURN_IF_ERROR(fail(
        w.add_tensor("rope_freqs.weight", GgmlType::kF32, {int64_t(rope_factors.size())}, std::move(bytes))));
  }
  const Status written = w.write(path);
  cursor.release();  // the layer a failed write stopped in
  return written;
}

}  // namespace qforge
