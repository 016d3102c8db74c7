// Registry of subcommands: each tools/cmd_<name>.cpp defines make_<name>_command().
#pragma once

#include <CLI/CLI.hpp>

#include "core/status.h"

#include <functional>
#include <vector>

namespace qforge::tools {

struct Command {
  std::function<CLI::App*(CLI::App&)> declare;  // declares the subcommand and its flags
  std::function<int()> run;
  CLI::App* sub = nullptr;
  void attach(CLI::App& app) { sub = declare(app); }
};

std::vector<Command> all_commands();

// Prints a failed Status as "error: ..." on stderr; the process exit code (0 or 1).
int exit_code(const Status& s);

}  // namespace qforge::tools
