#include "model/llama.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "ops/ops.h"

namespace qforge {

const char* linear_input_name(LinearInput s) {
  switch (s) {
    case LinearInput::kQKV: return "qkv";
    case LinearInput::kO: return "o";
    case LinearInput::kGateUp: return "gate_up";
    case LinearInput::kDown: return "down";
  }
  return "?";
}

std::vector<TensorSlot> tensor_slots(const ModelConfig& c, ModelWeights& w) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t Q = c.q_dim(), KV = c.kv_dim();
  w.layers.resize(size_t(c.num_hidden_layers));
  std::vector<TensorSlot> s;
  s.push_back({"model.embed_tokens.weight", {V, H}, &w.embed, -1});
  for (int l = 0; l < int(c.num_hidden_layers); ++l) {
    LayerWeights& L = w.layers[size_t(l)];
    const std::string p = fmt::format("model.layers.{}.", l);
    s.push_back({p + "input_layernorm.weight", {H}, &L.attn_norm, l});
    s.push_back({p + "self_attn.q_proj.weight", {Q, H}, &L.wq, l, &L.pq});
    s.push_back({p + "self_attn.k_proj.weight", {KV, H}, &L.wk, l, &L.pk});
    s.push_back({p + "self_attn.v_proj.weight", {KV, H}, &L.wv, l, &L.pv});
    if (c.attention_bias) {
      s.push_back({p + "self_attn.q_proj.bias", {Q}, &L.bq, l});
      s.push_back({p + "self_attn.k_proj.bias", {KV}, &L.bk, l});
      s.push_back({p + "self_attn.v_proj.bias", {KV}, &L.bv, l});
    }
    s.push_back({p + "self_attn.o_proj.weight", {H, Q}, &L.wo, l, &L.po});
    s.push_back({p + "post_attention_layernorm.weight", {H}, &L.mlp_norm, l});
    s.push_back({p + "mlp.gate_proj.weight", {I, H}, &L.w_gate, l, &L.p_gate});
    s.push_back({p + "mlp.up_proj.weight", {I, H}, &L.w_up, l, &L.p_up});
    s.push_back({p + "mlp.down_proj.weight", {H, I}, &L.w_down, l, &L.p_down});
  }
  s.push_back({"model.norm.weight", {H}, &w.final_norm, -1});
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", {V, H}, &w.lm_head, -1});
  return s;
}

namespace {

std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const int64_t hd = c.head_dim;
  std::vector<float> inv(size_t(hd / 2));
  // As transformers computes it, in float32: 1 / base^(2i/d).
  for (int64_t i = 0; i < hd / 2; ++i) {
    const float e = float(2 * i) / float(hd);
    inv[size_t(i)] = 1.0f / std::pow(float(c.rope_theta), e);
  }
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == "linear") {
    for (float& f : inv) f = float(f / rs.factor);
  } else if (rs.type == "llama3") {
    const double old_len = double(rs.original_max_position_embeddings);
    const double low_wavelen = old_len / rs.low_freq_factor;
    const double high_wavelen = old_len / rs.high_freq_factor;
    for (float& f : inv) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f = float(f / rs.factor);
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = float((1.0 - smooth) * f / rs.factor + smooth * f);
      }
    }
  }
  return inv;
}

}  // namespace

LlamaModel::LlamaModel(ModelConfig config, ModelWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)), inv_freq_(rope_inv_freq(config_)) {}

KVCache LlamaModel::make_cache(int64_t capacity) const {
  KVCache kv;
  kv.capacity = capacity;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    kv.k.emplace_back(DType::kF32, Shape{capacity, config_.kv_dim()});
    kv.v.emplace_back(DType::kF32, Shape{capacity, config_.kv_dim()});
  }
  return kv;
}

void LlamaModel::rope_tables(int64_t pos0, int64_t T, std::vector<float>& cos, std::vector<float>& sin) const {
  const size_t half = inv_freq_.size();
  cos.resize(size_t(T) * half);
  sin.resize(size_t(T) * half);
  for (int64_t t = 0; t < T; ++t)
    for (size_t i = 0; i < half; ++i) {
      // float32 product as in transformers, then cos/sin of that float angle.
      const float angle = float(pos0 + t) * inv_freq_[i];
      cos[size_t(t) * half + i] = float(std::cos(double(angle)));
      sin[size_t(t) * half + i] = float(std::sin(double(angle)));
    }
}

namespace {
// y[T, N] = x[T, K] @ W^T: an override (AWQ's candidates) first, else the packed int4 form, else the f32 tensor.
void run_linear(const float* x, int64_t T, int64_t K, const float* override_w, const Tensor& w,
                const PackedWeight& packed, int64_t N, const Tensor& bias, float* y) {
  const float* b = bias.empty() ? nullptr : bias.f32();
  if (!override_w && packed) {
    kernels::w4_linear(x, T, K, *packed, b, y, N);
    return;
  }
  ops::linear(x, T, K, K, override_w ? override_w : w.f32(), N, b, y, N);
}
const Tensor kNoBias;
}  // namespace

bool ModelWeights::has_packed() const {
  for (const LayerWeights& L : layers)
    if (L.pq || L.pk || L.pv || L.po || L.p_gate || L.p_up || L.p_down) return true;
  return false;
}

void LlamaModel::attention_forward(int layer, const float* xn, int64_t T, int64_t pos0, float* k_cache,
                                   float* v_cache, const AttentionWeights& w, float* out,
                                   const LinearInputHook& hook) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[size_t(layer)];
  const int64_t H = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim();
  const int64_t hd = c.head_dim, nh = c.num_attention_heads, nkv = c.num_key_value_heads;
  std::vector<float> cos, sin;
  rope_tables(pos0, T, cos, sin);
  std::vector<float> q(size_t(T * Q)), attn(size_t(T * Q));
  float* k_new = k_cache + pos0 * KV;
  float* v_new = v_cache + pos0 * KV;
  run_linear(xn, T, H, w.wq, L.wq, L.pq, Q, L.bq, q.data());
  run_linear(xn, T, H, w.wk, L.wk, L.pk, KV, L.bk, k_new);
  run_linear(xn, T, H, w.wv, L.wv, L.pv, KV, L.bv, v_new);
  ops::rope_apply(q.data(), T, nh, hd, cos.data(), sin.data());
  ops::rope_apply(k_new, T, nkv, hd, cos.data(), sin.data());
  ops::attention_causal(q.data(), T, pos0, k_cache, v_cache, nh, nkv, hd, attn.data());
  if (hook) hook(layer, LinearInput::kO, attn.data(), T, Q);
  run_linear(attn.data(), T, Q, w.wo, L.wo, L.po, H, kNoBias, out);
}

void LlamaModel::mlp_forward(int layer, const float* xn, int64_t T, const MlpWeights& w, float* out,
                             const LinearInputHook& hook) const {
  const LayerWeights& L = weights_.layers[size_t(layer)];
  const int64_t H = config_.hidden_size, I = config_.intermediate_size;
  std::vector<float> gate(size_t(T * I)), up(size_t(T * I));
  run_linear(xn, T, H, w.w_gate, L.w_gate, L.p_gate, I, kNoBias, gate.data());
  run_linear(xn, T, H, w.w_up, L.w_up, L.p_up, I, kNoBias, up.data());
  ops::silu_mul(gate.data(), up.data(), gate.data(), T * I);
  if (hook) hook(layer, LinearInput::kDown, gate.data(), T, I);
  run_linear(gate.data(), T, I, w.w_down, L.w_down, L.p_down, H, kNoBias, out);
}

void LlamaModel::decoder_layer(int layer, float* x, int64_t T, int64_t pos0, float* k_cache, float* v_cache,
                               const LinearInputHook& hook, std::optional<LinearInput> stop_after) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[size_t(layer)];
  const int64_t H = c.hidden_size;
  const float eps = float(c.rms_norm_eps);
  std::vector<float> xn(size_t(T * H)), tmp(size_t(T * H));

  ops::rms_norm(x, T, H, L.attn_norm.f32(), eps, xn.data());
  if (hook) hook(layer, LinearInput::kQKV, xn.data(), T, H);
  if (stop_after == LinearInput::kQKV) return;
  bool stop = false;
  const LinearInputHook inner = [&](int li, LinearInput s, const float* xi, int64_t Ti, int64_t in) {
    if (hook) hook(li, s, xi, Ti, in);
    if (s == stop_after) stop = true;
  };
  attention_forward(layer, xn.data(), T, pos0, k_cache, v_cache, {}, tmp.data(), hook || stop_after ? inner : hook);
  if (stop) return;  // o_proj's input was the last thing needed
  for (int64_t i = 0; i < T * H; ++i) x[i] += tmp[size_t(i)];

  ops::rms_norm(x, T, H, L.mlp_norm.f32(), eps, xn.data());
  if (hook) hook(layer, LinearInput::kGateUp, xn.data(), T, H);
  if (stop_after == LinearInput::kGateUp) return;
  mlp_forward(layer, xn.data(), T, {}, tmp.data(), hook);
  for (int64_t i = 0; i < T * H; ++i) x[i] += tmp[size_t(i)];
}

Expected<Tensor> LlamaModel::forward_hidden(const int32_t* tokens, int64_t T, KVCache& cache,
                                            const LinearInputHook& hook) const {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size;
  if (T <= 0) return error("forward: empty token sequence");
  if (cache.length + T > cache.capacity)
    return error("forward: {} new tokens at position {} exceed the KV cache capacity {}", T, cache.length,
                 cache.capacity);
  Tensor x(DType::kF32, {T, H});
  const float* E = weights_.embed.f32();
  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = tokens[t];
    if (id < 0 || id >= c.vocab_size)
      return error("forward: token id {} at position {} is outside the vocabulary [0, {})", id, t, c.vocab_size);
    std::copy(E + int64_t(id) * H, E + (int64_t(id) + 1) * H, x.f32() + t * H);
  }
  for (int l = 0; l < int(c.num_hidden_layers); ++l)
    decoder_layer(l, x.f32(), T, cache.length, cache.k[size_t(l)].f32(), cache.v[size_t(l)].f32(), hook);
  cache.length += T;
  Tensor out(DType::kF32, {T, H});
  ops::rms_norm(x.f32(), T, H, weights_.final_norm.f32(), float(c.rms_norm_eps), out.f32());
  return out;
}

void LlamaModel::logits(const float* hidden, int64_t n, float* out) const {
  const Tensor& W = weights_.output_matrix();
  ops::linear(hidden, n, config_.hidden_size, config_.hidden_size, W.f32(), config_.vocab_size, nullptr, out,
              config_.vocab_size);
}

}  // namespace qforge
