// Shared helpers for tests: where the data, the source tree and the default model are.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

namespace qforge::testing {

inline std::string source_dir() { return QFORGE_SOURCE_DIR; }
inline std::string data_dir() { return QFORGE_DATA_DIR; }

// The default model, as scripts/setup.sh caches it.
inline std::string default_model_path() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  std::string base = (xdg && *xdg) ? std::string(xdg) : std::string(home ? home : "") + "/.cache";
  return base + "/qforge/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// Fails (not skips) when the model is missing: `make test` runs the set-up that downloads it.
#define QF_REQUIRE_MODEL(path)                                                                    \
  do {                                                                                            \
    if (!std::filesystem::exists(path)) {                                                         \
      GTEST_FAIL() << "default model missing at " << (path) << ": run `bash scripts/setup.sh`"; \
    }                                                                                             \
  } while (0)

// A fresh temporary directory, removed by the destructor.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "qforge-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data()) ? tmpl : std::string();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

#ifdef QFORGE_BINARY
// Runs the qforge binary of this build with `args` (a shell command line), collecting stdout and stderr.
struct CliResult {
  int code = -1;       // exit status, -1 when it did not exit normally
  std::string output;  // stdout + stderr
};
inline CliResult run_qforge(const std::string& args) {
  const std::string cmd = std::string(QFORGE_BINARY) + " " + args + " 2>&1";
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}
#endif

}  // namespace qforge::testing
