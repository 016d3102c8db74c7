// Public face of the tokenizer; the stages live in tokenizer_pipeline.cpp, the loaders in
// tokenizer_json.cpp and tokenizer_gguf.cpp.
#include "model/tokenizer.h"

#include <filesystem>

#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "model/tokenizer_impl.h"

namespace qforge {

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

namespace {

// Parses JSON text; the error names the file and the byte where parsing stopped.
Expected<nlohmann::json> parse_json(const std::string& text, const std::string& path) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return error("{}: invalid JSON: {}", path, e.what());
  }
}

}  // namespace

Expected<Tokenizer> Tokenizer::from_tokenizer_json(const std::string& path) {
  QF_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  QF_ASSIGN_OR_RETURN(nlohmann::json root, parse_json(text, path));
  Tokenizer t;
  try {
    QF_ASSIGN_OR_RETURN(t.impl_, tokenizer_from_json(root, path));
    // A tokenizer_config.json (and chat_template.jinja) beside it names BOS/EOS and the chat template.
    std::filesystem::path dir = std::filesystem::path(path).parent_path();
    std::string cfg_path = (dir / "tokenizer_config.json").string();
    std::error_code ec;
    if (std::filesystem::is_regular_file(cfg_path, ec)) {
      QF_ASSIGN_OR_RETURN(std::string cfg_text, read_text_file(cfg_path));
      QF_ASSIGN_OR_RETURN(nlohmann::json cfg, parse_json(cfg_text, cfg_path));
      QF_RETURN_IF_ERROR(apply_tokenizer_config(cfg, cfg_path, *t.impl_));
    }
    std::string jinja = (dir / "chat_template.jinja").string();
    if (t.impl_->chat_template.empty() && std::filesystem::is_regular_file(jinja, ec)) {
      QF_ASSIGN_OR_RETURN(t.impl_->chat_template, read_text_file(jinja));
    }
  } catch (const nlohmann::json::exception& e) {
    // The loaders check types before reading; this only guards against a case they missed.
    return error("{}: malformed tokenizer: {}", path, e.what());
  }
  return t;
}

Expected<Tokenizer> Tokenizer::from_gguf(const gguf::GgufFile& file) {
  Tokenizer t;
  try {
    QF_ASSIGN_OR_RETURN(t.impl_, tokenizer_from_gguf(file));
  } catch (const nlohmann::json::exception& e) {
    return error("{}: malformed tokenizer metadata: {}", file.path(), e.what());
  }
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  return impl_->encode(text, add_special);
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  return impl_->decode(ids);
}

std::string Tokenizer::token_text(int32_t id) const {
  return impl_->token_text(id);
}

int32_t Tokenizer::vocab_size() const {
  return impl_->vocab_size();
}
int32_t Tokenizer::bos_id() const {
  return impl_->bos_id;
}
int32_t Tokenizer::eos_id() const {
  return impl_->eos_id;
}

std::string Tokenizer::to_tokenizer_json() const {
  return tokenizer_to_json(*impl_);
}
std::string Tokenizer::to_tokenizer_config_json() const {
  return tokenizer_config_to_json(*impl_);
}

}  // namespace qforge
