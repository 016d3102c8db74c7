#include "model/tokenizer_text.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace qforge::tokenizer_detail {

namespace {

// Allowed range of the second byte of a sequence, by lead byte (Unicode Table 3-7).
// Returns the sequence length (2..4) or 0 for a byte that cannot lead.
size_t utf8_lead_info(uint8_t b, uint8_t& lo, uint8_t& hi) {
  lo = 0x80;
  hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b == 0xE0) {
    lo = 0xA0;
    return 3;
  }
  if (b >= 0xE1 && b <= 0xEC) return 3;
  if (b == 0xED) {
    hi = 0x9F;
    return 3;
  }
  if (b >= 0xEE && b <= 0xEF) return 3;
  if (b == 0xF0) {
    lo = 0x90;
    return 4;
  }
  if (b >= 0xF1 && b <= 0xF3) return 4;
  if (b == 0xF4) {
    hi = 0x8F;
    return 4;
  }
  return 0;
}

// Bytes of the longest prefix of a well-formed sequence at s[i]; `full` tells whether it is whole.
size_t utf8_prefix_len(std::string_view s, size_t i, bool& full) {
  uint8_t b = uint8_t(s[i]);
  full = false;
  if (b < 0x80) {
    full = true;
    return 1;
  }
  uint8_t lo, hi;
  size_t need = utf8_lead_info(b, lo, hi);
  if (need == 0) return 0;
  size_t k = 1;
  for (; k < need && i + k < s.size(); ++k) {
    uint8_t c = uint8_t(s[i + k]);
    bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) break;
  }
  full = k == need;
  return k;
}

}  // namespace

size_t utf8_valid_len(std::string_view s, size_t i) {
  bool full;
  size_t k = utf8_prefix_len(s, i, full);
  return full ? k : 0;
}

size_t utf8_count(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

uint32_t utf8_decode(std::string_view s, size_t i) {
  uint8_t b = uint8_t(s[i]);
  size_t n = utf8_char_len(b);
  uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (size_t k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (uint8_t(s[i + k]) & 0x3F);
  return cp;
}

std::string utf8_sanitize(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    bool full;
    size_t k = utf8_prefix_len(s, i, full);
    if (full) {
      out.append(s.data() + i, k);
      i += k;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for the maximal subpart (at least one byte)
      i += k == 0 ? 1 : k;
    }
  }
  return out;
}

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet table = [] {
    ByteAlphabet t;
    t.char_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + extra++);
      utf8_append(t.byte_to_text[b], cp);
      t.char_to_byte[cp] = int16_t(b);
    }
    return t;
  }();
  return table;
}

std::string byte_level_encode(std::string_view raw) {
  const ByteAlphabet& a = byte_alphabet();
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char c : raw) out += a.byte_to_text[c];
  return out;
}

bool byte_level_decode(std::string_view text, std::string& out) {
  const ByteAlphabet& a = byte_alphabet();
  size_t start = out.size();
  for (size_t i = 0; i < text.size();) {
    size_t n = utf8_valid_len(text, i);
    if (n == 0) break;
    uint32_t cp = utf8_decode(text, i);
    if (cp >= a.char_to_byte.size() || a.char_to_byte[cp] < 0) {
      out.resize(start);
      return false;
    }
    out += char(a.char_to_byte[cp]);
    i += n;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Regex

struct Regex::Code {
  pcre2_code* code = nullptr;
  ~Code() {
    if (code) pcre2_code_free(code);
  }
};

Regex::Regex() = default;
Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

namespace {

// Unicode White_Space (PropList.txt) as class items. HF's regexes run on Oniguruma, whose \s is
// exactly this set; PCRE2 10.42's \s also matches U+180E (a format character since Unicode 6.3),
// which splits text differently ("  \u180e" would be one whitespace run).
constexpr std::string_view kWhiteSpaceItems =
    R"(\t-\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// Rewrites \s (and \S outside classes) to kWhiteSpaceItems; everything else is copied as is.
std::string oniguruma_spaces(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  size_t i = 0;
  while (i < p.size()) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[i + 1];
      if (n == 'Q') {  // \Q...\E quotes literally
        size_t e = p.find("\\E", i + 2);
        size_t end = e == std::string_view::npos ? p.size() : e + 2;
        out.append(p.substr(i, end - i));
        i = end;
        continue;
      }
      if (n == 's') {
        if (in_class) {
          out += kWhiteSpaceItems;
        } else {
          out += '[';
          out += kWhiteSpaceItems;
          out += ']';
        }
        i += 2;
        continue;
      }
      if (n == 'S' && !in_class) {
        out += "[^";
        out += kWhiteSpaceItems;
        out += ']';
        i += 2;
        continue;
      }
      size_t n_len = utf8_char_len(uint8_t(n));
      out.append(p.substr(i, 1 + n_len));
      i += 1 + n_len;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < p.size() && p[i] == '^') out += p[i++];
      if (i < p.size() && p[i] == ']') out += p[i++];  // a leading ']' is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
      size_t e = p.find(":]", i + 2);
      if (e != std::string_view::npos) {
        out.append(p.substr(i, e + 2 - i));
        i = e + 2;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
    ++i;
  }
  return out;
}

}  // namespace

Expected<Regex> Regex::compile(std::string_view pattern) {
  int err = 0;
  PCRE2_SIZE err_off = 0;
  std::string translated = oniguruma_spaces(pattern);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    if (translated == pattern)
      return error("regex /{}/: {} at offset {}", pattern, reinterpret_cast<const char*>(msg), err_off);
    return error("regex /{}/ (as /{}/): {} at offset {}", pattern, translated,
                 reinterpret_cast<const char*>(msg), err_off);
  }
  // JIT is an optimisation only: without it pcre2_match interprets the same pattern.
  (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  Regex r;
  r.code_ = std::make_unique<Code>();
  r.code_->code = code;
  r.pattern_ = std::string(pattern);
  return r;
}

Expected<Regex> Regex::literal(std::string_view literal) {
  std::string p;
  for (char c : literal) {
    // Escape every ASCII punctuation character; PCRE2 treats "\<punct>" as the literal.
    if ((c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
        (c >= 0x7B && c <= 0x7E))
      p += '\\';
    p += c;
  }
  return compile(p);
}

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  out.clear();
  if (!code_ || text.empty()) return;
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_->code, nullptr);
  if (!md) return;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos <= text.size()) {
    // The text was validated once by the caller; re-checking it on every call would be quadratic.
    int rc = pcre2_match(code_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
      rc =
          pcre2_match(code_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    if (rc < 0) break;  // no (further) match, or a resource limit: the rest stays unmatched
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t s = ov[0], e = ov[1];
    if (e > s) {
      out.emplace_back(s, e);
      pos = e;
    } else {
      // Empty match: step over one character, as the Oniguruma iterator HF uses does.
      size_t at = e > pos ? e : pos;
      if (at >= text.size()) break;
      pos = at + utf8_char_len(uint8_t(text[at]));
    }
  }
  pcre2_match_data_free(md);
}

}  // namespace qforge::tokenizer_detail
