// `dsv2 eval-kld`: KL divergence of a quantized model from the model as
// stored (tools/dsv2/eval_kld.h; docs/numerics.md).
#ifndef DSV2_TOOLS_DSV2_EVAL_KLD_COMMAND_H_
#define DSV2_TOOLS_DSV2_EVAL_KLD_COMMAND_H_

namespace dsv2 {

// argv[1] == "eval-kld". Returns the exit code (0 ok, 2 usage error, 1 any
// other error).
int EvalKldCommandMain(int argc, char** argv);

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_EVAL_KLD_COMMAND_H_
