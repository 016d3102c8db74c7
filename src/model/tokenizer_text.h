// Text-level building blocks of the tokenizer: UTF-8 handling, GPT-2's byte-to-unicode alphabet and a
// PCRE2 regex (Unicode categories and lookahead, as the HF pre-tokenizer patterns need).
// Internal to src/model/tokenizer*.cpp.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace qforge::tokenizer_detail {

// Length of the valid UTF-8 sequence starting at s[i], or 0 when it is not valid there
// (ill-formed lead, truncated, overlong, surrogate or > U+10FFFF).
size_t utf8_valid_len(std::string_view s, size_t i);

// Byte length of the (valid) UTF-8 character whose lead byte is b.
inline size_t utf8_char_len(uint8_t b) {
  return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

// Number of code points of a valid UTF-8 string.
size_t utf8_count(std::string_view s);

// Appends the UTF-8 encoding of code point cp.
void utf8_append(std::string& out, uint32_t cp);

// Decodes the valid UTF-8 character at s[i].
uint32_t utf8_decode(std::string_view s, size_t i);

// s with every ill-formed sequence replaced by U+FFFD, one per "maximal subpart" (Unicode 3.9,
// the practice Python's bytes.decode("utf-8", "replace") and Rust's from_utf8_lossy follow).
std::string utf8_sanitize(std::string_view s);

// GPT-2's reversible byte <-> printable character mapping (bytes_to_unicode in HF).
struct ByteAlphabet {
  std::array<std::string, 256> byte_to_text;  // UTF-8 of the character standing for each byte
  std::array<int16_t, 512> char_to_byte;      // code point (< 512) -> byte, or -1
};
const ByteAlphabet& byte_alphabet();

// Byte-level spelling of raw bytes ("a b" -> "aĠb").
std::string byte_level_encode(std::string_view raw);
// Inverse: the bytes a byte-level string spells; false when a character is outside the alphabet.
bool byte_level_decode(std::string_view text, std::string& out);

// Compiled PCRE2 pattern in UTF + UCP mode (\s, \p{L}, \p{N} follow Unicode). Immutable after
// compile(); find_all may run concurrently from several threads.
class Regex {
 public:
  Regex();
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  static Expected<Regex> compile(std::string_view pattern);
  // A pattern that matches `literal` exactly.
  static Expected<Regex> literal(std::string_view literal);

  // Non-overlapping matches, left to right, as [start, end) byte offsets into `text` (valid UTF-8).
  // Empty matches are not reported (HF drops empty splits).
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Code;
  std::unique_ptr<Code> code_;
  std::string pattern_;
};

}  // namespace qforge::tokenizer_detail
