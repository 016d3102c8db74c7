#include "checkpoint/resources.h"

#include <fmt/format.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "formats/gguf.h"
#include "model/loader.h"

namespace qforge::checkpoint {

namespace fs = std::filesystem;

Expected<ModelConfig> peek_model_config(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return load_model_config((fs::path(path) / "config.json").string());
  QF_ASSIGN_OR_RETURN(gguf::GgufFile f, gguf::GgufFile::open(path));
  return config_from_gguf(f);
}

namespace {
double gib(uint64_t b) { return double(b) / double(1ull << 30); }
}  // namespace

ResourceEstimate estimate_quantize_resources(const ModelConfig& c, int64_t N, int64_t L, bool packed,
                                             bool stream_layers) {
  const uint64_t H = uint64_t(c.hidden_size), I = uint64_t(c.intermediate_size), V = uint64_t(c.vocab_size);
  const uint64_t Q = uint64_t(c.q_dim()), KV = uint64_t(c.kv_dim()), layers = uint64_t(c.num_hidden_layers);
  const uint64_t linear_params = layers * (H * Q + 2 * H * KV + Q * H + 3 * H * I);
  const uint64_t dense_params = V * H * (c.tie_word_embeddings ? 1 : 2) + layers * 2 * H + H;
  const uint64_t rows = uint64_t(N) * uint64_t(L);
  ResourceEstimate e;
  // Streaming: the non-layer tensors, plus one layer twice (the layer, and the largest working copies of its
  // linears or the writer's converted copies).
  const uint64_t weights = stream_layers ? 4 * (dense_params + 2 * (linear_params / std::max<uint64_t>(layers, 1)))
                                         : 4 * (linear_params + dense_params);
  const uint64_t x = 4 * rows * H;                        // inputs of the current layer
  const uint64_t captures = 4 * rows * (3 * H + I + Q);   // AWQ's captured inputs of every slot of one layer
  const uint64_t hessian = 8 * std::max(H, I) * std::max(H, I) * 2;  // H and its factorisation, f64
  const uint64_t codes = packed ? linear_params : 0;     // unpacked codes kept for the export, 1 byte each
  const uint64_t codes_held = stream_layers ? codes / std::max<uint64_t>(layers, 1) : codes;
  e.memory_bytes = weights + 2 * x + captures + hessian + codes_held;
  const uint64_t out = packed ? linear_params / 2 + 2 * dense_params : 4 * (linear_params + dense_params);
  const uint64_t state = 4 * (linear_params + layers * 2 * H) + codes + 4 * x;  // layer files + activations
  e.disk_bytes = out + state;
  e.breakdown = fmt::format("memory: f32 weights {:.2f} GiB{} + calibration activations {:.2f} GiB ({} x {} tokens) "
                            "+ one layer's captures and Hessians {:.2f} GiB{}; disk: output {:.2f} GiB + run state "
                            "{:.2f} GiB",
                            gib(weights), stream_layers ? " (one layer at a time)" : "", gib(2 * x + captures), N, L,
                            gib(hessian), packed ? fmt::format(" + codes {:.2f} GiB", gib(codes_held)) : std::string(),
                            gib(out),
                            gib(state));
  return e;
}

Status check_resources(const ResourceEstimate& e, const std::string& out_path) {
  uint64_t avail = 0;
  std::ifstream mi("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (mi >> key >> kb >> unit)
    if (key == "MemAvailable:") avail = kb * 1024;
  if (avail > 0 && e.memory_bytes > avail)
    return error("this run needs about {:.2f} GiB of memory and {:.2f} GiB is available ({}); lower "
                 "--calib-samples / --calib-seqlen or use a machine with more memory",
                 gib(e.memory_bytes), gib(avail), e.breakdown);
  fs::path dir = fs::absolute(out_path).parent_path();
  std::error_code ec;
  while (!dir.empty() && !fs::exists(dir, ec)) dir = dir.parent_path();
  struct statvfs sv{};
  if (!dir.empty() && statvfs(dir.c_str(), &sv) == 0) {
    const uint64_t free_bytes = uint64_t(sv.f_bavail) * uint64_t(sv.f_frsize);
    if (e.disk_bytes > free_bytes)
      return error("this run needs about {:.2f} GiB of disk under {} and {:.2f} GiB is free ({}); free space or "
                   "choose another --out",
                   gib(e.disk_bytes), dir.string(), gib(free_bytes), e.breakdown);
  }
  return Status::ok();
}

}  // namespace qforge::checkpoint
