// The decoder layer of the Llama family described as data: its linears, which input each one reads,
// and what feeds that input (a norm whose gamma or a linear whose rows can absorb a per-channel scale).
// Quantization pipelines walk this table instead of branching on the architecture.
#pragma once

#include <array>

#include "model/llama.h"

namespace qforge {

struct LinearSpec {
  const char* name;            // "self_attn.q_proj"
  LinearInput input;           // the input slot (shared by q/k/v and by gate/up)
  Tensor LayerWeights::*weight;  // [out, in]
  Tensor LayerWeights::*bias;    // nullptr when the linear has no bias in this family
  PackedWeight LayerWeights::*packed;  // its packed int4 form, when the model holds one
};

// In true-sequential order (q,k,v -> o -> gate,up -> down).
inline constexpr std::array<LinearSpec, 7> kLlamaLinears = {{
    {"self_attn.q_proj", LinearInput::kQKV, &LayerWeights::wq, &LayerWeights::bq, &LayerWeights::pq},
    {"self_attn.k_proj", LinearInput::kQKV, &LayerWeights::wk, &LayerWeights::bk, &LayerWeights::pk},
    {"self_attn.v_proj", LinearInput::kQKV, &LayerWeights::wv, &LayerWeights::bv, &LayerWeights::pv},
    {"self_attn.o_proj", LinearInput::kO, &LayerWeights::wo, nullptr, &LayerWeights::po},
    {"mlp.gate_proj", LinearInput::kGateUp, &LayerWeights::w_gate, nullptr, &LayerWeights::p_gate},
    {"mlp.up_proj", LinearInput::kGateUp, &LayerWeights::w_up, nullptr, &LayerWeights::p_up},
    {"mlp.down_proj", LinearInput::kDown, &LayerWeights::w_down, nullptr, &LayerWeights::p_down},
}};

// The input slots in the order a layer's forward reaches them.
inline constexpr std::array<LinearInput, 4> kLlamaInputOrder = {LinearInput::kQKV, LinearInput::kO,
                                                                LinearInput::kGateUp, LinearInput::kDown};

// Width of a slot's input: the attention output (q_dim) for o, the MLP's intermediate for down, hidden otherwise.
inline int64_t linear_input_width(const ModelConfig& c, LinearInput slot) {
  switch (slot) {
    case LinearInput::kO: return c.q_dim();
    case LinearInput::kDown: return c.intermediate_size;
    default: return c.hidden_size;
  }
}

}  // namespace qforge
