// `dsv2 quantize`: streams a float (bf16 / f16 / f32) HuggingFace
// checkpoint, single-file or sharded, into a new checkpoint directory whose
// linear weights are stored quantized (issue 13; the layout is
// model/weights.h's, the format kernels/quant.h's; docs/quantization.md).
//
// Which weights are quantized is PlannedFormat(quantization, role): the same
// rule as load-time quantization, so loading the output gives bit for bit
// the weights `--weights` would make from the input. Every other tensor
// (norms, router, embeddings, kv_b_proj) is copied byte for byte. Fused
// expert tensors (`mlp.experts.gate_up_proj` [E, 2I, D], `down_proj`
// [E, D, I]) are written per expert. A tied lm_head (no lm_head.weight)
// that is to be quantized is written as `lm_head.weight`.
//
// The output: config.json (the input's, with a "quantization_config", see
// model/config.h), the tokenizer and generation files copied, then the
// safetensors shard(s) (CheckpointWriter: at most `max_shard_bytes` of
// tensor data per shard, the index last). One tensor is converted at a time
// (its f32 rows in blocks, its quantized form in memory); the input pages
// read are released as it goes.
#ifndef DSV2_TOOLS_DSV2_QUANTIZE_H_
#define DSV2_TOOLS_DSV2_QUANTIZE_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "model/config.h"
#include "nlohmann/json.hpp"

namespace dsv2 {

struct QuantizeOptions {
  std::string model_dir;            // input: config.json + safetensors
  std::string out_dir;              // created; must not exist or be empty
  WeightQuantization quantization;  // format must not be kNone
  uint64_t max_shard_bytes = uint64_t{4} << 30;
  // Called after each output tensor with (tensors written, of total,
  // bytes written, of total); may be empty.
  std::function<void(size_t, size_t, uint64_t, uint64_t)> progress;
};

// config.json's "quantization_config" object for `q` (model/config.h's
// spelling), as `dsv2 quantize` and `make-random-model --weights` write it.
nlohmann::ordered_json QuantizationConfigJson(const WeightQuantization& q);

// InvalidArgument for a quantized or malformed input (naming the file and
// tensor), an output directory that is not empty, or the input as output;
// an errno-derived status for I/O errors. On error the output directory may
// hold a partial checkpoint without its shards' final names or index.
absl::Status QuantizeCheckpoint(const QuantizeOptions& options);

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_QUANTIZE_H_
