// Registry of subcommands: each tools/cmd_<name>.cpp defines make_<name>_command().
#pragma once

#include <CLI/CLI.hpp>

#include "core/status.h"

#include <functional>
#include <string>
#include <vector>

namespace qforge::tools {

struct Command {
  std::function<CLI::App*(CLI::App&)> declare;  // declares the subcommand and its flags
  std::function<int()> run;
  CLI::App* sub = nullptr;
  void attach(CLI::App& app) { sub = declare(app); }
};

std::vector<Command> all_commands();

// --device's spelling (cpu, cuda, cuda:...); the GPU list itself is read by quant::parse_device at run time.
inline CLI::Validator quant_device_validator() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        if (v == "cpu" || v == "cuda" || (v.rfind("cuda:", 0) == 0 && v.size() > 5)) return "";
        return "expected cpu, cuda, cuda:N, cuda:N,M,... or cuda:all, got '" + v + "'";
      },
      "cpu|cuda|cuda:N[,M...]|cuda:all");
}

// Prints a failed Status as "error: ..." on stderr; the process exit code (0 or 1).
int exit_code(const Status& s);

}  // namespace qforge::tools
