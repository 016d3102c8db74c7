#include "fuzz_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "model/tokenizer.h"

namespace qforge::fuzz {

namespace {
struct Scratch {
  std::string dir;
  Scratch() {
    std::string base;
    if (const char* t = std::getenv("TMPDIR"); t && *t) base = t;
    else if (std::filesystem::is_directory("/dev/shm")) base = "/dev/shm";
    else base = "/tmp";
    std::string tmpl = base + "/qforge_fuzz_XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed under " + base);
    dir = tmpl;
  }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};
}  // namespace

const std::string& scratch_dir() {
  static Scratch s;
  return s.dir;
}

std::string write_scratch(const std::string& name, const void* data, size_t size) {
  std::string path = scratch_dir() + "/" + name;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) throw std::runtime_error("cannot create " + path);
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n <= 0) break;
    p += n;
    size -= static_cast<size_t>(n);
  }
  ::close(fd);
  return path;
}

std::pair<std::string_view, std::string_view> split_once(std::string_view in, std::string_view sep) {
  size_t at = in.find(sep);
  if (at == std::string_view::npos) return {in, {}};
  return {in.substr(0, at), in.substr(at + sep.size())};
}

bool skip_known() {
  static const bool skip = [] {
    const char* v = std::getenv("QFORGE_FUZZ_SKIP_KNOWN");
    return v && *v && std::string(v) != "0";
  }();
  return skip;
}

std::string fresh_dir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::path(scratch_dir()) / name;
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::filesystem::create_directories(dir);
  return dir.string();
}

std::vector<std::string_view> split_all(std::string_view in, std::string_view sep) {
  std::vector<std::string_view> parts;
  for (;;) {
    const size_t at = in.find(sep);
    if (at == std::string_view::npos) break;
    parts.push_back(in.substr(0, at));
    in = in.substr(at + sep.size());
  }
  parts.push_back(in);
  return parts;
}

void exercise_tokenizer(const Tokenizer& tok, std::string_view text) {
  // Bounded: BPE merges are quadratic in the word length, which is not what this harness looks for.
  constexpr size_t kMaxText = 512;
  static const char* const kFixed[] = {
      "", "Hello world", " leading  spaces\tand\nnewlines\r\n", "123456 digits 3.14", "caf\xC3\xA9 \xE2\x96\x81 \xF0\x9F\x98\x80",
      "\xFF\xFE invalid utf-8 \xC3", "<s></s><unk><|endoftext|>", "a", "   ",
  };
  const int32_t vocab = tok.vocab_size();
  std::vector<int32_t> probe = {-1, 0, 1, vocab - 1, vocab, vocab + 1, 2147483647, -2147483647 - 1};
  for (const char* s : kFixed) {
    for (bool special : {false, true}) {
      const std::vector<int32_t> ids = tok.encode(s, special);
      (void)tok.decode(ids);
    }
  }
  const std::string_view t = text.substr(0, kMaxText);
  const std::vector<int32_t> ids = tok.encode(t, true);
  (void)tok.decode(ids);
  for (int32_t id : ids) (void)tok.token_text(id);
  (void)tok.decode(probe);
  for (int32_t id : probe) (void)tok.token_text(id);
  (void)tok.bos_id();
  (void)tok.eos_id();
  (void)tok.to_tokenizer_json();
  (void)tok.to_tokenizer_config_json();
}

}  // namespace qforge::fuzz
