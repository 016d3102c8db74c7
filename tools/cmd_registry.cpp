#include "tools/commands.h"

namespace qforge::tools {

Command make_convert_command();
Command make_eval_command();
Command make_generate_command();
Command make_quantize_command();
Command make_compare_command();

std::vector<Command> all_commands() {
  return {make_convert_command(), make_eval_command(), make_generate_command(), make_quantize_command(), make_compare_command()};
}

}  // namespace qforge::tools
