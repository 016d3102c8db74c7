// libFuzzer target: GGUF files (formats/gguf.h) and what is read from them: every typed getter on every key,
// tensor_bytes / load_f32 of the tensors, config_from_gguf, weights_from_gguf (f32 and packed Q4), and the GGUF
// tokenizer (Tokenizer::from_gguf, then encode / decode).
// Input: the whole file. Seeds: tests/data/gguf/small.gguf, tests/data/tokenizer/*.gguf, hand-made headers.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "formats/gguf.h"
#include "fuzz_util.h"
#include "model/loader.h"
#include "model/tokenizer.h"

using namespace qforge;

namespace {

// Dequantized elements per input, across all tensors: a bound on the harness's own work, not on the parser.
constexpr int64_t kMaxLoadElems = int64_t(1) << 22;

void touch(std::span<const uint8_t> b) {
  volatile uint8_t sink = 0;
  for (size_t i = 0; i < b.size(); i += 61) sink ^= b[i];
  if (!b.empty()) sink ^= b.back();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_scratch("in.gguf", data, size);
  auto opened = gguf::GgufFile::open(path);
  if (!opened) return 0;
  const gguf::GgufFile& f = *opened;

  for (const auto& [key, value] : f.metadata()) {
    (void)f.get_string(key);
    (void)f.get_uint(key);
    (void)f.get_int(key);
    (void)f.get_float(key);
    (void)f.get_bool(key);
    (void)f.get_string_array(key);
    (void)f.get_int_array(key);
    (void)f.get_float_array(key);
    if (f.find(key) != &value && f.find(key)->type != value.type) std::abort();  // duplicates were rejected
  }
  (void)f.get_string("no.such.key");

  int64_t budget = kMaxLoadElems;
  for (const gguf::TensorInfo& t : f.tensors()) {
    if (f.find_tensor(t.name) != &t) std::abort();  // names are unique
    const std::span<const uint8_t> bytes = f.tensor_bytes(t);
    // open() checked every tensor against the file: the span is the whole tensor and lies inside the map.
    if (bytes.size() != t.nbytes) std::abort();
    touch(bytes);
    (void)t.shape();
    if (t.numel() <= budget) {
      auto loaded = f.load_f32(t);
      if (loaded) budget -= t.numel();
    }
  }

  auto cfg = config_from_gguf(f);
  if (cfg) {
    (void)weights_from_gguf(f, *cfg, /*pack_q4=*/false);
    (void)weights_from_gguf(f, *cfg, /*pack_q4=*/true);
  }

  auto tok = Tokenizer::from_gguf(f);
  if (tok) fuzz::exercise_tokenizer(*tok, std::string_view(reinterpret_cast<const char*>(data), size).substr(size / 2));
  return 0;
}
