// The model configuration (config.json), validated. MODEL_SPEC.md section 1.
//
// Both spellings are accepted: DeepSeek's released config (top-level
// rope_theta + rope_scaling {type|rope_type, ...}, scoring_func,
// moe_layer_freq) and transformers 5.x save_pretrained (rope_parameters
// {rope_type, rope_theta, ...}, no scoring_func / moe_layer_freq).
// Anything we cannot serve is rejected with InvalidArgument naming the field
// and its value, e.g. "config.json: topk_method = \"noaux_tc\" is not
// supported (expected greedy or group_limited_greedy)".
//
// Immutable value type; safe to share.
#ifndef DSV2_MODEL_CONFIG_H_
#define DSV2_MODEL_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dsv2 {

enum class TopkMethod { kGreedy, kGroupLimitedGreedy };

struct RopeConfig {
  enum class Type { kDefault, kYarn };
  Type type = Type::kDefault;
  double theta = 10000.0;
  // YaRN only.
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;          // 0 = absent
  double mscale_all_dim = 0.0;  // 0 = absent
  std::optional<double> attention_factor;
  bool truncate = true;
};

// Which linear weights are quantized, and to what (issue 13;
// docs/quantization.md). Used twice: as the load-time request (`--weights`,
// `--experts-only`, `--lm-head-bf16`) and as what a checkpoint stores, from
// config.json's "quantization_config" (written by `dsv2 quantize`).
// kNone: every weight as stored. Otherwise attention projections (not
// kv_b_proj), the dense FFN and the shared and routed experts are in
// `format`; lm_head in int8 (whatever the format) unless lm_head_bf16;
// experts_only keeps all but the shared and routed experts as stored.
// Norms, the router and the embeddings always stay as stored.
struct WeightQuantization {
  enum class Format : uint8_t { kNone, kInt8, kInt4 };
  Format format = Format::kNone;
  bool experts_only = false;
  bool lm_head_bf16 = false;  // keep lm_head as stored
  // How the quantized weights compute (a run-time choice, never stored):
  // true = int8 activations, the integer dot product
  // (kernels::QuantActivations::kInt8, the default: 2-4x less compute);
  // false = f32 activations, an f32 GEMM over the dequantized weights.
  bool int8_activations = true;
  bool operator==(const WeightQuantization&) const = default;
};

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;              // D
  int64_t intermediate_size = 0;        // dense FFN
  int64_t moe_intermediate_size = 0;    // I
  int64_t num_hidden_layers = 0;        // L
  int64_t num_attention_heads = 0;      // H
  std::optional<int64_t> q_lora_rank;   // null = plain q_proj
  int64_t kv_lora_rank = 0;             // C
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;         // R
  int64_t v_head_dim = 0;
  int64_t n_routed_experts = 0;         // E
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;      // K
  TopkMethod topk_method = TopkMethod::kGreedy;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = false;
  int64_t first_k_dense_replace = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  int64_t max_position_embeddings = 0;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;   // may be empty
  bool tie_word_embeddings = false;
  // config.json "quantization_config" = {"quant_method": "dsv2", "format":
  // "int8" | "int4", "group_size": 32, "scale_dtype": "float16",
  // "experts_only": bool, "lm_head": "int8" | "unquantized"}: the checkpoint
  // stores the linear weights this names quantized (weights.h says how
  // they are laid out). nullopt: a float checkpoint.
  std::optional<WeightQuantization> stored_quantization;

  // Derived.
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Per token and layer: C + R values (576 for the released models).
  int64_t latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const { return layer >= first_k_dense_replace; }
  int64_t experts_per_group() const { return n_routed_experts / n_group; }
  // softmax_scale of MODEL_SPEC section 4 (qk_head_dim^-0.5 x mscale^2).
  double softmax_scale() const;

  // 16 hex digits identifying the model's configuration (base/fingerprint.h):
  // config.json's content as parsed (keys sorted, numbers as parsed: layout
  // and spelling do not count) less bookkeeping keys that do not change the
  // model (names starting with '_', transformers_version, torch_dtype,
  // dtype, architectures, auto_map, use_cache). Cluster members compare it.
  std::string fingerprint;
};

// Parses and validates config.json text. `source` names the file in errors.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source = "config.json");
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

}  // namespace dsv2

#endif  // DSV2_MODEL_CONFIG_H_
