// `dsv2 make-random-model`: writes a small random checkpoint (contract in
// docs/models.md).
#ifndef DSV2_TOOLS_DSV2_MAKE_RANDOM_MODEL_COMMAND_H_
#define DSV2_TOOLS_DSV2_MAKE_RANDOM_MODEL_COMMAND_H_

namespace dsv2 {

// argv[1] == "make-random-model". Returns the exit code (0 ok, 2 usage or
// invalid options, 1 error).
int MakeRandomModelMain(int argc, char** argv);

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_MAKE_RANDOM_MODEL_COMMAND_H_
