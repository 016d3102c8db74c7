// Helpers shared by the libFuzzer targets: fuzz input -> files the parsers open by path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qforge::fuzz {

// A private scratch directory for this process (under $TMPDIR, else /dev/shm, else /tmp: tmpfs where there is
// one), created on first use and removed at exit.
const std::string& scratch_dir();

// Writes bytes to scratch_dir()/name (truncating) and returns the path.
std::string write_scratch(const std::string& name, const void* data, size_t size);
inline std::string write_scratch(const std::string& name, std::string_view s) {
  return write_scratch(name, s.data(), s.size());
}

// Splits fuzz input at the first occurrence of sep into (head, tail); no separator: (all, "").
std::pair<std::string_view, std::string_view> split_once(std::string_view in, std::string_view sep);

}  // namespace qforge::fuzz

namespace qforge {
class Tokenizer;
}

namespace qforge::fuzz {

// Makes scratch_dir()/name an empty directory (removing what an earlier input left there); returns its path.
std::string fresh_dir(const std::string& name);

// Splits fuzz input at every occurrence of sep (a rarely occurring marker; the seeds use it).
std::vector<std::string_view> split_all(std::string_view in, std::string_view sep);

// True when QFORGE_FUZZ_SKIP_KNOWN is set (fuzz/run_fuzzers.sh sets it): harnesses then step around findings that
// are reported but not fixed yet (docs/fuzzing.md), so a campaign looks for new ones. run_regressions.sh leaves it
// unset, so the saved inputs of those findings still fail until the parser is fixed.
bool skip_known();

// Encodes and decodes a few fixed strings and `text` (cut to a bounded length so one input stays fast), decodes
// arbitrary ids, and renders the tokenizer back to JSON: what callers do with a tokenizer once it has loaded.
void exercise_tokenizer(const Tokenizer& tok, std::string_view text);

// Consumes fixed-width little-endian integers from the front of the input (zero once it runs out).
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  template <typename T>
  T take() {
    T v{};
    const size_t k = n_ < sizeof(T) ? n_ : sizeof(T);
    for (size_t i = 0; i < k; ++i) reinterpret_cast<uint8_t*>(&v)[i] = p_[i];
    p_ += k;
    n_ -= k;
    return v;
  }
  size_t left() const { return n_; }

 private:
  const uint8_t* p_;
  size_t n_;
};

}  // namespace qforge::fuzz
