// `dsv2 make-random-model`: writes a random checkpoint in the HuggingFace
// layout (config.json in DeepSeek's spelling, model.safetensors or shards +
// index with per-expert tensor names, the shipped DeepSeek-V2 tokenizer),
// one tensor at a time (so any size the disk holds), in bf16/f32 or with
// its linear weights stored int8/int4. Its
// weights are random, so generated text is noise; it exists so the product
// runs and is tested without downloading a model.
#ifndef DSV2_TOOLS_DSV2_RANDOM_MODEL_H_
#define DSV2_TOOLS_DSV2_RANDOM_MODEL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"
#include "model/config.h"

namespace dsv2 {

struct RandomModelOptions {
  std::string out_dir;
  // v2-tiny: V2-shaped (q_lora, 160 experts in 8 groups, top-6 within 3
  // groups, scaling 16, yarn); v2-lite-tiny: V2-Lite-shaped (no q_lora, 64
  // experts, greedy); v2-lite: V2-Lite's real dimensions (for benchmarks).
  std::string preset = "v2-tiny";
  uint64_t seed = 0;
  int64_t num_layers = 0;  // 0 = the preset's
  DType dtype = DType::kBF16;
  // Directory holding tokenizer.json / tokenizer_config.json to copy; ""
  // = the shipped one (ShippedTokenizerDir()).
  std::string tokenizer_dir;
  // Linear weights stored quantized as `dsv2 quantize` writes them (the
  // values are the same random draws; issue 13); kNone = all in `dtype`.
  WeightQuantization quantization;
  // Tensor data per safetensors shard (CheckpointWriter).
  uint64_t max_shard_bytes = uint64_t{4} << 30;
};

absl::Status MakeRandomModel(const RandomModelOptions& options);

// The DeepSeek-V2 tokenizer dsv2 ships: <data dir>/deepseek-v2 (the
// source's model/data/deepseek-v2; base/data_dir.h says where the data
// directory is found). NotFound when it is not there.
absl::StatusOr<std::string> ShippedTokenizerDir();

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_RANDOM_MODEL_H_
