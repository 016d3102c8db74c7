// qforge convert MODEL.gguf --out DIR [--dtype f32|bf16|f16]: a Hugging Face directory that
// transformers loads (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
// generation_config.json), written into a temporary directory and renamed at the end.
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <filesystem>
#include <map>

#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/loader.h"
#include "tools/commands.h"

namespace qforge::tools {

namespace fs = std::filesystem;

namespace {

struct ConvertArgs {
  std::string input, out, dtype = "f32";
  double shard_mb = 4096;
};

Status write_text(const fs::path& p, const std::string& s) { return write_file_atomic(p.string(), s.data(), s.size()); }

Status run_convert(const ConvertArgs& a) {
  const std::map<std::string, std::pair<DType, const char*>> kDTypes = {
      {"f32", {DType::kF32, "float32"}}, {"bf16", {DType::kBF16, "bfloat16"}}, {"f16", {DType::kF16, "float16"}}};
  const auto dt = kDTypes.at(a.dtype);
  QF_ASSIGN_OR_RETURN(gguf::GgufFile f, gguf::GgufFile::open(a.input));
  QF_ASSIGN_OR_RETURN(ModelConfig cfg, config_from_gguf(f));
  cfg.torch_dtype = dt.second;
  QF_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::from_gguf(f));
  fmt::print(stderr, "convert: {} -> {} ({} layers, hidden {}, vocab {}, {})\n", a.input, a.out,
             cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, a.dtype);
  QF_ASSIGN_OR_RETURN(ModelWeights w, weights_from_gguf(f, cfg));

  // Converted copies live as long as the writer needs them.
  std::vector<Tensor> converted;
  safetensors::Writer writer;
  writer.set_metadata("format", "pt");
  auto slots = tensor_slots(cfg, w);
  converted.reserve(slots.size());
  for (TensorSlot& s : slots) {
    if (dt.first == DType::kF32) {
      QF_RETURN_IF_ERROR(writer.add(s.name, s.tensor->view()));
    } else {
      converted.emplace_back(dt.first, s.shape);
      convert_from_f32(s.tensor->f32(), s.tensor->numel(), dt.first, converted.back().data<void>());
      QF_RETURN_IF_ERROR(writer.add(s.name, converted.back().view()));
    }
  }

  const fs::path out(a.out);
  std::error_code ec;
  if (out.has_parent_path()) fs::create_directories(out.parent_path(), ec);
  const fs::path tmp = fs::path(a.out + fmt::format(".tmp.{}", getpid()));
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec)) return error("{}: cannot create directory: {}", tmp.string(), ec.message());
  auto fail = [&](Status s) {
    fs::remove_all(tmp, ec);
    return s;
  };
  if (Status s = writer.write_sharded(tmp.string(), uint64_t(a.shard_mb * 1024 * 1024)); !s) return fail(s);
  if (Status s = write_text(tmp / "config.json", model_config_to_json(cfg)); !s) return fail(s);
  if (Status s = write_text(tmp / "tokenizer.json", tok.to_tokenizer_json()); !s) return fail(s);
  if (Status s = write_text(tmp / "tokenizer_config.json", tok.to_tokenizer_config_json()); !s) return fail(s);
  nlohmann::json gen;
  if (cfg.bos_token_id >= 0) gen["bos_token_id"] = cfg.bos_token_id;
  if (!cfg.eos_token_ids.empty()) gen["eos_token_id"] = cfg.eos_token_ids[0];
  if (Status s = write_text(tmp / "generation_config.json", gen.dump(2) + "\n"); !s) return fail(s);

  // Replace any previous output only now that the new one is complete.
  if (fs::exists(out, ec)) {
    const fs::path old = fs::path(a.out + fmt::format(".old.{}", getpid()));
    fs::rename(out, old, ec);
    if (ec) return fail(error("{}: cannot move the existing output aside: {}", a.out, ec.message()));
    fs::rename(tmp, out, ec);
    if (ec) return fail(error("{}: rename from {} failed: {}", a.out, tmp.string(), ec.message()));
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, out, ec);
    if (ec) return fail(error("{}: rename from {} failed: {}", a.out, tmp.string(), ec.message()));
  }
  fmt::print(stderr, "convert: wrote {}\n", a.out);
  return Status::ok();
}

}  // namespace

Command make_convert_command() {
  auto args = std::make_shared<ConvertArgs>();
  Command c;
  c.declare = [args](CLI::App& app) {
    CLI::App* sub = app.add_subcommand("convert", "Convert a GGUF model into a Hugging Face directory");
    sub->add_option("model", args->input, "input .gguf file")->required()->check(CLI::ExistingFile);
    sub->add_option("--out", args->out, "output directory")->required();
    sub->add_option("--dtype", args->dtype, "tensor dtype of the output")
        ->check(CLI::IsMember({"f32", "bf16", "f16"}));
    sub->add_option("--shard-size-mb", args->shard_mb, "largest safetensors shard, MiB")->check(CLI::PositiveNumber);
    return sub;
  };
  c.run = [args]() {
    Status s = run_convert(*args);
    if (!s) {
      fmt::print(stderr, "error: {}\n", s.message());
      return 1;
    }
    return 0;
  };
  return c;
}

}  // namespace qforge::tools
