// `dsv2 run`: single-process generation (contract in docs/running.md, "dsv2 run").
#ifndef DSV2_TOOLS_DSV2_RUN_COMMAND_H_
#define DSV2_TOOLS_DSV2_RUN_COMMAND_H_

namespace dsv2 {

// argv[1] == "run". Returns the process exit code (0 ok, 2 usage, 1 error).
int RunCommandMain(int argc, char** argv);

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_RUN_COMMAND_H_
