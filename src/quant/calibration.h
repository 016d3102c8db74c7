// Calibration data: text from a file (plain text, or JSON lines with a "text" field), tokenized once and
// cut into `samples` windows of `seqlen` tokens at seeded random offsets (as the GPTQ reference samples
// its calibration set).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace qforge::quant {

struct CalibrationOptions {
  std::string file;  // empty: the caller samples text from the model itself
  int64_t samples = 128;
  int64_t seqlen = 512;
  uint64_t seed = 0;
};

// Reads a calibration file. JSON lines when every non-empty line is a JSON object with a string "text"
// field (joined with "\n\n"); otherwise the whole file as plain text. Errors name the file and line.
Expected<std::string> read_calibration_text(const std::string& path);

// `samples` windows of `seqlen` tokens at seeded uniform offsets into tokens. Errors when the text is
// too short for one window (naming both lengths).
Expected<std::vector<std::vector<int32_t>>> sample_calibration_windows(const std::vector<int32_t>& tokens,
                                                                        int64_t samples, int64_t seqlen,
                                                                        uint64_t seed, const std::string& source);

// Calibration without outside data: `samples` sequences of `seqlen` tokens sampled from the model itself
// (first token drawn uniformly from the vocabulary, then top-k 50 sampling at temperature 1, seeded), as
// data-free calibration (LLM-QAT) does. Costs samples * seqlen decode steps.
Expected<std::vector<std::vector<int32_t>>> generate_calibration(const LlamaModel& model, int64_t samples,
                                                                  int64_t seqlen, uint64_t seed, bool progress);

}  // namespace qforge::quant
