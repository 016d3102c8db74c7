// The Llama-family decoder in f32 (Llama 2/3, Mistral, Qwen2, SmolLM): weights as a struct of tensors
// named as in Hugging Face checkpoints, and a forward pass (prefill and decode with a KV cache) that
// exposes the input activations of every linear layer.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "kernels/cpu/w4a16.h"
#include "model/config.h"

namespace qforge {

// A linear held as packed int4 (W4A16); when set, the forward runs the int4 kernel and the f32 tensor
// of that linear is empty.
using PackedWeight = std::shared_ptr<const kernels::W4Weight>;

struct LayerWeights {
  Tensor attn_norm;  // [H]
  Tensor wq;         // [n_heads*hd, H]
  Tensor wk;         // [n_kv*hd, H]
  Tensor wv;         // [n_kv*hd, H]
  Tensor wo;         // [H, n_heads*hd]
  Tensor bq, bk, bv; // [q_dim], [kv_dim], [kv_dim] (attention_bias models only)
  Tensor mlp_norm;   // [H]
  Tensor w_gate;     // [I, H]
  Tensor w_up;       // [I, H]
  Tensor w_down;     // [H, I]
  // Packed forms (null unless loaded from a quantized checkpoint), same shapes as the tensors above.
  PackedWeight pq, pk, pv, po, p_gate, p_up, p_down;
};

struct ModelWeights {
  Tensor embed;       // [V, H]
  std::vector<LayerWeights> layers;
  Tensor final_norm;  // [H]
  Tensor lm_head;     // [V, H]; empty when tie_word_embeddings

  const Tensor& output_matrix() const { return lm_head.empty() ? embed : lm_head; }
  bool has_packed() const;  // any linear held as packed int4
};

// One entry per tensor of the checkpoint: the Hugging Face name, the expected shape, and the slot.
struct TensorSlot {
  std::string name;  // "model.layers.0.self_attn.q_proj.weight"
  Shape shape;
  Tensor* tensor;
  int layer;  // -1 for embedding, final norm, lm_head
  PackedWeight* packed = nullptr;  // the linears' weights: where a packed form goes instead
};
// Every tensor the config implies, in a fixed order. Drives load, export and validation.
std::vector<TensorSlot> tensor_slots(const ModelConfig& c, ModelWeights& w);
inline std::vector<TensorSlot> tensor_slots(const ModelConfig& c, const ModelWeights& w) {
  return tensor_slots(c, const_cast<ModelWeights&>(w));
}

// Which linear inputs a hook sees. Linears that share an input share a slot (q/k/v; gate/up).
enum class LinearInput { kQKV, kO, kGateUp, kDown };
const char* linear_input_name(LinearInput s);

// Called with x[T, in_features] right before the linears of `slot` in decoder layer `layer`.
using LinearInputHook = std::function<void(int layer, LinearInput slot, const float* x, int64_t T, int64_t in)>;

struct KVCache {
  int64_t capacity = 0;      // positions
  int64_t length = 0;        // positions filled
  std::vector<Tensor> k, v;  // per layer [capacity, kv_dim]
  void reset() { length = 0; }
};

class LlamaModel {
 public:
  LlamaModel(ModelConfig config, ModelWeights weights);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  ModelWeights& mutable_weights() { return weights_; }

  KVCache make_cache(int64_t capacity) const;

  // Runs tokens[T] at positions cache.length.. and appends their K/V to the cache. Returns the
  // final-normed hidden states [T, H]. Errors on capacity overflow or token ids out of range.
  Expected<Tensor> forward_hidden(const int32_t* tokens, int64_t T, KVCache& cache,
                                  const LinearInputHook& hook = nullptr) const;
  // logits[n, V] = hidden[n, H] @ output_matrix^T
  void logits(const float* hidden, int64_t n, float* out) const;

  // Weight overrides for the module forwards below (null: the model's own). AWQ's search runs a module
  // with candidate weights without touching the model.
  struct AttentionWeights {
    const float* wq = nullptr;  // [q_dim, H]
    const float* wk = nullptr;  // [kv_dim, H]
    const float* wv = nullptr;  // [kv_dim, H]
    const float* wo = nullptr;  // [H, q_dim]
  };
  struct MlpWeights {
    const float* w_gate = nullptr;  // [I, H]
    const float* w_up = nullptr;    // [I, H]
    const float* w_down = nullptr;  // [H, I]
  };
  // Self-attention module of `layer` on normed input xn[T, H] at positions pos0..: out[T, H] = o_proj(attn).
  // Writes the new K/V rows into the caches ([pos0+T, kv_dim] at least).
  void attention_forward(int layer, const float* xn, int64_t T, int64_t pos0, float* k_cache, float* v_cache,
                         const AttentionWeights& w, float* out, const LinearInputHook& hook = nullptr) const;
  // MLP module: out[T, H] = down(silu(gate xn) * up xn).
  void mlp_forward(int layer, const float* xn, int64_t T, const MlpWeights& w, float* out,
                   const LinearInputHook& hook = nullptr) const;

  // Runs one decoder layer in place on x[T, H] (positions start at `pos0`) with the given cache
  // buffers; exposed for layer-by-layer pipelines (calibration).
  // With `stop_after`, returns right after the hook has seen that input (x is then left partially
  // updated): capture passes need not run the rest of the layer.
  void decoder_layer(int layer, float* x, int64_t T, int64_t pos0, float* k_cache, float* v_cache,
                     const LinearInputHook& hook, std::optional<LinearInput> stop_after = std::nullopt) const;

  // RoPE tables for positions pos0..pos0+T-1: cos, sin [T, head_dim/2] (what the forward uses; the GPU layer
  // takes them as they are).
  void rope_tables(int64_t pos0, int64_t T, std::vector<float>& cos, std::vector<float>& sin) const;

 private:
  ModelConfig config_;
  ModelWeights weights_;
  std::vector<float> inv_freq_;  // [hd/2]
};

}  // namespace qforge
