#include "quant/calibration.h"

#include <nlohmann/json.hpp>

#include <random>
#include <sstream>

#include "core/mapped_file.h"
#include "core/progress.h"
#include "model/sampler.h"

namespace qforge::quant {

Expected<std::string> read_calibration_text(const std::string& path) {
  QF_ASSIGN_OR_RETURN(std::string raw, read_text_file(path));
  if (raw.find_first_not_of(" \t\r\n") == std::string::npos) return error("{}: calibration text is empty", path);
  // JSON lines if the first non-blank line is a JSON object; then every line must be one.
  const size_t first = raw.find_first_not_of(" \t\r\n");
  if (raw[first] != '{') return raw;
  std::istringstream in(raw);
  std::string line, out;
  int64_t lineno = 0, n = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      return error("{}:{}: invalid JSON line: {}", path, lineno, e.what());
    }
    auto it = j.is_object() ? j.find("text") : j.end();
    if (!j.is_object() || it == j.end() || !it->is_string())
      return error("{}:{}: JSON line has no string field \"text\"", path, lineno);
    if (n++) out += "\n\n";
    out += it->get<std::string>();
  }
  if (out.find_first_not_of(" \t\r\n") == std::string::npos) return error("{}: calibration text is empty", path);
  return out;
}

Expected<std::vector<std::vector<int32_t>>> sample_calibration_windows(const std::vector<int32_t>& tokens,
                                                                        int64_t samples, int64_t seqlen,
                                                                        uint64_t seed, const std::string& source) {
  if (samples <= 0) return error("--calib-samples must be positive, got {}", samples);
  if (seqlen <= 1) return error("--calib-seqlen must be at least 2, got {}", seqlen);
  if (int64_t(tokens.size()) <= seqlen)
    return error("{}: calibration text has {} tokens, too short for one window of --calib-seqlen {}", source,
                 tokens.size(), seqlen);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> start(0, int64_t(tokens.size()) - seqlen - 1);
  std::vector<std::vector<int32_t>> out;
  for (int64_t s = 0; s < samples; ++s) {
    const int64_t i = start(rng);
    out.emplace_back(tokens.begin() + i, tokens.begin() + i + seqlen);
  }
  return out;
}

Expected<std::vector<std::vector<int32_t>>> generate_calibration(const LlamaModel& model, int64_t samples,
                                                                  int64_t seqlen, uint64_t seed, bool progress) {
  if (samples <= 0 || seqlen <= 1) return error("generated calibration needs samples > 0 and seqlen > 1");
  const int64_t V = model.config().vocab_size;
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> out;
  std::vector<float> logits(static_cast<size_t>(V));
  Progress bar("generate calibration", samples, progress);
  for (int64_t s = 0; s < samples; ++s) {
    Sampler sampler({.temperature = 1.0f, .top_k = 50, .top_p = 1.0f, .seed = rng()});
    std::vector<int32_t> seq = {int32_t(std::uniform_int_distribution<int64_t>(0, V - 1)(rng))};
    KVCache cache = model.make_cache(seqlen);
    while (int64_t(seq.size()) < seqlen) {
      QF_ASSIGN_OR_RETURN(Tensor h, model.forward_hidden(&seq.back(), 1, cache));
      model.logits(h.f32(), 1, logits.data());
      seq.push_back(sampler.sample(logits.data(), V));
    }
    out.push_back(std::move(seq));
    bar.update(s + 1);
  }
  bar.finish();
  return out;
}

}  // namespace qforge::quant
