// Encoding and decoding: the stages of HF `tokenizers` run in its order, on plain data.
// Each stage follows the corresponding HF source (added_vocabulary.rs, pre_tokenizers/*.rs,
// models/bpe/word.rs, decoders/*.rs) so that the ids are equal token for token.
#include <algorithm>
#include <queue>

#include "model/tokenizer_impl.h"

namespace qforge::tokenizer_detail {

namespace {

// Unicode White_Space (PropList.txt), the set Rust's `\s` and char::is_whitespace use; the
// lstrip/rstrip of added tokens strip exactly these.
bool is_white_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

const Regex& gpt2_regex() {
  static const Regex re = [] {
    auto r = Regex::compile(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
    return std::move(r).value();
  }();
  return re;
}

const Regex& word_char_regex() {
  static const Regex re = Regex::compile(R"(\w)").value();
  return re;
}

// Start of the last character before byte offset `end`.
size_t prev_char_start(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (uint8_t(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

bool is_word_char_at(std::string_view s, size_t i) {
  std::vector<std::pair<size_t, size_t>> m;
  word_char_regex().find_all(s.substr(i, utf8_char_len(uint8_t(s[i]))), m);
  return !m.empty();
}

// Marks [start, end) covering the whole text: matched or not (HF Pattern::find_matches).
struct Mark {
  size_t start, end;
  bool is_match;
};

void marks_from_matches(std::string_view text, const std::vector<std::pair<size_t, size_t>>& matches,
                        std::vector<Mark>& marks) {
  marks.clear();
  size_t prev = 0;
  for (auto [s, e] : matches) {
    if (prev != s) marks.push_back({prev, s, false});
    marks.push_back({s, e, true});
    prev = e;
  }
  if (prev != text.size()) marks.push_back({prev, text.size(), false});
}

// Applies a split behavior (HF NormalizedString::split); returns (range, keep) pieces.
void apply_behavior(std::vector<Mark>& marks, SplitBehavior behavior, std::vector<Mark>& out) {
  out.clear();
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Mark& m : marks) out.push_back({m.start, m.end, true});
      break;
    case SplitBehavior::kRemoved:
      for (const Mark& m : marks) out.push_back({m.start, m.end, !m.is_match});
      break;
    case SplitBehavior::kContiguous: {
      bool previous = false;
      for (const Mark& m : marks) {
        if (m.is_match == previous && !out.empty()) {
          out.back().end = m.end;
        } else {
          out.push_back({m.start, m.end, true});
        }
        previous = m.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous = false;
      for (const Mark& m : marks) {
        if (m.is_match && !previous && !out.empty()) {
          out.back().end = m.end;
        } else {
          out.push_back({m.start, m.end, true});
        }
        previous = m.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous = false;
      for (auto it = marks.rbegin(); it != marks.rend(); ++it) {
        if (it->is_match && !previous && !out.empty()) {
          out.back().start = it->start;
        } else {
          out.push_back({it->start, it->end, true});
        }
        previous = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
}

// Splits every segment of `pieces` at the matches of `find`, by `behavior`; empty pieces drop out.
template <typename Find>
void split_pieces(std::vector<Segment>& pieces, SplitBehavior behavior, bool invert, Find&& find) {
  std::vector<Segment> next;
  next.reserve(pieces.size() * 2);
  std::vector<std::pair<size_t, size_t>> matches;
  std::vector<Mark> marks, kept;
  for (Segment& p : pieces) {
    find(std::string_view(p.text), matches);
    marks_from_matches(p.text, matches, marks);
    if (invert)
      for (Mark& m : marks) m.is_match = !m.is_match;
    apply_behavior(marks, behavior, kept);
    for (const Mark& m : kept) {
      if (!m.is_match || m.end <= m.start) continue;  // is_match here means "keep"
      next.push_back({p.text.substr(m.start, m.end - m.start), -1, p.at_start && m.start == 0});
    }
  }
  pieces.swap(next);
}

void replace_all(std::string& text, const Regex& pattern, std::string_view content) {
  std::vector<std::pair<size_t, size_t>> matches;
  pattern.find_all(text, matches);
  if (matches.empty()) return;
  std::string out;
  size_t prev = 0;
  for (auto [s, e] : matches) {
    out.append(text, prev, s - prev);
    out += content;
    prev = e;
  }
  out.append(text, prev, std::string::npos);
  text.swap(out);
}

void replace_literal(std::string& text, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t prev = 0;
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, prev)) {
    out.append(text, prev, at - prev);
    out += to;
    prev = at + from.size();
  }
  if (prev == 0) return;
  out.append(text, prev, std::string::npos);
  text.swap(out);
}

void run_pre_tokenizer(const PreTokenizerStep& step, std::vector<Segment>& pieces) {
  using Kind = PreTokenizerStep::Kind;
  switch (step.kind) {
    case Kind::kByteLevel: {
      if (step.add_prefix_space)
        for (Segment& p : pieces)
          if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, " ");
      if (step.use_regex)
        split_pieces(pieces, SplitBehavior::kIsolated, false,
                     [](std::string_view t, auto& m) { gpt2_regex().find_all(t, m); });
      for (Segment& p : pieces) p.text = byte_level_encode(p.text);
      break;
    }
    case Kind::kSplit:
    case Kind::kDigits:
      split_pieces(pieces, step.behavior, step.invert,
                   [&](std::string_view t, auto& m) { step.pattern->find_all(t, m); });
      break;
    case Kind::kMetaspace: {
      for (Segment& p : pieces) {
        replace_literal(p.text, " ", step.replacement);
        bool starts = p.text.compare(0, step.replacement.size(), step.replacement) == 0;
        if (!starts &&
            (step.prepend == PrependScheme::kAlways || (step.prepend == PrependScheme::kFirst && p.at_start)))
          p.text.insert(0, step.replacement);
      }
      if (step.split) {
        const std::string& r = step.replacement;
        split_pieces(pieces, SplitBehavior::kMergedWithNext, false, [&](std::string_view t, auto& m) {
          m.clear();
          for (size_t at = t.find(r); at != std::string_view::npos; at = t.find(r, at + r.size()))
            m.emplace_back(at, at + r.size());
        });
      }
      break;
    }
  }
}

struct Symbol {
  int32_t id;
  int32_t prev, next;
  uint32_t len;  // bytes covered; 0 marks a symbol merged into its left neighbour
};

struct MergeCandidate {
  uint32_t rank;
  uint32_t pos;
  int32_t new_id;
  // Min-heap on (rank, pos): the lowest rank first, the leftmost among equals.
  bool operator<(const MergeCandidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

void AddedMatcher::build(const std::vector<AddedToken>& all, bool normalized) {
  tokens.clear();
  for (auto& b : by_first_byte) b.clear();
  for (const AddedToken& t : all) {
    // Only well-formed UTF-8 can match, and only at character boundaries: the pieces between
    // matches stay well-formed, which the regex stage relies on.
    if (t.normalized != normalized || t.match.empty() || utf8_sanitize(t.match) != t.match) continue;
    tokens.push_back(&t);
    by_first_byte[uint8_t(t.match[0])].push_back(&t);
  }
  for (auto& b : by_first_byte)
    std::stable_sort(b.begin(), b.end(), [](const AddedToken* a, const AddedToken* c) {
      return a->match.size() > c->match.size();
    });
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    auto it = token_to_id.find(word);
    if (it != token_to_id.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<Symbol> syms;
  syms.reserve(word.size());
  auto add = [&](int32_t id, uint32_t len) {
    int32_t n = int32_t(syms.size());
    if (n > 0) syms.back().next = n;
    syms.push_back({id, n - 1, -1, len});
  };
  int32_t pending_unk_len = 0;  // bytes of a pending (possibly fused) unknown
  std::string key;
  for (size_t i = 0; i < word.size();) {
    size_t n = std::min(utf8_char_len(uint8_t(word[i])), word.size() - i);
    bool first = i == 0, last = i + n >= word.size();
    std::string_view c = word.substr(i, n);
    std::string_view lookup = c;
    if ((!first && !continuing_subword_prefix.empty()) || (last && !end_of_word_suffix.empty())) {
      key.assign(first ? "" : continuing_subword_prefix);
      key += c;
      if (last) key += end_of_word_suffix;
      lookup = key;
    }
    i += n;
    auto it = token_to_id.find(lookup);
    if (it != token_to_id.end()) {
      if (pending_unk_len > 0) add(unk_id, uint32_t(pending_unk_len));
      pending_unk_len = 0;
      add(it->second, uint32_t(n));
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (unsigned char b : lookup) all = all && byte_ids[b] >= 0;
      if (all) {
        // HF adds the byte tokens without flushing a pending unknown first.
        for (unsigned char b : lookup) add(byte_ids[b], 1);
        continue;
      }
    }
    if (unk_id >= 0) {
      if (pending_unk_len > 0 && !fuse_unk) {
        add(unk_id, uint32_t(pending_unk_len));
        pending_unk_len = 0;
      }
      pending_unk_len += int32_t(n);
    }
    // Without an unknown token the character is dropped, as HF does.
  }
  if (pending_unk_len > 0) add(unk_id, uint32_t(pending_unk_len));

  std::priority_queue<MergeCandidate> queue;
  auto find_merge = [&](int32_t a, int32_t b) -> const MergeInfo* {
    auto it = merge_map.find((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
    return it == merge_map.end() ? nullptr : &it->second;
  };
  for (size_t k = 0; k + 1 < syms.size(); ++k)
    if (const MergeInfo* m = find_merge(syms[k].id, syms[k + 1].id))
      queue.push({m->rank, uint32_t(k), m->new_id});
  while (!queue.empty()) {
    MergeCandidate top = queue.top();
    queue.pop();
    Symbol& cur = syms[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    int32_t next_pos = cur.next;
    Symbol right = syms[size_t(next_pos)];
    const MergeInfo* m = find_merge(cur.id, right.id);
    if (!m || m->new_id != top.new_id) continue;  // stale entry
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    syms[size_t(next_pos)].len = 0;
    if (right.next > -1 && size_t(right.next) < syms.size()) syms[size_t(right.next)].prev = int32_t(top.pos);
    if (cur.prev >= 0)
      if (const MergeInfo* pm = find_merge(syms[size_t(cur.prev)].id, cur.id))
        queue.push({pm->rank, uint32_t(cur.prev), pm->new_id});
    if (cur.next >= 0 && size_t(cur.next) < syms.size())
      if (const MergeInfo* nm = find_merge(cur.id, syms[size_t(cur.next)].id))
        queue.push({nm->rank, top.pos, nm->new_id});
  }
  for (const Symbol& s : syms)
    if (s.len != 0) out.push_back(s.id);
}

// Splits out the added tokens of `matcher` from a text segment (HF AddedVocabulary::find_matches).
void split_added_tokens(const Segment& seg, const AddedMatcher& matcher, std::vector<Segment>& out) {
  const std::string& s = seg.text;
  if (s.empty()) return;
  if (matcher.empty()) {
    out.push_back(seg);
    return;
  }
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    const AddedToken* hit = nullptr;
    for (const AddedToken* t : matcher.by_first_byte[uint8_t(s[pos])])
      if (s.compare(pos, t->match.size(), t->match) == 0) {
        hit = t;
        break;
      }
    if (!hit) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + hit->match.size();
    pos = stop;                          // the search resumes after the match, whether it is taken or not
    if (start < start_offset) continue;  // inside whitespace an earlier rstrip consumed
    if (hit->single_word) {
      bool start_space = start == 0 || !is_word_char_at(s, prev_char_start(s, start));
      bool stop_space = stop == s.size() || !is_word_char_at(s, stop);
      if (!start_space || !stop_space) continue;
    }
    if (hit->lstrip) {
      size_t b = start;
      while (b > start_offset) {
        size_t p = prev_char_start(s, b);
        if (!is_white_space(utf8_decode(s, p))) break;
        b = p;
      }
      start = b;
    }
    if (hit->rstrip) {
      while (stop < s.size() && is_white_space(utf8_decode(s, stop))) stop += utf8_char_len(uint8_t(s[stop]));
    }
    if (start_offset < start)
      out.push_back({s.substr(start_offset, start - start_offset), -1, seg.at_start && start_offset == 0});
    out.push_back({s.substr(start, stop - start), hit->id, false});
    start_offset = stop;
  }
  if (start_offset < s.size()) out.push_back({s.substr(start_offset), -1, seg.at_start && start_offset == 0});
}

}  // namespace qforge::tokenizer_detail

namespace qforge {

using namespace tokenizer_detail;

void Tokenizer::Impl::finish_added_tokens() {
  std::sort(added.begin(), added.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  added_by_id.clear();
  for (size_t i = 0; i < added.size(); ++i) added_by_id[added[i].id] = i;
  raw_matcher.build(added, false);
  normalized_matcher.build(added, true);
}

std::vector<int32_t> Tokenizer::Impl::encode(std::string_view input, bool add_special) const {
  std::string text;
  bool valid = true;
  for (size_t i = 0; i < input.size();) {
    size_t n = utf8_valid_len(input, i);
    if (n == 0) {
      valid = false;
      break;
    }
    i += n;
  }
  text = valid ? std::string(input) : utf8_sanitize(input);

  // 1. Added tokens that match the raw text; 2. normalize the rest, then match normalized ones.
  std::vector<Segment> raw, segments;
  split_added_tokens(Segment{std::move(text), -1, true}, raw_matcher, raw);
  for (Segment& seg : raw) {
    if (seg.token >= 0) {
      segments.push_back(std::move(seg));
      continue;
    }
    for (const NormalizerStep& n : normalizers) {
      if (n.kind == NormalizerStep::Kind::kPrepend) {
        if (!seg.text.empty()) seg.text.insert(0, n.text);
      } else {
        replace_all(seg.text, *n.pattern, n.text);
      }
    }
    split_added_tokens(seg, normalized_matcher, segments);
  }

  // 3. Pre-tokenize and run the model on each word.
  std::vector<int32_t> ids;
  ids.reserve(input.size() / 3 + 4);
  std::vector<Segment> pieces;
  for (Segment& seg : segments) {
    if (seg.token >= 0) {
      ids.push_back(seg.token);
      continue;
    }
    pieces.clear();
    pieces.push_back(std::move(seg));
    for (const PreTokenizerStep& step : pre_tokenizers) run_pre_tokenizer(step, pieces);
    for (const Segment& p : pieces) {
      if (p.text.empty()) continue;
      constexpr size_t kMaxCachedWord = 256;  // HF's BPE cache bound, same reason: long words are rare
      constexpr size_t kMaxCacheEntries = size_t(1) << 18;
      if (p.text.size() < kMaxCachedWord) {
        std::lock_guard<std::mutex> lock(cache_mu);
        auto it = cache.find(std::string_view(p.text));
        if (it != cache.end()) {
          ids.insert(ids.end(), it->second.begin(), it->second.end());
          continue;
        }
      }
      size_t before = ids.size();
      model.tokenize(p.text, ids);
      if (p.text.size() < kMaxCachedWord) {
        std::lock_guard<std::mutex> lock(cache_mu);
        if (cache.size() < kMaxCacheEntries)
          cache.emplace(p.text, std::vector<int32_t>(ids.begin() + long(before), ids.end()));
      }
    }
  }

  // 4. Post-processor (TemplateProcessing "single").
  if (add_special && has_template) {
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const TemplateItem& item : template_single) {
      if (item.is_sequence)
        out.insert(out.end(), ids.begin(), ids.end());
      else
        out.insert(out.end(), item.ids.begin(), item.ids.end());
    }
    return out;
  }
  return ids;
}

std::string Tokenizer::Impl::token_text(int32_t id) const {
  auto it = added_by_id.find(id);
  if (it != added_by_id.end()) return added[it->second].content;
  if (id >= 0 && size_t(id) < model.id_to_token.size()) return model.id_to_token[size_t(id)];
  return {};
}

int32_t Tokenizer::Impl::vocab_size() const {
  int32_t n = int32_t(model.id_to_token.size());
  for (const AddedToken& t : added) n = std::max(n, t.id + 1);
  return n;
}

std::string Tokenizer::Impl::decode(std::span<const int32_t> ids) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) {
      // HF decodes an added token by its normalized form when it has one.
      tokens.push_back(added[it->second].match.empty() ? added[it->second].content : added[it->second].match);
    } else if (id >= 0 && size_t(id) < model.id_to_token.size() && !model.id_to_token[size_t(id)].empty()) {
      tokens.push_back(model.id_to_token[size_t(id)]);
    }
  }
  if (!has_decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  using Kind = DecoderStep::Kind;
  for (const DecoderStep& d : decoders) {
    switch (d.kind) {
      case Kind::kByteLevel: {
        std::string bytes;
        for (const std::string& t : tokens)
          if (!byte_level_decode(t, bytes)) bytes += t;
        tokens.assign(1, utf8_sanitize(bytes));
        break;
      }
      case Kind::kReplace:
        for (std::string& t : tokens) replace_all(t, *d.pattern, d.text);
        break;
      case Kind::kByteFallback: {
        std::vector<std::string> out;
        std::string pending;
        size_t pending_n = 0;
        auto flush = [&] {
          if (pending_n == 0) return;
          if (utf8_sanitize(pending) == pending) {
            out.push_back(pending);
          } else {
            for (size_t k = 0; k < pending_n; ++k) out.push_back("\xEF\xBF\xBD");
          }
          pending.clear();
          pending_n = 0;
        };
        auto hex = [](char c) -> int {
          if (c >= '0' && c <= '9') return c - '0';
          if (c >= 'a' && c <= 'f') return c - 'a' + 10;
          if (c >= 'A' && c <= 'F') return c - 'A' + 10;
          return -1;
        };
        for (std::string& t : tokens) {
          int hi = t.size() == 6 ? hex(t[3]) : -1, lo = t.size() == 6 ? hex(t[4]) : -1;
          if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && hi >= 0 && lo >= 0) {
            pending += char(hi * 16 + lo);
            ++pending_n;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens.swap(out);
        break;
      }
      case Kind::kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case Kind::kStrip: {
        for (std::string& t : tokens) {
          // Character-wise, as HF: up to `start` leading and `stop` trailing copies of d.text.
          std::vector<size_t> starts;
          for (size_t i = 0; i < t.size(); i += utf8_char_len(uint8_t(t[i]))) starts.push_back(i);
          size_t nchar = starts.size();
          size_t cut_front = 0;
          for (size_t k = 0; k < d.start && k < nchar; ++k) {
            size_t e = k + 1 < nchar ? starts[k + 1] : t.size();
            if (t.compare(starts[k], e - starts[k], d.text) != 0) break;
            cut_front = k + 1;
          }
          size_t cut_back = nchar;
          for (size_t k = 0; k < d.stop && k < nchar; ++k) {
            size_t idx = nchar - k - 1;
            size_t e = idx + 1 < nchar ? starts[idx + 1] : t.size();
            if (t.compare(starts[idx], e - starts[idx], d.text) != 0) break;
            cut_back = idx;
          }
          if (cut_back < cut_front) cut_back = cut_front;
          size_t b = cut_front < nchar ? starts[cut_front] : t.size();
          size_t e = cut_back < nchar ? starts[cut_back] : t.size();
          t = t.substr(b, e - b);
        }
        break;
      }
      case Kind::kMetaspace: {
        for (size_t i = 0; i < tokens.size(); ++i) {
          bool drop = i == 0 && d.prepend != PrependScheme::kNever;
          replace_literal(tokens[i], d.text, drop ? "" : " ");
        }
        break;
      }
    }
  }
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

}  // namespace qforge
