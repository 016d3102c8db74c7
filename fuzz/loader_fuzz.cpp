// libFuzzer target: the Hugging Face directory loader (load_model on a directory), dense and AWQ / GPTQ packed:
// config.json + its quantization_config (or quantize_config.json), model.safetensors, every tensor checked
// against the config, packed linears unpacked (formats::unpack_linear) and repacked for the int4 runtime
// (formats::to_w4_weight). A model that loads runs one decode step (shapes the loader accepted must be usable).
// Input: config.json "\n#QF-PART#\n" model.safetensors ["\n#QF-PART#\n" quantize_config.json]. The tokenizer.json is
// fixed (a byte-level BPE, written by the harness): the tokenizer has its own target.
// Seeds: tests/data/packed/*/{config.json, model.safetensors, quantize_config.json}.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz_util.h"
#include "model/config.h"
#include "model/loader.h"

using namespace qforge;

namespace {

constexpr std::string_view kTokenizerJson = R"({"version":"1.0","added_tokens":[],"normalizer":null,
"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
"post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,
"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,"vocab":{"a":0,"b":1},"merges":[]}})";

// A decode step costs about the weights' size; the weights come from the input, so this only caps odd cases.
// More than any released Llama-family model (Llama-3.1-405B has 126).
constexpr int64_t kMaxStepWork = int64_t(1) << 26;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::vector<std::string_view> parts = fuzz::split_all(in, "\n#QF-PART#\n");
  if (parts.size() < 2 || parts.size() > 3) return 0;
  const std::string dir = fuzz::fresh_dir("model");
  fuzz::write_scratch("model/config.json", parts[0]);
  fuzz::write_scratch("model/model.safetensors", parts[1]);
  if (parts.size() == 3) fuzz::write_scratch("model/quantize_config.json", parts[2]);
  fuzz::write_scratch("model/tokenizer.json", kTokenizerJson);


  LoadOptions opt;
  opt.dequantize_packed = (size & 1) != 0;
  auto loaded = load_model(dir, opt);
  if (!loaded) return 0;
  const LlamaModel& m = *loaded->model;
  const ModelConfig& c = m.config();
  const int64_t work = c.num_hidden_layers * (c.hidden_size * (c.q_dim() + 2 * c.kv_dim()) + c.q_dim() * c.hidden_size +
                                              3 * c.hidden_size * c.intermediate_size) +
                       c.vocab_size * c.hidden_size;
  if (work > kMaxStepWork) return 0;
  KVCache cache = m.make_cache(2);
  const int32_t tok = 0;
  auto h = m.forward_hidden(&tok, 1, cache);
  if (!h) {
    fprintf(stderr, "forward of a loaded model failed: %s\n", h.message().c_str());
    std::abort();
  }
  std::vector<float> logits(size_t(c.vocab_size));
  m.logits(h->f32(), 1, logits.data());
  return 0;
}
