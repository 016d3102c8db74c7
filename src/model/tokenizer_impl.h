// The tokenizer as data: the stages of a Hugging Face `tokenizers` pipeline (added tokens ->
// normalizer -> pre-tokenizer -> BPE model -> post-processor; decoder for the way back), each a
// plain struct built from tokenizer.json (or from GGUF metadata turned into the same JSON).
// Internal to src/model/tokenizer*.cpp.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/tokenizer.h"
#include "model/tokenizer_text.h"

namespace qforge::tokenizer_detail {

// Hash map keyed by std::string that can be probed with a string_view (no temporary strings).
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// How a pre-tokenizer treats the matched delimiters (HF SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct NormalizerStep {
  enum class Kind { kPrepend, kReplace };
  Kind kind = Kind::kPrepend;
  std::string text;                      // Prepend: the prefix; Replace: the replacement
  std::shared_ptr<const Regex> pattern;  // Replace: what is replaced
};

enum class PrependScheme { kAlways, kFirst, kNever };

struct PreTokenizerStep {
  enum class Kind { kByteLevel, kSplit, kDigits, kMetaspace };
  Kind kind = Kind::kByteLevel;
  bool add_prefix_space = false;         // ByteLevel
  bool use_regex = true;                 // ByteLevel: split with GPT-2's pattern first
  std::shared_ptr<const Regex> pattern;  // Split, Digits
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;      // Split: the pieces between matches are the delimiters
  std::string replacement;  // Metaspace ("▁")
  PrependScheme prepend = PrependScheme::kAlways;
  bool split = true;  // Metaspace: split before every replacement
};

struct DecoderStep {
  enum class Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace };
  Kind kind = Kind::kFuse;
  std::shared_ptr<const Regex> pattern;            // Replace
  std::string text;                                // Replace: content; Strip/Metaspace: the character
  size_t start = 0, stop = 0;                      // Strip: characters removed at each end
  PrependScheme prepend = PrependScheme::kAlways;  // Metaspace
};

// One item of a TemplateProcessing "single" template: the sequence itself or special token ids.
struct TemplateItem {
  bool is_sequence = false;
  std::vector<int32_t> ids;
};

struct AddedToken {
  int32_t id = -1;
  std::string content;
  std::string match;  // what is looked for: content, or content normalized when `normalized`
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Leftmost-longest matcher over a small set of added tokens.
struct AddedMatcher {
  std::vector<const AddedToken*> tokens;
  std::array<std::vector<const AddedToken*>, 256> by_first_byte;  // longest first
  void build(const std::vector<AddedToken>& all, bool normalized);
  bool empty() const { return tokens.empty(); }
};

struct MergeInfo {
  uint32_t rank = 0;
  int32_t new_id = -1;
};

// The BPE model (HF models.BPE).
struct BpeModel {
  std::vector<std::string> id_to_token;  // [vocab size] token text; "" for holes
  StringMap<int32_t> token_to_id;
  std::vector<std::pair<std::string, std::string>> merges;  // [n merges] in rank order
  std::unordered_map<uint64_t, MergeInfo> merge_map;        // (left id << 32 | right id) -> merge
  std::string unk_token;                                    // "" when none
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  std::string continuing_subword_prefix, end_of_word_suffix;
  std::array<int32_t, 256> byte_ids{};  // id of "<0xXX>", -1 when absent

  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;
};

// A stretch of text during encoding: raw or normalized text, or an added token already found.
struct Segment {
  std::string text;
  int32_t token = -1;     // >= 0: an added token's id
  bool at_start = false;  // begins at offset 0 of the input (Metaspace prepend_scheme "first")
};

}  // namespace qforge::tokenizer_detail

namespace qforge {

struct Tokenizer::Impl {
  std::string source;  // file the tokenizer came from, for messages

  tokenizer_detail::BpeModel model;
  std::vector<tokenizer_detail::AddedToken> added;  // sorted by id
  tokenizer_detail::AddedMatcher raw_matcher, normalized_matcher;
  std::unordered_map<int32_t, size_t> added_by_id;  // id -> index into `added`

  std::vector<tokenizer_detail::NormalizerStep> normalizers;
  std::vector<tokenizer_detail::PreTokenizerStep> pre_tokenizers;
  bool has_template = false;
  std::vector<tokenizer_detail::TemplateItem> template_single;
  bool has_decoder = false;
  std::vector<tokenizer_detail::DecoderStep> decoders;

  // The JSON of each stage as loaded (or as built from GGUF), written back by to_tokenizer_json.
  nlohmann::ordered_json normalizer_json, pre_tokenizer_json, post_processor_json, decoder_json;

  // For tokenizer_config.json and bos_id()/eos_id().
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = false, add_eos = false;
  std::string chat_template;
  int64_t model_max_length = 0;  // 0: unknown

  // Cache of pre-token -> ids (the BPE model is the costly stage; words repeat).
  mutable std::mutex cache_mu;
  mutable tokenizer_detail::StringMap<std::vector<int32_t>> cache;

  // Called once loading is done: builds the matchers and the id index of the added tokens.
  void finish_added_tokens();

  std::vector<int32_t> encode(std::string_view text, bool add_special) const;
  std::string decode(std::span<const int32_t> ids) const;
  std::string token_text(int32_t id) const;
  int32_t vocab_size() const;
};

// Builds a tokenizer from a parsed tokenizer.json; `source` names it in errors.
Expected<std::unique_ptr<Tokenizer::Impl>> tokenizer_from_json(const nlohmann::json& root,
                                                               const std::string& source);
// Applies the fields of a tokenizer_config.json that do not change encoding (special tokens, chat
// template, model_max_length).
Status apply_tokenizer_config(const nlohmann::json& cfg, const std::string& source, Tokenizer::Impl& impl);
std::string tokenizer_to_json(const Tokenizer::Impl& impl);
std::string tokenizer_config_to_json(const Tokenizer::Impl& impl);

// Builds a tokenizer from GGUF metadata (tokenizer.ggml.*), as transformers' GGUF loader would,
// with the pre-tokenizer the file's tokenizer.ggml.pre names.
Expected<std::unique_ptr<Tokenizer::Impl>> tokenizer_from_gguf(const gguf::GgufFile& file);

}  // namespace qforge
