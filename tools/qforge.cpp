// qforge: command-line front end. Each subcommand lives in tools/cmd_<name>.cpp.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"qforge: W4A16 quantization (AWQ, GPTQ) of Llama-family models"};
  app.require_subcommand(1);
  app.allow_extras(false);
  std::vector<qforge::tools::Command> cmds = qforge::tools::all_commands();
  for (auto& c : cmds) c.attach(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  for (auto& c : cmds)
    if (c.sub && c.sub->parsed()) return c.run();
  return 2;
}
