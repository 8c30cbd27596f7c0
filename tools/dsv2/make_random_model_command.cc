#include "tools/dsv2/make_random_model_command.h"

#include <iostream>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/flags.h"
#include "base/version.h"
#include "model/weight_flags.h"
#include "model/weights.h"
#include "tools/dsv2/random_model.h"

namespace dsv2 {

int MakeRandomModelMain(int argc, char** argv) {
  RandomModelOptions o;
  o.preset = "v2-tiny";
  std::string dtype = "bf16";
  std::optional<std::string> tokenizer_dir;
  flags::FlagSet flags("dsv2 make-random-model", std::string(VersionString()));
  flags.String("out", &o.out_dir, "output directory").Required();
  flags.Enum("preset", &o.preset, {"v2-tiny", "v2-lite-tiny", "v2-lite"},
             "model shape (v2-lite: real V2-Lite dimensions)");
  flags.Int("seed", &o.seed, "random seed");
  flags.Int("num-layers", &o.num_layers, "override the preset's layer count (0 = the preset's)")
      .Min(0);
  flags.Enum("dtype", &dtype, {"bf16", "f32"}, "weight dtype");
  flags.String("tokenizer-dir", &tokenizer_dir, "tokenizer to copy")
      .DefaultText("the shipped one, in dsv2's data directory");
  WeightFlags weight_flags;
  DefineWeightFlags(
      flags, "store the linear weights quantized, as `dsv2 quantize` would: none, int8 or int4",
      "in --dtype", &weight_flags);
  double max_shard_gb = 4.0;
  flags.Double("max-shard-gb", &max_shard_gb, "tensor data per safetensors shard, in GB (1e9)")
      .Min(0.001);
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv, 2)) return *exit_code;
  absl::StatusOr<WeightQuantization> q = WeightQuantizationFromFlags(weight_flags);
  if (!q.ok()) return flags.UsageError(std::string(q.status().message()));
  o.quantization = *q;
  o.max_shard_bytes = static_cast<uint64_t>(max_shard_gb * 1e9);
  o.dtype = dtype == "bf16" ? DType::kBF16 : DType::kF32;
  o.tokenizer_dir = tokenizer_dir.value_or("");  // "": the shipped one
  const absl::Status st = MakeRandomModel(o);
  if (!st.ok()) {
    std::cerr << "dsv2 make-random-model: " << st.message() << "\n";
    return st.code() == absl::StatusCode::kInvalidArgument ||
                   st.code() == absl::StatusCode::kResourceExhausted
               ? 2
               : 1;
  }
  std::cerr << "wrote random " << o.preset << " model to " << o.out_dir
            << " (random weights: generated text is noise)\n";
  return 0;
}

}  // namespace dsv2
