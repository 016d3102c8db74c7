// libFuzzer target: formats::unpack_linear on arbitrary PackedLinear shapes and contents (all three formats),
// then formats::to_w4_weight (act-order permutation, runtime packing). Oracle: when pack_linear accepts the
// unpacked layer, packing it again gives back the same words (the formats are bijective on valid input).
// Input: format (u8), shape mode (u8), out / in / group_size (mode 0: u8 * 8 each, group 0 meaning per-channel;
// mode 1: raw little-endian i64 each), then element counts (u16 each) of qweight, qzeros, scales, g_idx, then
// their contents (missing bytes read as zero).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "formats/quant_pack.h"
#include "fuzz_util.h"

using namespace qforge;

namespace {
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::ByteReader r(data, size);
  const formats::PackedFormat f = formats::PackedFormat(r.take<uint8_t>() % 3);
  const uint8_t mode = r.take<uint8_t>() % 2;
  formats::PackedLinear p;
  if (mode == 0) {
    p.out = int64_t(r.take<uint8_t>()) * 8;
    p.in = int64_t(r.take<uint8_t>()) * 8;
    const int64_t g = int64_t(r.take<uint8_t>()) * 8;
    p.group_size = g == 0 ? p.in : g;
  } else {
    p.out = r.take<int64_t>();
    p.in = r.take<int64_t>();
    p.group_size = r.take<int64_t>();
  }
  const size_t nqw = r.take<uint16_t>(), nqz = r.take<uint16_t>(), nsc = r.take<uint16_t>(), ngi = r.take<uint16_t>();
  // Never read more elements than the input holds: counts are bounded by the bytes left.
  if ((nqw + nqz + ngi) * 4 + nsc * 2 > r.left() + 64) return 0;
  p.qweight.resize(nqw);
  for (auto& w : p.qweight) w = r.take<int32_t>();
  p.qzeros.resize(nqz);
  for (auto& w : p.qzeros) w = r.take<int32_t>();
  p.scales.resize(nsc);
  for (auto& s : p.scales) s = r.take<uint16_t>();
  p.g_idx.resize(ngi);
  for (auto& g : p.g_idx) g = r.take<int32_t>();

  auto q = formats::unpack_linear(p, f, "fuzz.linear");
  if (!q) return 0;
  (void)formats::to_w4_weight(*q, "fuzz.linear");
  auto back = formats::pack_linear(*q, f, "fuzz.linear");
  if (!back) return 0;
  const bool same = back->out == p.out && back->in == p.in && back->group_size == p.group_size &&
                    back->qweight == p.qweight && back->qzeros == p.qzeros && back->scales == p.scales &&
                    // AWQ has no g_idx (unpack_linear ignores one), GPTQ without one gets i / group_size.
                    (f == formats::PackedFormat::kAwqGemm || p.g_idx.empty() || back->g_idx == p.g_idx);
  if (!same) {
    fprintf(stderr, "pack_linear(unpack_linear(p)) != p (format %s, out %lld, in %lld, group %lld)\n",
            formats::packed_format_name(f), (long long)p.out, (long long)p.in, (long long)p.group_size);
    std::abort();
  }
  return 0;
}
