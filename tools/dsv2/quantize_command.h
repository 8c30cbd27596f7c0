// `dsv2 quantize`: writes a quantized copy of a float checkpoint
// (tools/dsv2/quantize.h; docs/quantization.md).
#ifndef DSV2_TOOLS_DSV2_QUANTIZE_COMMAND_H_
#define DSV2_TOOLS_DSV2_QUANTIZE_COMMAND_H_

namespace dsv2 {

// argv[1] == "quantize". Returns the exit code (0 ok, 2 usage or invalid
// input, 1 any other error).
int QuantizeCommandMain(int argc, char** argv);

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_QUANTIZE_COMMAND_H_
