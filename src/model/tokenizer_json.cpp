// tokenizer.json (HF `tokenizers` serialization, version 1.0) -> Tokenizer::Impl, and back.
// Every error names the source file and the JSON field ("model.merges[12]: ...").
#include <algorithm>

#include "model/tokenizer_impl.h"

namespace qforge {

using namespace tokenizer_detail;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {
// Largest token id accepted (ids size tables): config.json's vocab_size has the same bound.
constexpr int64_t kMaxTokenizerVocab = int64_t(1) << 24;
}  // namespace

namespace {

// Sequences nest; deeper than this is not a real tokenizer and would only exhaust the stack.
constexpr long kMaxNesting = 32;

class Parser {
 public:
  explicit Parser(const std::string& source) : source_(source) {}

  Status fail(const std::string& field, std::string_view what) const {
    return error("{}: {}: {}", source_, field, what);
  }

  // Optional bool / string / integer members: absent or null gives the default.
  Expected<bool> get_bool(const json& obj, const char* key, bool dflt, const std::string& path) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) return fail(path + "." + key, "expected true or false");
    return it->get<bool>();
  }
  Expected<std::string> get_string(const json& obj, const char* key, const std::string& dflt,
                                   const std::string& path) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return dflt;
    if (!it->is_string()) return fail(path + "." + key, "expected a string");
    return it->get<std::string>();
  }
  Expected<int64_t> get_int(const json& obj, const char* key, int64_t dflt, const std::string& path) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return dflt;
    if (!it->is_number_integer()) return fail(path + "." + key, "expected an integer");
    return it->get<int64_t>();
  }
  Expected<std::string> get_type(const json& obj, const std::string& path) const {
    if (!obj.is_object()) return fail(path, "expected an object");
    auto it = obj.find("type");
    if (it == obj.end() || !it->is_string()) return fail(path + ".type", "missing or not a string");
    return it->get<std::string>();
  }

  // {"String": "..."} or {"Regex": "..."} (Split, Replace).
  Expected<std::shared_ptr<const Regex>> get_pattern(const json& obj, const std::string& path) const {
    auto it = obj.find("pattern");
    if (it == obj.end() || !it->is_object()) return fail(path + ".pattern", "missing or not an object");
    Expected<Regex> re = Status::error("");
    if (auto s = it->find("String"); s != it->end() && s->is_string()) {
      re = Regex::literal(s->get<std::string>());
    } else if (auto r = it->find("Regex"); r != it->end() && r->is_string()) {
      re = Regex::compile(r->get<std::string>());
    } else {
      return fail(path + ".pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
    }
    if (!re) return fail(path + ".pattern", re.message());
    return std::make_shared<const Regex>(std::move(re).value());
  }

  Expected<PrependScheme> get_prepend_scheme(const json& obj, const std::string& path) const {
    QF_ASSIGN_OR_RETURN(std::string s, get_string(obj, "prepend_scheme", "always", path));
    PrependScheme p;
    if (s == "always") {
      p = PrependScheme::kAlways;
    } else if (s == "first") {
      p = PrependScheme::kFirst;
    } else if (s == "never") {
      p = PrependScheme::kNever;
    } else {
      return fail(path + ".prepend_scheme", fmt::format("unknown scheme '{}'", s));
    }
    // Legacy field: add_prefix_space false means "never" (HF refuses a contradiction).
    auto aps = obj.find("add_prefix_space");
    if (aps != obj.end() && aps->is_boolean() && !aps->get<bool>()) {
      if (p != PrependScheme::kNever && obj.contains("prepend_scheme"))
        return fail(path, "add_prefix_space does not match declared prepend_scheme");
      p = PrependScheme::kNever;
    }
    return p;
  }

  Expected<std::string> get_replacement(const json& obj, const std::string& path) const {
    QF_ASSIGN_OR_RETURN(std::string r, get_string(obj, "replacement", "", path));
    if (r.empty() || utf8_valid_len(r, 0) != r.size())
      return fail(path + ".replacement", "expected a single character");
    return r;
  }

  Status normalizer(const json& n, const std::string& path, std::vector<NormalizerStep>& out) const {
    if (n.is_null()) return Status::ok();
    if (std::count(path.begin(), path.end(), '[') > kMaxNesting) return fail(path, "nested too deeply");
    QF_ASSIGN_OR_RETURN(std::string type, get_type(n, path));
    if (type == "Sequence") {
      auto it = n.find("normalizers");
      if (it == n.end() || !it->is_array()) return fail(path + ".normalizers", "missing or not an array");
      for (size_t i = 0; i < it->size(); ++i)
        QF_RETURN_IF_ERROR(normalizer((*it)[i], fmt::format("{}.normalizers[{}]", path, i), out));
      return Status::ok();
    }
    NormalizerStep step;
    if (type == "Prepend") {
      step.kind = NormalizerStep::Kind::kPrepend;
      QF_ASSIGN_OR_RETURN(step.text, get_string(n, "prepend", "", path));
    } else if (type == "Replace") {
      step.kind = NormalizerStep::Kind::kReplace;
      QF_ASSIGN_OR_RETURN(step.pattern, get_pattern(n, path));
      QF_ASSIGN_OR_RETURN(step.text, get_string(n, "content", "", path));
    } else {
      return fail(path + ".type", fmt::format("normalizer '{}' is not supported (supported: Sequence, "
                                              "Prepend, Replace)",
                                              type));
    }
    out.push_back(std::move(step));
    return Status::ok();
  }

  Status pre_tokenizer(const json& p, const std::string& path, std::vector<PreTokenizerStep>& out) const {
    if (p.is_null()) return Status::ok();
    if (std::count(path.begin(), path.end(), '[') > kMaxNesting) return fail(path, "nested too deeply");
    QF_ASSIGN_OR_RETURN(std::string type, get_type(p, path));
    using Kind = PreTokenizerStep::Kind;
    PreTokenizerStep step;
    if (type == "Sequence") {
      auto it = p.find("pretokenizers");
      if (it == p.end() || !it->is_array()) return fail(path + ".pretokenizers", "missing or not an array");
      for (size_t i = 0; i < it->size(); ++i)
        QF_RETURN_IF_ERROR(pre_tokenizer((*it)[i], fmt::format("{}.pretokenizers[{}]", path, i), out));
      return Status::ok();
    } else if (type == "ByteLevel") {
      step.kind = Kind::kByteLevel;
      QF_ASSIGN_OR_RETURN(step.add_prefix_space, get_bool(p, "add_prefix_space", true, path));
      QF_ASSIGN_OR_RETURN(step.use_regex, get_bool(p, "use_regex", true, path));
    } else if (type == "Split") {
      step.kind = Kind::kSplit;
      QF_ASSIGN_OR_RETURN(step.pattern, get_pattern(p, path));
      QF_ASSIGN_OR_RETURN(std::string b, get_string(p, "behavior", "", path));
      if (b == "Removed") {
        step.behavior = SplitBehavior::kRemoved;
      } else if (b == "Isolated") {
        step.behavior = SplitBehavior::kIsolated;
      } else if (b == "MergedWithPrevious") {
        step.behavior = SplitBehavior::kMergedWithPrevious;
      } else if (b == "MergedWithNext") {
        step.behavior = SplitBehavior::kMergedWithNext;
      } else if (b == "Contiguous") {
        step.behavior = SplitBehavior::kContiguous;
      } else {
        return fail(path + ".behavior", fmt::format("unknown split behavior '{}'", b));
      }
      QF_ASSIGN_OR_RETURN(step.invert, get_bool(p, "invert", false, path));
    } else if (type == "Digits") {
      step.kind = Kind::kDigits;
      QF_ASSIGN_OR_RETURN(bool individual, get_bool(p, "individual_digits", false, path));
      // HF splits on char::is_numeric (Nd, Nl, No), i.e. \p{N}, one character at a time; runs of
      // digits are then glued back together unless individual_digits.
      step.pattern = std::make_shared<const Regex>(Regex::compile(R"(\p{N})").value());
      step.behavior = individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous;
    } else if (type == "Metaspace") {
      step.kind = Kind::kMetaspace;
      QF_ASSIGN_OR_RETURN(step.replacement, get_replacement(p, path));
      QF_ASSIGN_OR_RETURN(step.prepend, get_prepend_scheme(p, path));
      QF_ASSIGN_OR_RETURN(step.split, get_bool(p, "split", true, path));
    } else {
      return fail(path + ".type", fmt::format("pre-tokenizer '{}' is not supported (supported: Sequence, "
                                              "ByteLevel, Split, Digits, Metaspace)",
                                              type));
    }
    out.push_back(std::move(step));
    return Status::ok();
  }

  Status decoder(const json& d, const std::string& path, std::vector<DecoderStep>& out) const {
    if (d.is_null()) return Status::ok();
    if (std::count(path.begin(), path.end(), '[') > kMaxNesting) return fail(path, "nested too deeply");
    QF_ASSIGN_OR_RETURN(std::string type, get_type(d, path));
    using Kind = DecoderStep::Kind;
    DecoderStep step;
    if (type == "Sequence") {
      auto it = d.find("decoders");
      if (it == d.end() || !it->is_array()) return fail(path + ".decoders", "missing or not an array");
      for (size_t i = 0; i < it->size(); ++i)
        QF_RETURN_IF_ERROR(decoder((*it)[i], fmt::format("{}.decoders[{}]", path, i), out));
      return Status::ok();
    } else if (type == "ByteLevel") {
      step.kind = Kind::kByteLevel;
    } else if (type == "Replace") {
      step.kind = Kind::kReplace;
      QF_ASSIGN_OR_RETURN(step.pattern, get_pattern(d, path));
      QF_ASSIGN_OR_RETURN(step.text, get_string(d, "content", "", path));
    } else if (type == "ByteFallback") {
      step.kind = Kind::kByteFallback;
    } else if (type == "Fuse") {
      step.kind = Kind::kFuse;
    } else if (type == "Strip") {
      step.kind = Kind::kStrip;
      QF_ASSIGN_OR_RETURN(step.text, get_string(d, "content", " ", path));
      if (step.text.empty() || utf8_valid_len(step.text, 0) != step.text.size())
        return fail(path + ".content", "expected a single character");
      QF_ASSIGN_OR_RETURN(int64_t start, get_int(d, "start", 0, path));
      QF_ASSIGN_OR_RETURN(int64_t stop, get_int(d, "stop", 0, path));
      if (start < 0 || stop < 0) return fail(path, "start/stop must not be negative");
      step.start = size_t(start);
      step.stop = size_t(stop);
    } else if (type == "Metaspace") {
      step.kind = Kind::kMetaspace;
      QF_ASSIGN_OR_RETURN(step.text, get_replacement(d, path));
      QF_ASSIGN_OR_RETURN(step.prepend, get_prepend_scheme(d, path));
    } else {
      return fail(path + ".type",
                  fmt::format("decoder '{}' is not supported (supported: Sequence, ByteLevel, "
                              "Replace, ByteFallback, Fuse, Strip, Metaspace)",
                              type));
    }
    out.push_back(std::move(step));
    return Status::ok();
  }

  // The "single" template of the post-processor; `has` is false for none (or one that adds nothing).
  Status post_processor(const json& p, const std::string& path, bool& has,
                        std::vector<TemplateItem>& single) const {
    if (p.is_null()) return Status::ok();
    if (std::count(path.begin(), path.end(), '[') > kMaxNesting) return fail(path, "nested too deeply");
    QF_ASSIGN_OR_RETURN(std::string type, get_type(p, path));
    if (type == "Sequence") {
      auto it = p.find("processors");
      if (it == p.end() || !it->is_array()) return fail(path + ".processors", "missing or not an array");
      for (size_t i = 0; i < it->size(); ++i)
        QF_RETURN_IF_ERROR(post_processor((*it)[i], fmt::format("{}.processors[{}]", path, i), has, single));
      return Status::ok();
    }
    if (type == "ByteLevel") return Status::ok();  // adjusts offsets only
    std::vector<TemplateItem> items;
    if (type == "TemplateProcessing") {
      auto tmpl = p.find("single");
      if (tmpl == p.end() || !tmpl->is_array()) return fail(path + ".single", "missing or not an array");
      auto specials = p.find("special_tokens");
      for (size_t i = 0; i < tmpl->size(); ++i) {
        const json& item = (*tmpl)[i];
        std::string ipath = fmt::format("{}.single[{}]", path, i);
        if (item.is_object() && item.contains("Sequence")) {
          items.push_back({true, {}});
        } else if (item.is_object() && item.contains("SpecialToken") && item["SpecialToken"].is_object()) {
          QF_ASSIGN_OR_RETURN(std::string id,
                              get_string(item["SpecialToken"], "id", "", ipath + ".SpecialToken"));
          if (specials == p.end() || !specials->is_object() || !specials->contains(id))
            return fail(ipath, fmt::format("special token '{}' is not in {}.special_tokens", id, path));
          const json& st = (*specials)[id];
          auto ids = st.find("ids");
          if (ids == st.end() || !ids->is_array())
            return fail(fmt::format("{}.special_tokens.{}.ids", path, id), "missing or not an array");
          TemplateItem t;
          for (const json& v : *ids) {
            if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
              return fail(fmt::format("{}.special_tokens.{}.ids", path, id), "expected token ids");
            t.ids.push_back(int32_t(v.get<int64_t>()));
          }
          items.push_back(std::move(t));
        } else {
          return fail(ipath, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
        }
      }
    } else if (type == "RobertaProcessing" || type == "BertProcessing") {
      TemplateItem cls, sep;
      for (auto [key, item] : {std::pair{"cls", &cls}, std::pair{"sep", &sep}}) {
        auto it = p.find(key);
        if (it == p.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer())
          return fail(path + "." + key, "expected [token, id]");
        item->ids.push_back(int32_t((*it)[1].get<int64_t>()));
      }
      items = {cls, {true, {}}, sep};
    } else {
      return fail(path + ".type", fmt::format("post-processor '{}' is not supported (supported: "
                                              "TemplateProcessing, ByteLevel, Sequence, RobertaProcessing, "
                                              "BertProcessing)",
                                              type));
    }
    has = true;
    single = std::move(items);
    return Status::ok();
  }

  Status model(const json& m, Tokenizer::Impl& impl) const {
    if (!m.is_object()) return fail("model", "missing or not an object");
    std::string type = "BPE";
    if (auto t = m.find("type"); t != m.end()) {
      if (!t->is_string()) return fail("model.type", "expected a string");
      type = t->get<std::string>();
    } else if (!m.contains("merges")) {
      return fail("model.type", "missing (and no merges: not a BPE model)");
    }
    if (type != "BPE")
      return fail("model.type", fmt::format("model type '{}' is not supported (only BPE)", type));
    BpeModel& bpe = impl.model;
    auto vocab = m.find("vocab");
    if (vocab == m.end()) return fail("model.vocab", "missing");
    if (!vocab->is_object()) return fail("model.vocab", "expected an object {token: id}");
    int64_t max_id = -1;
    for (auto it = vocab->begin(); it != vocab->end(); ++it) {
      if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
          it.value().get<int64_t>() > INT32_MAX)
        return fail("model.vocab", fmt::format("token '{}': id is not a non-negative integer", it.key()));
      // The id table is sized by the largest id: bound it as config.json's vocab_size is (2^24).
      if (it.value().get<int64_t>() >= kMaxTokenizerVocab)
        return fail("model.vocab", fmt::format("token '{}': id {} is implausibly large (the limit is {})", it.key(),
                                               it.value().get<int64_t>(), kMaxTokenizerVocab));
      max_id = std::max(max_id, it.value().get<int64_t>());
    }
    bpe.id_to_token.assign(size_t(max_id + 1), std::string());
    bpe.token_to_id.reserve(vocab->size());
    for (auto it = vocab->begin(); it != vocab->end(); ++it) {
      int32_t id = int32_t(it.value().get<int64_t>());
      bpe.token_to_id[it.key()] = id;
      bpe.id_to_token[size_t(id)] = it.key();
    }
    if (auto d = m.find("dropout"); d != m.end() && !d->is_null()) {
      if (!d->is_number()) return fail("model.dropout", "expected a number or null");
      if (d->get<double>() > 0) return fail("model.dropout", "BPE dropout is random; not supported");
    }
    QF_ASSIGN_OR_RETURN(bpe.unk_token, get_string(m, "unk_token", "", "model"));
    QF_ASSIGN_OR_RETURN(bpe.continuing_subword_prefix,
                        get_string(m, "continuing_subword_prefix", "", "model"));
    QF_ASSIGN_OR_RETURN(bpe.end_of_word_suffix, get_string(m, "end_of_word_suffix", "", "model"));
    QF_ASSIGN_OR_RETURN(bpe.fuse_unk, get_bool(m, "fuse_unk", false, "model"));
    QF_ASSIGN_OR_RETURN(bpe.byte_fallback, get_bool(m, "byte_fallback", false, "model"));
    QF_ASSIGN_OR_RETURN(bpe.ignore_merges, get_bool(m, "ignore_merges", false, "model"));
    bpe.unk_id = -1;
    if (!bpe.unk_token.empty()) {
      auto it = bpe.token_to_id.find(bpe.unk_token);
      if (it == bpe.token_to_id.end())
        return fail("model.unk_token", fmt::format("'{}' is not in model.vocab", bpe.unk_token));
      bpe.unk_id = it->second;
    }
    for (int b = 0; b < 256; ++b) {
      auto it = bpe.token_to_id.find(fmt::format("<0x{:02X}>", b));
      bpe.byte_ids[size_t(b)] = it == bpe.token_to_id.end() ? -1 : it->second;
    }

    auto merges = m.find("merges");
    if (merges == m.end() || merges->is_null()) return Status::ok();
    if (!merges->is_array()) return fail("model.merges", "expected an array");
    bpe.merges.reserve(merges->size());
    bpe.merge_map.reserve(merges->size() * 2);
    size_t prefix_len = bpe.continuing_subword_prefix.size();
    for (size_t rank = 0; rank < merges->size(); ++rank) {
      const json& e = (*merges)[rank];
      std::string a, b;
      if (e.is_string()) {
        const std::string& s = e.get_ref<const std::string&>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          return fail(fmt::format("model.merges[{}]", rank),
                      fmt::format("'{}' is not two tokens \"a b\"", s));
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        return fail(fmt::format("model.merges[{}]", rank), "expected \"a b\" or [\"a\", \"b\"]");
      }
      auto ia = bpe.token_to_id.find(a);
      auto ib = bpe.token_to_id.find(b);
      for (auto [it, tok] : {std::pair{ia, &a}, std::pair{ib, &b}})
        if (it == bpe.token_to_id.end())
          return fail(fmt::format("model.merges[{}]", rank),
                      fmt::format("token '{}' is not in model.vocab", *tok));
      std::string merged = a + (b.size() >= prefix_len ? b.substr(prefix_len) : std::string());
      auto im = bpe.token_to_id.find(merged);
      if (im == bpe.token_to_id.end())
        return fail(fmt::format("model.merges[{}]", rank),
                    fmt::format("merged token '{}' is not in model.vocab", merged));
      uint64_t key = (uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second);
      bpe.merge_map[key] = MergeInfo{uint32_t(rank), im->second};  // a repeated pair: the last wins, as in HF
      bpe.merges.emplace_back(std::move(a), std::move(b));
    }
    return Status::ok();
  }

  // added_tokens: ids as HF assigns them on load (the model's id for a known content, else the next
  // free id), normalized forms computed with the normalizer.
  Status added_tokens(const json& root, Tokenizer::Impl& impl) const {
    auto at = root.find("added_tokens");
    if (at == root.end() || at->is_null()) return Status::ok();
    if (!at->is_array()) return fail("added_tokens", "expected an array");
    int32_t next_id = int32_t(impl.model.token_to_id.size());
    StringMap<int32_t> by_content;
    for (size_t i = 0; i < at->size(); ++i) {
      const json& t = (*at)[i];
      std::string path = fmt::format("added_tokens[{}]", i);
      if (!t.is_object()) return fail(path, "expected an object");
      AddedToken tok;
      QF_ASSIGN_OR_RETURN(tok.content, get_string(t, "content", "", path));
      if (tok.content.empty()) continue;  // HF ignores empty added tokens
      QF_ASSIGN_OR_RETURN(tok.special, get_bool(t, "special", false, path));
      QF_ASSIGN_OR_RETURN(tok.single_word, get_bool(t, "single_word", false, path));
      QF_ASSIGN_OR_RETURN(tok.lstrip, get_bool(t, "lstrip", false, path));
      QF_ASSIGN_OR_RETURN(tok.rstrip, get_bool(t, "rstrip", false, path));
      QF_ASSIGN_OR_RETURN(tok.normalized, get_bool(t, "normalized", !tok.special, path));
      QF_ASSIGN_OR_RETURN(int64_t declared, get_int(t, "id", -1, path));
      (void)declared;  // HF warns and uses its own id when they differ
      if (auto it = by_content.find(tok.content); it != by_content.end()) {
        tok.id = it->second;
      } else if (auto mit = impl.model.token_to_id.find(tok.content); mit != impl.model.token_to_id.end()) {
        tok.id = mit->second;
      } else {
        tok.id = next_id++;
      }
      by_content[tok.content] = tok.id;
      tok.match = tok.content;
      if (tok.normalized) {
        std::string s = tok.content;
        for (const NormalizerStep& n : impl.normalizers) {
          if (n.kind == NormalizerStep::Kind::kPrepend) {
            s.insert(0, n.text);
          } else {
            std::vector<std::pair<size_t, size_t>> m;
            n.pattern->find_all(s, m);
            std::string r;
            size_t prev = 0;
            for (auto [a, b] : m) {
              r.append(s, prev, a - prev);
              r += n.text;
              prev = b;
            }
            r.append(s, prev, std::string::npos);
            s.swap(r);
          }
        }
        tok.match = s;
      }
      auto same = std::find_if(impl.added.begin(), impl.added.end(),
                               [&](const AddedToken& x) { return x.id == tok.id; });
      if (same != impl.added.end()) {
        *same = std::move(tok);  // the later entry replaces the earlier, as in HF
      } else {
        impl.added.push_back(std::move(tok));
      }
    }
    return Status::ok();
  }

 private:
  const std::string& source_;
};

// Reads a special-token entry of tokenizer_config.json: "text" or {"content": "text", ...}.
std::string config_token(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return {};
}

int32_t lookup_token(const Tokenizer::Impl& impl, const std::string& text) {
  if (text.empty()) return -1;
  for (const AddedToken& t : impl.added)
    if (t.content == text) return t.id;
  auto it = impl.model.token_to_id.find(text);
  return it == impl.model.token_to_id.end() ? -1 : it->second;
}

}  // namespace

Expected<std::unique_ptr<Tokenizer::Impl>> tokenizer_from_json(const json& root, const std::string& source) {
  Parser p(source);
  if (!root.is_object()) return p.fail("(document)", "expected a JSON object");
  if (auto v = root.find("version"); v != root.end() && !(v->is_string() && v->get<std::string>() == "1.0"))
    return p.fail("version", "unknown tokenizer.json version (expected \"1.0\")");
  auto impl = std::make_unique<Tokenizer::Impl>();
  impl->source = source;
  if (!root.contains("model")) return p.fail("model", "missing");
  QF_RETURN_IF_ERROR(p.model(root["model"], *impl));
  static const json kNull;
  auto member = [&](const char* key) -> const json& {
    auto it = root.find(key);
    return it == root.end() ? kNull : *it;
  };
  QF_RETURN_IF_ERROR(p.normalizer(member("normalizer"), "normalizer", impl->normalizers));
  QF_RETURN_IF_ERROR(p.pre_tokenizer(member("pre_tokenizer"), "pre_tokenizer", impl->pre_tokenizers));
  QF_RETURN_IF_ERROR(p.decoder(member("decoder"), "decoder", impl->decoders));
  impl->has_decoder = !member("decoder").is_null();
  QF_RETURN_IF_ERROR(p.post_processor(member("post_processor"), "post_processor", impl->has_template,
                                      impl->template_single));
  QF_RETURN_IF_ERROR(p.added_tokens(root, *impl));
  impl->normalizer_json = ojson::parse(member("normalizer").dump());
  impl->pre_tokenizer_json = ojson::parse(member("pre_tokenizer").dump());
  impl->post_processor_json = ojson::parse(member("post_processor").dump());
  impl->decoder_json = ojson::parse(member("decoder").dump());
  impl->finish_added_tokens();

  // BOS/EOS as the post-processor places them (the special ids before and after the sequence).
  bool seen_sequence = false;
  for (const TemplateItem& item : impl->template_single) {
    if (item.is_sequence) {
      seen_sequence = true;
    } else if (!item.ids.empty()) {
      if (!seen_sequence) {
        impl->bos_id = item.ids.front();
        impl->add_bos = true;
      } else {
        impl->eos_id = item.ids.back();
        impl->add_eos = true;
      }
    }
  }
  impl->unk_id = impl->model.unk_id;
  return impl;
}

// Applies the fields of a tokenizer_config.json that do not change encoding.
Status apply_tokenizer_config(const json& cfg, const std::string& source, Tokenizer::Impl& impl) {
  if (!cfg.is_object()) return error("{}: expected a JSON object", source);
  if (int32_t id = lookup_token(impl, config_token(cfg, "bos_token")); id >= 0) impl.bos_id = id;
  if (int32_t id = lookup_token(impl, config_token(cfg, "eos_token")); id >= 0) impl.eos_id = id;
  if (int32_t id = lookup_token(impl, config_token(cfg, "unk_token")); id >= 0) impl.unk_id = id;
  if (int32_t id = lookup_token(impl, config_token(cfg, "pad_token")); id >= 0) impl.pad_id = id;
  if (auto it = cfg.find("chat_template"); it != cfg.end()) {
    if (it->is_string()) {
      impl.chat_template = it->get<std::string>();
    } else if (it->is_array()) {  // [{"name": "default", "template": "..."}, ...]
      for (const json& t : *it)
        if (t.is_object() && t.value("name", "") == "default" && t.contains("template") &&
            t["template"].is_string())
          impl.chat_template = t["template"].get<std::string>();
    }
  }
  if (auto it = cfg.find("model_max_length"); it != cfg.end() && it->is_number_integer() &&
                                              it->get<int64_t>() > 0 &&
                                              it->get<int64_t>() < (int64_t(1) << 40))
    impl.model_max_length = it->get<int64_t>();
  return Status::ok();
}

std::string tokenizer_to_json(const Tokenizer::Impl& impl) {
  ojson root;
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  ojson added = ojson::array();
  for (const AddedToken& t : impl.added) {
    ojson a;
    a["id"] = t.id;
    a["content"] = t.content;
    a["single_word"] = t.single_word;
    a["lstrip"] = t.lstrip;
    a["rstrip"] = t.rstrip;
    a["normalized"] = t.normalized;
    a["special"] = t.special;
    added.push_back(std::move(a));
  }
  root["added_tokens"] = std::move(added);
  root["normalizer"] = impl.normalizer_json;
  root["pre_tokenizer"] = impl.pre_tokenizer_json;
  root["post_processor"] = impl.post_processor_json;
  root["decoder"] = impl.decoder_json;
  const BpeModel& m = impl.model;
  ojson model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = m.unk_token.empty() ? ojson(nullptr) : ojson(m.unk_token);
  model["continuing_subword_prefix"] =
      m.continuing_subword_prefix.empty() ? ojson(nullptr) : ojson(m.continuing_subword_prefix);
  model["end_of_word_suffix"] = m.end_of_word_suffix.empty() ? ojson(nullptr) : ojson(m.end_of_word_suffix);
  model["fuse_unk"] = m.fuse_unk;
  model["byte_fallback"] = m.byte_fallback;
  model["ignore_merges"] = m.ignore_merges;
  std::vector<std::pair<int32_t, const std::string*>> vocab;
  vocab.reserve(m.token_to_id.size());
  for (const auto& [tok, id] : m.token_to_id) vocab.emplace_back(id, &tok);
  std::sort(vocab.begin(), vocab.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : *a.second < *b.second;
  });
  ojson v = ojson::object();
  // Append to the ordered object's vector directly: keys are unique, and operator[] would search
  // the whole object for each of the (tens of thousands of) tokens.
  auto& entries =
      static_cast<std::vector<std::pair<const std::string, ojson>>&>(v.get_ref<ojson::object_t&>());
  entries.reserve(vocab.size());
  for (const auto& [id, tok] : vocab) entries.emplace_back(*tok, ojson(id));
  model["vocab"] = std::move(v);
  ojson merges = ojson::array();
  for (const auto& [a, b] : m.merges) merges.push_back(ojson::array({a, b}));
  model["merges"] = std::move(merges);
  root["model"] = std::move(model);
  return root.dump(2, ' ', false, ojson::error_handler_t::replace) + "\n";
}

std::string tokenizer_config_to_json(const Tokenizer::Impl& impl) {
  ojson cfg;
  cfg["add_bos_token"] = impl.add_bos;
  cfg["add_eos_token"] = impl.add_eos;
  ojson dec = ojson::object();
  for (const AddedToken& t : impl.added) {
    ojson a;
    a["content"] = t.content;
    a["lstrip"] = t.lstrip;
    a["normalized"] = t.normalized;
    a["rstrip"] = t.rstrip;
    a["single_word"] = t.single_word;
    a["special"] = t.special;
    dec[std::to_string(t.id)] = std::move(a);
  }
  cfg["added_tokens_decoder"] = std::move(dec);
  auto token = [&](int32_t id) { return id >= 0 ? ojson(impl.token_text(id)) : ojson(nullptr); };
  cfg["bos_token"] = token(impl.bos_id);
  cfg["eos_token"] = token(impl.eos_id);
  cfg["unk_token"] = token(impl.unk_id);
  cfg["pad_token"] = token(impl.pad_id);
  if (!impl.chat_template.empty()) cfg["chat_template"] = impl.chat_template;
  cfg["clean_up_tokenization_spaces"] = false;
  // transformers' "no limit" value when the length is unknown.
  cfg["model_max_length"] = impl.model_max_length > 0 ? impl.model_max_length : int64_t(1000000000000000000);
  cfg["tokenizer_class"] = "PreTrainedTokenizerFast";
  return cfg.dump(2, ' ', false, ojson::error_handler_t::replace) + "\n";
}

}  // namespace qforge
