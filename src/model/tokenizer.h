// Tokenizers of Llama-family models, equal to Hugging Face `tokenizers` token for token:
//  - byte-level BPE (GPT-2 style byte-to-unicode mapping) with the model's pre-tokenizer regex
//    (SmolLM2/GPT-2: digits split individually; Llama-3 style patterns), and
//  - Llama-2 / SentencePiece-style BPE with byte fallback (<0xXX> tokens), "▁" for spaces.
// Special and added tokens are matched in the text before BPE, as HF does.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace qforge {
namespace gguf {
class GgufFile;
}

class Tokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  static Expected<Tokenizer> from_tokenizer_json(const std::string& path);
  static Expected<Tokenizer> from_gguf(const gguf::GgufFile& file);

  // Encodes text. add_special: prepend BOS (and append EOS) where the tokenizer's post-processor
  // would (as HF's add_special_tokens=True does).
  std::vector<int32_t> encode(std::string_view text, bool add_special = false) const;
  std::string decode(std::span<const int32_t> ids) const;
  std::string token_text(int32_t id) const;  // the vocabulary entry as stored

  int32_t vocab_size() const;
  int32_t bos_id() const;  // -1 when none
  int32_t eos_id() const;  // -1 when none

  // A tokenizer.json that HF `tokenizers`/transformers loads and that encodes like this one.
  std::string to_tokenizer_json() const;
  // tokenizer_config.json for transformers (bos/eos/chat template where known).
  std::string to_tokenizer_config_json() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace qforge
