// libFuzzer target: safetensors files and sharded checkpoints (formats/safetensors.h): File::open (header JSON,
// dtypes, shapes, data_offsets, overlap, __metadata__), reading every tensor's bytes, and
// Checkpoint::open_dir over model.safetensors.index.json + shards. A file that opens is written back with
// Writer and must read back to the same tensors (round-trip oracle).
// Input, two modes:
//  - no "\n#QF-SHARD#\n" marker: the whole input is model.safetensors (File::open, then open_dir on its dir);
//  - with markers: part 0 is model.safetensors.index.json, part k >= 1 is the shard file
//    "model-0000k-of-0000n.safetensors" (n = number of shards), then open_dir.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/tensor.h"
#include "formats/safetensors.h"
#include "fuzz_util.h"

using namespace qforge;

namespace {

constexpr std::string_view kShardSep = "\n#QF-SHARD#\n";
// Elements converted to f32 per input: bounds the harness's work.
constexpr int64_t kMaxConvertElems = int64_t(1) << 20;

uint8_t checksum(const TensorView& v) {
  const uint8_t* p = static_cast<const uint8_t*>(v.data);
  uint8_t s = 0;
  const size_t n = v.nbytes();
  for (size_t i = 0; i < n; i += 31) s ^= p[i];
  if (n) s ^= p[n - 1];
  return s;
}

void exercise_file(const safetensors::File& f) {
  int64_t budget = kMaxConvertElems;
  uint64_t prev_end = 0;
  for (const safetensors::TensorEntry& t : f.tensors()) {
    if (f.find(t.name) != &t) std::abort();
    if (t.data_end - t.data_begin != t.view.nbytes()) std::abort();
    if (t.data_begin != t.data_end) {
      if (t.data_begin < prev_end) std::abort();  // overlaps were rejected
      prev_end = t.data_end;
    }
    volatile uint8_t sink = checksum(t.view);
    (void)sink;
    const DType d = t.view.dtype;
    // numel 0 skipped: convert_to_f32 would memcpy 0 bytes to the null data() of an empty vector (see S0 in
    // docs/fuzzing.md; no library caller passes an empty tensor).
    if ((d == DType::kF32 || d == DType::kF16 || d == DType::kBF16) && t.view.numel() > 0 && t.view.numel() <= budget) {
      std::vector<float> out(size_t(t.view.numel()));
      convert_to_f32(t.view, out.data());
      budget -= t.view.numel();
    }
  }
  (void)f.find("no such tensor");
}

// Writer -> File::open must give back the same names, dtypes, shapes, bytes and metadata.
void round_trip(const safetensors::File& f) {
  uint64_t total = 0;
  for (const auto& t : f.tensors()) total += t.view.nbytes();
  if (total > (uint64_t(1) << 24)) return;
  safetensors::Writer w;
  for (const auto& t : f.tensors())
    if (!w.add(t.name, t.view)) std::abort();  // names of an opened file are unique
  for (const auto& [k, v] : f.metadata()) w.set_metadata(k, v);
  const std::string dir = fuzz::fresh_dir("roundtrip");
  const std::string path = dir + "/rt.safetensors";
  if (!w.write(path)) return;  // e.g. a name that is not valid UTF-8 cannot be written back as JSON
  auto back = safetensors::File::open(path);
  if (!back) {
    fprintf(stderr, "round trip: %s\n", back.message().c_str());
    std::abort();
  }
  if (back->tensors().size() != f.tensors().size() || back->metadata() != f.metadata()) std::abort();
  for (const auto& t : f.tensors()) {
    const safetensors::TensorEntry* b = back->find(t.name);
    if (!b || b->view.dtype != t.view.dtype || !(b->view.shape == t.view.shape) ||
        b->view.nbytes() != t.view.nbytes() ||
        (t.view.nbytes() && std::memcmp(b->view.data, t.view.data, t.view.nbytes()) != 0))
      std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::vector<std::string_view> parts = fuzz::split_all(in, kShardSep);
  const std::string dir = fuzz::fresh_dir("ckpt");
  if (parts.size() == 1) {
    const std::string path = fuzz::write_scratch("ckpt/model.safetensors", in);
    auto f = safetensors::File::open(path);
    if (f) {
      exercise_file(*f);
      round_trip(*f);
    }
  } else {
    const size_t n = parts.size() - 1;
    if (n > 8) return 0;
    fuzz::write_scratch("ckpt/model.safetensors.index.json", parts[0]);
    for (size_t k = 1; k <= n; ++k) {
      char name[64];
      snprintf(name, sizeof name, "ckpt/model-%05zu-of-%05zu.safetensors", k, n);
      fuzz::write_scratch(name, parts[k]);
    }
  }
  auto ckpt = safetensors::Checkpoint::open_dir(dir);
  if (!ckpt) return 0;
  for (const std::string& name : ckpt->names()) {
    const safetensors::TensorEntry* e = ckpt->find(name);
    if (!e || e->name != name) std::abort();
    volatile uint8_t sink = checksum(e->view);
    (void)sink;
  }
  for (const auto& f : ckpt->files()) exercise_file(*f);
  return 0;
}
