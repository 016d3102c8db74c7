// libFuzzer target: tokenizer.json (Tokenizer::from_tokenizer_json: model, normalizer, pre-tokenizer regexes,
// added tokens, post-processor, decoder) plus the tokenizer_config.json read beside it, then encode / decode of
// fixed strings and of fuzz text, and the JSON writers.
// Input: tokenizer.json ["\n#QF-PART#\n" tokenizer_config.json ["\n#QF-PART#\n" text to encode]].
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "model/tokenizer.h"

using namespace qforge;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::vector<std::string_view> parts = fuzz::split_all(in, "\n#QF-PART#\n");
  const std::string dir = fuzz::fresh_dir("tok");
  const std::string path = fuzz::write_scratch("tok/tokenizer.json", parts[0]);
  if (parts.size() > 1) fuzz::write_scratch("tok/tokenizer_config.json", parts[1]);
  auto tok = Tokenizer::from_tokenizer_json(path);
  if (!tok) return 0;
  fuzz::exercise_tokenizer(*tok, parts.size() > 2 ? parts[2] : parts[0].substr(parts[0].size() / 2));
  return 0;
}
