// libFuzzer target: calibration files (quant::read_calibration_text: plain text or JSON lines with a "text"
// field) and the window sampler (quant::sample_calibration_windows) on the bytes of the text as token ids.
// Input: 8 bytes of sampler parameters (samples, seqlen, seed: little-endian u8, u16, u32; 1 byte unused), then the
// file. The windows must lie inside the token list and have seqlen tokens (oracle).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz_util.h"
#include "quant/calibration.h"

using namespace qforge;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::ByteReader r(data, size);
  const int64_t samples = int64_t(r.take<int8_t>());     // negative and zero included: must be rejected
  const int64_t seqlen = int64_t(r.take<int16_t>());
  const uint64_t seed = r.take<uint32_t>();
  (void)r.take<uint8_t>();
  const size_t skip = size - r.left();
  const std::string path = fuzz::write_scratch("calib.txt", data + skip, size - skip);
  auto text = quant::read_calibration_text(path);
  if (!text) return 0;
  if (text->find_first_not_of(" \t\r\n") == std::string::npos) std::abort();  // empty text is an error
  std::vector<int32_t> tokens(text->begin(), text->end());
  auto windows = quant::sample_calibration_windows(tokens, samples, seqlen, seed, path);
  if (!windows) return 0;
  if (samples <= 0 || seqlen <= 1 || int64_t(windows->size()) != samples) std::abort();
  for (const auto& w : *windows)
    if (int64_t(w.size()) != seqlen) std::abort();
  return 0;
}
