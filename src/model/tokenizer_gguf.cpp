// GGUF tokenizer metadata (llama.cpp's tokenizer.ggml.* keys) -> the tokenizer.json that describes
// the same tokenizer, then the ordinary tokenizer.json loader. The construction follows
// transformers' GGUF loader (integrations/gguf/gguf_tokenizer_mapping.py) except for the
// pre-tokenizer, which follows tokenizer.ggml.pre as llama.cpp does (see kPreTokenizers).
#include <algorithm>
#include <cstring>

#include "formats/gguf.h"
#include "model/tokenizer_impl.h"

namespace qforge {

using namespace tokenizer_detail;
using json = nlohmann::json;

namespace {

// llama.cpp token types.
constexpr int64_t kTokenControl = 3;
constexpr int64_t kTokenUserDefined = 4;

constexpr const char* kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen35Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kTekkenSplit =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kGpt4oSplit =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// How each tokenizer.ggml.pre value splits text before byte-level BPE: a regex split (then
// ByteLevel without its own regex), or Digits before GPT-2's ByteLevel. The regex families are
// transformers' table; the digit family is what the models' own tokenizer.json files (and
// llama.cpp) use: SmolLM/StarCoder split every digit off. transformers leaves those out and
// falls back to plain ByteLevel, which tokenizes numbers differently from the model's training.
struct PreTokenizerRule {
  const char* pre;
  const char* split;   // regex for Split(Isolated), or nullptr
  bool digits;         // Digits(individual_digits) then ByteLevel(use_regex)
  bool ignore_merges;  // BPE ignore_merges (Llama 3's tokenizer.json sets it)
};
constexpr PreTokenizerRule kPreTokenizers[] = {
    {"smollm", nullptr, true, false},
    {"starcoder", nullptr, true, false},
    {"refact", nullptr, true, false},
    {"llama3", kLlama3Split, false, true},
    {"llama-v3", kLlama3Split, false, true},
    {"llama-bpe", kLlama3Split, false, true},
    {"falcon3", kLlama3Split, false, false},
    {"falcon-h1", kLlama3Split, false, false},
    {"pixtral", kLlama3Split, false, false},
    {"midm-2.0", kLlama3Split, false, false},
    {"lfm2", kLlama3Split, false, false},
    {"jina-v5-nano", kLlama3Split, false, false},
    {"dbrx", kLlama3Split, false, false},
    {"smaug-bpe", kLlama3Split, false, false},
    {"tekken", kTekkenSplit, false, false},
    {"qwen2", kQwen2Split, false, false},
    {"deepseek-r1-qwen", kQwen2Split, false, false},
    {"kormo", kQwen2Split, false, false},
    {"f2llmv2", kQwen2Split, false, false},
    {"megrez", kQwen2Split, false, false},
    {"qwen35", kQwen35Split, false, false},
    {"gpt-4o", kGpt4oSplit, false, false},
    {"llama4", kGpt4oSplit, false, false},
    {"kanana2", kGpt4oSplit, false, false},
    {"talkie", kGpt4oSplit, false, false},
    {"minimax-m2", kGpt4oSplit, false, false},
};

json byte_level(bool add_prefix_space, bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", add_prefix_space},
          {"trim_offsets", true},
          {"use_regex", use_regex}};
}

// transformers' generate_merges: every split of a vocabulary entry into two entries is a merge;
// merges are ordered by the entry's score (descending when `descending`), then by the lengths of
// the two parts, ties kept in vocabulary order (Python's stable sort).
std::vector<std::pair<std::string, std::string>> generate_merges(const std::vector<std::string>& tokens,
                                                                 const std::vector<double>& scores,
                                                                 bool descending) {
  StringMap<int64_t> vocab;  // the last index of a repeated token wins, as in a Python dict
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = int64_t(i);
  // Python dict(zip(tokens, scores)): first position of each token, last score.
  StringMap<size_t> first_pos;
  std::vector<size_t> order;
  StringMap<double> score_of;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (first_pos.emplace(tokens[i], order.size()).second) order.push_back(i);
    score_of[tokens[i]] = scores[i];
  }
  struct Cand {
    std::string_view l, r;
    double score;
    size_t len_l, len_r;
  };
  std::vector<Cand> merges;
  std::vector<Cand> local;
  for (size_t oi : order) {
    std::string_view t = tokens[oi];
    double score = score_of[tokens[oi]];
    local.clear();
    size_t nchar = utf8_count(t);
    size_t k = 0;
    for (size_t i = 0; i < t.size();) {
      size_t n = utf8_valid_len(t, i);
      i += n ? n : 1;
      ++k;
      if (i >= t.size()) break;
      std::string_view l = t.substr(0, i), r = t.substr(i);
      if (vocab.find(l) != vocab.end() && vocab.find(r) != vocab.end())
        local.push_back({l, r, score, k, nchar - k});
    }
    std::stable_sort(local.begin(), local.end(), [&](const Cand& a, const Cand& b) {
      int64_t al = vocab.find(a.l)->second, bl = vocab.find(b.l)->second;
      if (al != bl) return al < bl;
      return vocab.find(a.r)->second < vocab.find(b.r)->second;
    });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [&](const Cand& a, const Cand& b) {
    auto ka = std::tie(a.score, a.len_l, a.len_r), kb = std::tie(b.score, b.len_l, b.len_r);
    return descending ? kb < ka : ka < kb;
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (const Cand& c : merges) out.emplace_back(std::string(c.l), std::string(c.r));
  return out;
}

bool within_byte_alphabet(std::string_view t) {
  const ByteAlphabet& a = byte_alphabet();
  for (size_t i = 0; i < t.size();) {
    size_t n = utf8_valid_len(t, i);
    if (n == 0) return false;
    uint32_t cp = utf8_decode(t, i);
    if (cp >= a.char_to_byte.size() || a.char_to_byte[cp] < 0) return false;
    i += n;
  }
  return true;
}

json template_processing(const std::vector<std::string>& tokens, int64_t bos, int64_t eos, bool add_bos,
                         bool add_eos) {
  json single = json::array(), pair = json::array(), special = json::object();
  auto add_special = [&](int64_t id, json& seq, int type_id) {
    const std::string& t = tokens[size_t(id)];
    seq.push_back({{"SpecialToken", {{"id", t}, {"type_id", type_id}}}});
    special[t] = {{"id", t}, {"ids", {id}}, {"tokens", {t}}};
  };
  if (add_bos && bos >= 0) add_special(bos, single, 0);
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (add_eos && eos >= 0) add_special(eos, single, 0);
  pair = single;
  if (add_bos && bos >= 0) add_special(bos, pair, 1);
  pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
  if (add_eos && eos >= 0) add_special(eos, pair, 1);
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", special}};
}

}  // namespace

Expected<std::unique_ptr<Tokenizer::Impl>> tokenizer_from_gguf(const gguf::GgufFile& f) {
  const std::string& src = f.path();
  QF_ASSIGN_OR_RETURN(std::string kind, f.get_string("tokenizer.ggml.model"));
  QF_ASSIGN_OR_RETURN(std::vector<std::string> tokens, f.get_string_array("tokenizer.ggml.tokens"));
  if (tokens.empty()) return error("{}: tokenizer.ggml.tokens: empty vocabulary", src);
  std::vector<int64_t> types;
  if (f.find("tokenizer.ggml.token_type")) {
    QF_ASSIGN_OR_RETURN(types, f.get_int_array("tokenizer.ggml.token_type"));
    if (types.size() != tokens.size())
      return error("{}: tokenizer.ggml.token_type: {} entries for {} tokens", src, types.size(),
                   tokens.size());
  }
  std::string pre = "default";
  if (f.find("tokenizer.ggml.pre")) {
    QF_ASSIGN_OR_RETURN(pre, f.get_string("tokenizer.ggml.pre"));
  }
  std::string arch;
  if (f.find("general.architecture")) {
    QF_ASSIGN_OR_RETURN(arch, f.get_string("general.architecture"));
  }
  auto opt_id = [&](const char* key) -> Expected<int64_t> {
    if (!f.find(key)) return int64_t(-1);
    QF_ASSIGN_OR_RETURN(uint64_t v, f.get_uint(key));
    if (v >= tokens.size())
      return error("{}: {}: id {} is outside the vocabulary ({} tokens)", src, key, v, tokens.size());
    return int64_t(v);
  };
  auto opt_bool = [&](const char* key, bool dflt) -> Expected<bool> {
    if (!f.find(key)) return dflt;
    return f.get_bool(key);
  };
  QF_ASSIGN_OR_RETURN(int64_t bos, opt_id("tokenizer.ggml.bos_token_id"));
  QF_ASSIGN_OR_RETURN(int64_t eos, opt_id("tokenizer.ggml.eos_token_id"));
  QF_ASSIGN_OR_RETURN(int64_t unk, opt_id("tokenizer.ggml.unknown_token_id"));
  QF_ASSIGN_OR_RETURN(int64_t pad, opt_id("tokenizer.ggml.padding_token_id"));
  // transformers: a sentencepiece vocabulary adds BOS unless the file says otherwise.
  QF_ASSIGN_OR_RETURN(bool add_bos, opt_bool("tokenizer.ggml.add_bos_token", kind == "llama"));
  QF_ASSIGN_OR_RETURN(bool add_eos, opt_bool("tokenizer.ggml.add_eos_token", false));
  QF_ASSIGN_OR_RETURN(bool add_space_prefix, opt_bool("tokenizer.ggml.add_space_prefix", true));

  json root;
  root["version"] = "1.0";
  json model = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false}};
  std::vector<std::string> vocab_tokens = tokens;
  json added = json::array();
  auto add_token = [&](int64_t id, bool special) {
    added.push_back({{"id", id},
                     {"content", vocab_tokens[size_t(id)]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", special}});
  };

  if (kind == "gpt2") {
    // Tokens are stored byte-level spelled; one that is not gets respelled from its UTF-8 bytes.
    for (std::string& t : vocab_tokens)
      if (!within_byte_alphabet(t)) t = byte_level_encode(t);
    json pre_tok = byte_level(false, true);
    for (const PreTokenizerRule& r : kPreTokenizers) {
      if (pre != r.pre) continue;
      if (r.split) {
        json split = {{"type", "Split"},
                      {"pattern", {{"Regex", r.split}}},
                      {"behavior", "Isolated"},
                      {"invert", false}};
        pre_tok = {{"type", "Sequence"}, {"pretokenizers", {split, byte_level(false, false)}}};
      } else if (r.digits) {
        json digits = {{"type", "Digits"}, {"individual_digits", true}};
        pre_tok = {{"type", "Sequence"}, {"pretokenizers", {digits, byte_level(false, true)}}};
      }
      model["ignore_merges"] = r.ignore_merges;
    }
    root["normalizer"] = nullptr;
    root["pre_tokenizer"] = pre_tok;
    root["decoder"] = byte_level(true, true);
  } else if (kind == "llama") {
    if (arch == "gemma" || arch == "gemma2" || arch == "gemma3")
      return error("{}: tokenizer.ggml.model: Gemma's sentencepiece tokenizer is not supported", src);
    model["fuse_unk"] = true;
    model["byte_fallback"] = true;
    json decoders =
        json::array({{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                     {{"type", "ByteFallback"}},
                     {{"type", "Fuse"}}});
    if (arch == "phi3") {
      // Phi-3 puts the prefix space in a normalizer (before every segment), not in Metaspace.
      root["normalizer"] = {
          {"type", "Sequence"},
          {"normalizers",
           {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
            {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}};
      root["pre_tokenizer"] = nullptr;
      add_space_prefix = true;
    } else {
      root["normalizer"] = nullptr;
      root["pre_tokenizer"] = {{"type", "Metaspace"},
                               {"replacement", "\xE2\x96\x81"},
                               {"prepend_scheme", add_space_prefix ? "first" : "never"},
                               {"split", false}};
    }
    if (add_space_prefix)
      decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    root["decoder"] = {{"type", "Sequence"}, {"decoders", decoders}};
  } else {
    return error("{}: tokenizer.ggml.model: '{}' is not supported (gpt2 or llama)", src, kind);
  }

  json vocab = json::object();
  for (size_t i = 0; i < vocab_tokens.size(); ++i) vocab[vocab_tokens[i]] = int64_t(i);
  json merges = json::array();
  if (f.find("tokenizer.ggml.merges")) {
    QF_ASSIGN_OR_RETURN(std::vector<std::string> m, f.get_string_array("tokenizer.ggml.merges"));
    for (std::string& s : m) merges.push_back(std::move(s));
  } else if (kind == "llama") {
    if (!f.find("tokenizer.ggml.scores"))
      return error("{}: tokenizer.ggml.scores: missing (and no tokenizer.ggml.merges)", src);
    QF_ASSIGN_OR_RETURN(std::vector<double> scores, f.get_float_array("tokenizer.ggml.scores"));
    if (scores.size() != tokens.size())
      return error("{}: tokenizer.ggml.scores: {} entries for {} tokens", src, scores.size(), tokens.size());
    for (auto& [a, b] : generate_merges(vocab_tokens, scores, true)) merges.push_back({a, b});
  } else {
    std::vector<double> index(tokens.size());
    for (size_t i = 0; i < index.size(); ++i) index[i] = double(i);
    for (auto& [a, b] : generate_merges(vocab_tokens, index, false)) merges.push_back({a, b});
  }
  model["vocab"] = std::move(vocab);
  model["merges"] = std::move(merges);
  root["model"] = std::move(model);

  // Special tokens: the named ones, CONTROL tokens (in a byte-level vocabulary only those spelled
  // in its alphabet: others are llama.cpp mislabels), then USER_DEFINED ones as plain added tokens.
  for (int64_t id : {bos, eos, unk, pad})
    if (id >= 0) add_token(id, true);
  for (size_t i = 0; i < types.size(); ++i)
    if (types[i] == kTokenControl && (kind != "gpt2" || within_byte_alphabet(tokens[i])))
      add_token(int64_t(i), true);
  for (size_t i = 0; i < types.size(); ++i)
    if (types[i] == kTokenUserDefined && tokens[i] == vocab_tokens[i]) add_token(int64_t(i), false);
  root["added_tokens"] = std::move(added);
  root["post_processor"] = template_processing(vocab_tokens, bos, eos, add_bos, add_eos);

  auto built = tokenizer_from_json(root, src);
  if (!built) {
    // Name the GGUF keys rather than the tokenizer.json fields they became.
    std::string msg = built.message();
    for (auto [from, to] : {std::pair{"model.merges", "tokenizer.ggml.merges"},
                            std::pair{"model.vocab", "tokenizer.ggml.tokens"}}) {
      for (size_t at = msg.find(from); at != std::string::npos; at = msg.find(from, at + std::strlen(to)))
        msg.replace(at, std::strlen(from), to);
    }
    return Status::error(msg);
  }
  std::unique_ptr<Tokenizer::Impl> impl = std::move(built).value();
  impl->bos_id = int32_t(bos);
  impl->eos_id = int32_t(eos);
  impl->unk_id = int32_t(unk);
  impl->pad_id = int32_t(pad);
  impl->add_bos = add_bos && bos >= 0;
  impl->add_eos = add_eos && eos >= 0;
  if (f.find("tokenizer.chat_template")) {
    QF_ASSIGN_OR_RETURN(impl->chat_template, f.get_string("tokenizer.chat_template"));
  }
  std::string ctx_key = arch + ".context_length";
  if (!arch.empty() && f.find(ctx_key)) {
    QF_ASSIGN_OR_RETURN(impl->model_max_length, f.get_uint(ctx_key));
  }
  return impl;
}

}  // namespace qforge
