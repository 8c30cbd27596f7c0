// `dsv2 generate`: one Generate call on a dsv2.v1.Inference endpoint,
// streaming the text as it arrives (contract in README.md, "dsv2 up and
// dsv2 generate").
#ifndef DSV2_TOOLS_DSV2_GENERATE_COMMAND_H_
#define DSV2_TOOLS_DSV2_GENERATE_COMMAND_H_

namespace dsv2 {

// argv[1] == "generate". Returns the process exit code: 0 ok, 2 usage
// error, 1 an RPC error ("dsv2 generate: CODE_NAME: message" on stderr),
// 128 + signal when SIGINT/SIGTERM cancelled the call.
int GenerateCommandMain(int argc, char** argv);

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_GENERATE_COMMAND_H_
