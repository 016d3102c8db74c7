#include "model/hf_export.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <filesystem>

#include "core/mapped_file.h"
#include "formats/safetensors.h"

namespace qforge {

namespace fs = std::filesystem;

namespace {
Status write_text(const fs::path& p, const std::string& s) { return write_file_atomic(p.string(), s.data(), s.size()); }

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    default: return "float32";
  }
}
}  // namespace

Status save_hf_directory(const std::string& dir, const ModelConfig& config, const ModelWeights& weights,
                         const Tokenizer& tokenizer, const HfExportOptions& opt) {
  if (opt.dtype != DType::kF32 && opt.dtype != DType::kF16 && opt.dtype != DType::kBF16)
    return error("{}: export dtype must be F32, F16 or BF16, got {}", dir, dtype_name(opt.dtype));
  ModelConfig cfg = config;
  cfg.torch_dtype = torch_dtype_name(opt.dtype);
  // Converted copies live as long as the writer needs them.
  std::vector<Tensor> converted;
  safetensors::Writer writer;
  writer.set_metadata("format", "pt");
  auto slots = tensor_slots(cfg, weights);
  converted.reserve(slots.size());
  for (const TensorSlot& s : slots) {
    if (s.tensor->empty() || !(s.tensor->shape() == s.shape))
      return error("{}: tensor '{}' is missing or has shape {}, expected {}", dir, s.name, s.tensor->shape().str(),
                   s.shape.str());
    if (opt.dtype == DType::kF32) {
      QF_RETURN_IF_ERROR(writer.add(s.name, s.tensor->view()));
    } else {
      converted.emplace_back(opt.dtype, s.shape);
      convert_from_f32(s.tensor->f32(), s.tensor->numel(), opt.dtype, converted.back().data<void>());
      QF_RETURN_IF_ERROR(writer.add(s.name, converted.back().view()));
    }
  }

  const fs::path out(dir);
  std::error_code ec;
  if (out.has_parent_path()) fs::create_directories(out.parent_path(), ec);
  const fs::path tmp = fs::path(dir + fmt::format(".tmp.{}", getpid()));
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec)) return error("{}: cannot create directory: {}", tmp.string(), ec.message());
  auto fail = [&](Status s) {
    fs::remove_all(tmp, ec);
    return s;
  };
  if (Status s = writer.write_sharded(tmp.string(), opt.max_shard_bytes); !s) return fail(s);
  if (Status s = write_text(tmp / "config.json", model_config_to_json(cfg)); !s) return fail(s);
  if (Status s = write_text(tmp / "tokenizer.json", tokenizer.to_tokenizer_json()); !s) return fail(s);
  if (Status s = write_text(tmp / "tokenizer_config.json", tokenizer.to_tokenizer_config_json()); !s) return fail(s);
  nlohmann::json gen;
  if (cfg.bos_token_id >= 0) gen["bos_token_id"] = cfg.bos_token_id;
  if (!cfg.eos_token_ids.empty()) gen["eos_token_id"] = cfg.eos_token_ids[0];
  if (Status s = write_text(tmp / "generation_config.json", gen.dump(2) + "\n"); !s) return fail(s);
  if (!opt.extra_file_name.empty())
    if (Status s = write_text(tmp / opt.extra_file_name, opt.extra_file_text); !s) return fail(s);

  // Replace any previous output only now that the new one is complete.
  if (fs::exists(out, ec)) {
    const fs::path old = fs::path(dir + fmt::format(".old.{}", getpid()));
    fs::rename(out, old, ec);
    if (ec) return fail(error("{}: cannot move the existing output aside: {}", dir, ec.message()));
    fs::rename(tmp, out, ec);
    if (ec) return fail(error("{}: rename from {} failed: {}", dir, tmp.string(), ec.message()));
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, out, ec);
    if (ec) return fail(error("{}: rename from {} failed: {}", dir, tmp.string(), ec.message()));
  }
  return Status::ok();
}

}  // namespace qforge
