// libFuzzer target: config.json (parse_model_config + validate_model_config) and its quantization_config
// (formats::parse_quantization_config), with round-trip oracles: a config that parses is written back
// (model_config_to_json / quantization_config_json) and must parse again to the same values.
// Input: JSON text. It is parsed as a config.json; its "quantization_config" member (as the loader passes it) and
// the whole text (as a quantize_config.json) go to parse_quantization_config.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/quant_pack.h"
#include "fuzz_util.h"
#include "model/config.h"

using namespace qforge;

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail) {
  fprintf(stderr, "oracle failed: %s: %s\n", what, detail.c_str());
  std::abort();
}

void check_model_config(const std::string& text) {
  auto c = parse_model_config(text, "config.json");
  if (!c) return;
  const std::string back = model_config_to_json(*c);
  auto c2 = parse_model_config(back, "config.json (written back)");
  if (!c2) fail("model_config_to_json output does not parse", c2.message() + "\n" + back);
  ModelConfig a = *c;
  const ModelConfig& b = *c2;
  if (a.architecture != b.architecture || a.vocab_size != b.vocab_size || a.hidden_size != b.hidden_size ||
      a.intermediate_size != b.intermediate_size || a.num_hidden_layers != b.num_hidden_layers ||
      a.num_attention_heads != b.num_attention_heads || a.num_key_value_heads != b.num_key_value_heads ||
      a.head_dim != b.head_dim || a.tie_word_embeddings != b.tie_word_embeddings ||
      a.attention_bias != b.attention_bias || a.rope_scaling.type != b.rope_scaling.type ||
      a.bos_token_id != b.bos_token_id || a.eos_token_ids != b.eos_token_ids)
    fail("config differs after a round trip", back);
}

void check_quant_config(const std::string& text) {
  auto q = formats::parse_quantization_config(text, "quantization_config");
  if (!q) return;
  const std::string back = formats::quantization_config_json(*q, true, 0.01);
  auto q2 = formats::parse_quantization_config(back, "quantization_config (written back)");
  if (!q2) fail("quantization_config_json output does not parse", q2.message() + "\n" + back);
  if (q->format != q2->format || q->bits != q2->bits || q->group_size != q2->group_size ||
      (q->format != formats::PackedFormat::kAwqGemm && (q->sym != q2->sym || q->desc_act != q2->desc_act)))
    fail("quantization_config differs after a round trip", back);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  check_model_config(text);
  check_quant_config(text);
  // As the loader does: the member of config.json, dumped back to text.
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("quantization_config")) {
    std::string sub;
    try {
      sub = j["quantization_config"].dump();
    } catch (const nlohmann::json::exception&) {
      std::abort();  // parse() validated UTF-8, so dump() must not throw (the loader does not catch it)
    }
    check_quant_config(sub);
  }
  return 0;
}
