// Registry of subcommands: each tools/cmd_<name>.cpp defines make_<name>_command().
#pragma once

#include <CLI/CLI.hpp>

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

}  // namespace qforge::tools
