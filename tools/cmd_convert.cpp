// qforge convert MODEL.gguf --out DIR [--dtype f32|bf16|f16]: a Hugging Face directory that
// transformers loads (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
// generation_config.json), written into a temporary directory and renamed at the end.
#include <fmt/format.h>

#include <map>

#include "formats/gguf.h"
#include "model/hf_export.h"
#include "model/loader.h"
#include "tools/commands.h"

namespace qforge::tools {

namespace {

struct ConvertArgs {
  std::string input, out, dtype = "f32";
  double shard_mb = 4096;
};

Status run_convert(const ConvertArgs& a) {
  const std::map<std::string, DType> kDTypes = {{"f32", DType::kF32}, {"bf16", DType::kBF16}, {"f16", DType::kF16}};
  QF_ASSIGN_OR_RETURN(gguf::GgufFile f, gguf::GgufFile::open(a.input));
  QF_ASSIGN_OR_RETURN(ModelConfig cfg, config_from_gguf(f));
  QF_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::from_gguf(f));
  fmt::print(stderr, "convert: {} -> {} ({} layers, hidden {}, vocab {}, {})\n", a.input, a.out,
             cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, a.dtype);
  QF_ASSIGN_OR_RETURN(ModelWeights w, weights_from_gguf(f, cfg));
  HfExportOptions opt;
  opt.dtype = kDTypes.at(a.dtype);
  opt.max_shard_bytes = uint64_t(a.shard_mb * 1024 * 1024);
  QF_RETURN_IF_ERROR(save_hf_directory(a.out, cfg, w, tok, opt));
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
  c.run = [args]() { return exit_code(run_convert(*args)); };
  return c;
}

}  // namespace qforge::tools
