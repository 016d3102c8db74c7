#include "tools/commands.h"

#include <fmt/format.h>

namespace qforge::tools {

Command make_convert_command();
Command make_eval_command();
Command make_generate_command();
Command make_quantize_command();
Command make_compare_command();

int exit_code(const Status& s) {
  if (s.is_ok()) return 0;
  fmt::print(stderr, "error: {}\n", s.message());
  return 1;
}

std::vector<Command> all_commands() {
  return {make_convert_command(), make_eval_command(), make_generate_command(), make_quantize_command(), make_compare_command()};
}

}  // namespace qforge::tools
