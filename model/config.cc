#include "model/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "base/fingerprint.h"
#include "base/status_macros.h"
#include "kernels/ops.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using nlohmann::json;

// Field access with errors naming the field. A JSON null counts as absent.
class ConfigReader {
 public:
  ConfigReader(const json& j, absl::string_view source) : j_(j), source_(source) {}

  bool Has(const json& obj, const char* key) const {
    return obj.contains(key) && !obj.at(key).is_null();
  }
  absl::Status Error(absl::string_view field, const json& value, absl::string_view why) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": ", field, " = ", value.dump(), " ", why));
  }
  absl::Status Missing(absl::string_view field) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": missing required field ", field));
  }

  absl::StatusOr<int64_t> Int(const json& obj, const char* key, absl::string_view field,
                              std::optional<int64_t> dflt, int64_t min_value) const {
    if (!Has(obj, key)) {
      if (dflt) return *dflt;
      return Missing(field);
    }
    const json& v = obj.at(key);
    if (!v.is_number_integer()) return Error(field, v, "is not an integer");
    const int64_t x = v.get<int64_t>();
    if (x < min_value) return Error(field, v, absl::StrCat("is below the minimum ", min_value));
    return x;
  }
  absl::StatusOr<double> Num(const json& obj, const char* key, absl::string_view field,
                             std::optional<double> dflt) const {
    if (!Has(obj, key)) {
      if (dflt) return *dflt;
      return Missing(field);
    }
    const json& v = obj.at(key);
    if (!v.is_number()) return Error(field, v, "is not a number");
    return v.get<double>();
  }
  absl::StatusOr<bool> Bool(const json& obj, const char* key, bool dflt) const {
    if (!Has(obj, key)) return dflt;
    const json& v = obj.at(key);
    if (!v.is_boolean()) return Error(key, v, "is not a boolean");
    return v.get<bool>();
  }
  absl::StatusOr<std::string> Str(const json& obj, const char* key, absl::string_view dflt) const {
    if (!Has(obj, key)) return std::string(dflt);
    const json& v = obj.at(key);
    if (!v.is_string()) return Error(key, v, "is not a string");
    return v.get<std::string>();
  }

  const json& root() const { return j_; }

 private:
  const json& j_;
  absl::string_view source_;
};

// config.json's "quantization_config" (config.h): only dsv2's own format.
absl::StatusOr<WeightQuantization> ParseStoredQuantization(const ConfigReader& r) {
  const json& q = r.root().at("quantization_config");
  if (!q.is_object()) return r.Error("quantization_config", q, "is not an object");
  const json none;
  auto field = [&](const char* key) -> const json& { return q.contains(key) ? q.at(key) : none; };
  std::string method;
  DSV2_ASSIGN_OR_RETURN(method, r.Str(q, "quant_method", ""));
  if (method != "dsv2") {
    return r.Error("quantization_config.quant_method", field("quant_method"),
                   "is not supported (dsv2 reads its own int8/int4 format, written by "
                   "`dsv2 quantize`; quantize the float checkpoint with it)");
  }
  WeightQuantization out;
  std::string format;
  DSV2_ASSIGN_OR_RETURN(format, r.Str(q, "format", ""));
  if (format == "int8") {
    out.format = WeightQuantization::Format::kInt8;
  } else if (format == "int4") {
    out.format = WeightQuantization::Format::kInt4;
  } else {
    return r.Error("quantization_config.format", field("format"), "is not int8 or int4");
  }
  int64_t group_size;
  DSV2_ASSIGN_OR_RETURN(group_size,
                        r.Int(q, "group_size", "quantization_config.group_size", std::nullopt, 1));
  if (group_size != 32) {
    return r.Error("quantization_config.group_size", field("group_size"), "must be 32");
  }
  std::string scale_dtype;
  DSV2_ASSIGN_OR_RETURN(scale_dtype, r.Str(q, "scale_dtype", ""));
  if (scale_dtype != "float16") {
    return r.Error("quantization_config.scale_dtype", field("scale_dtype"), "must be float16");
  }
  DSV2_ASSIGN_OR_RETURN(out.experts_only, r.Bool(q, "experts_only", false));
  std::string lm_head;
  DSV2_ASSIGN_OR_RETURN(lm_head, r.Str(q, "lm_head", ""));
  if (lm_head == "unquantized") {
    out.lm_head_bf16 = true;
  } else if (lm_head != "int8") {
    return r.Error("quantization_config.lm_head", field("lm_head"), "is not int8 or unquantized");
  }
  return out;
}

absl::StatusOr<RopeConfig> ParseRope(const ConfigReader& r) {
  const json& j = r.root();
  RopeConfig rope;
  // transformers 5.x: rope_parameters; DeepSeek: rope_scaling + rope_theta.
  const json* params = nullptr;
  std::string where;
  if (r.Has(j, "rope_parameters")) {
    params = &j.at("rope_parameters");
    where = "rope_parameters";
  } else if (r.Has(j, "rope_scaling")) {
    params = &j.at("rope_scaling");
    where = "rope_scaling";
  }
  if (params != nullptr && !params->is_object()) {
    return r.Error(where, *params, "is not an object");
  }
  DSV2_ASSIGN_OR_RETURN(rope.theta, r.Num(j, "rope_theta", "rope_theta", 10000.0));
  if (params != nullptr && r.Has(*params, "rope_theta")) {
    DSV2_ASSIGN_OR_RETURN(rope.theta, r.Num(*params, "rope_theta", where + ".rope_theta", std::nullopt));
  }
  if (!(rope.theta > 0)) return r.Error("rope_theta", rope.theta, "must be positive");
  std::string type = "default";
  if (params != nullptr) {
    if (r.Has(*params, "rope_type")) {
      DSV2_ASSIGN_OR_RETURN(type, r.Str(*params, "rope_type", "default"));
    } else if (r.Has(*params, "type")) {
      DSV2_ASSIGN_OR_RETURN(type, r.Str(*params, "type", "default"));
    }
  }
  if (type == "default") {
    rope.type = RopeConfig::Type::kDefault;
    return rope;
  }
  if (type != "yarn") {
    return r.Error(where + ".rope_type", type, "is not supported (expected yarn or default)");
  }
  rope.type = RopeConfig::Type::kYarn;
  const json& p = *params;
  DSV2_ASSIGN_OR_RETURN(rope.factor, r.Num(p, "factor", where + ".factor", std::nullopt));
  if (!(rope.factor > 0)) return r.Error(where + ".factor", rope.factor, "must be positive");
  if (!r.Has(p, "original_max_position_embeddings")) {
    return r.Missing(where + ".original_max_position_embeddings (required by yarn)");
  }
  DSV2_ASSIGN_OR_RETURN(rope.original_max_position_embeddings,
              r.Int(p, "original_max_position_embeddings",
                    where + ".original_max_position_embeddings", std::nullopt, 1));
  DSV2_ASSIGN_OR_RETURN(rope.beta_fast, r.Num(p, "beta_fast", where + ".beta_fast", 32.0));
  DSV2_ASSIGN_OR_RETURN(rope.beta_slow, r.Num(p, "beta_slow", where + ".beta_slow", 1.0));
  // transformers treats 0 like absent ("or 32").
  if (rope.beta_fast == 0) rope.beta_fast = 32.0;
  if (rope.beta_slow == 0) rope.beta_slow = 1.0;
  DSV2_ASSIGN_OR_RETURN(rope.mscale, r.Num(p, "mscale", where + ".mscale", 0.0));
  DSV2_ASSIGN_OR_RETURN(rope.mscale_all_dim, r.Num(p, "mscale_all_dim", where + ".mscale_all_dim", 0.0));
  if (r.Has(p, "attention_factor")) {
    double a;
    DSV2_ASSIGN_OR_RETURN(a, r.Num(p, "attention_factor", where + ".attention_factor", std::nullopt));
    rope.attention_factor = a;
  }
  DSV2_ASSIGN_OR_RETURN(rope.truncate, r.Bool(p, "truncate", true));
  return rope;
}

}  // namespace

double ModelConfig::softmax_scale() const {
  double s = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (rope.type == RopeConfig::Type::kYarn && rope.mscale_all_dim != 0.0) {
    const double m = kernels::YarnMscale(rope.factor, rope.mscale_all_dim);
    s *= m * m;
  }
  return s;
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source) {
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": top level is not a JSON object"));
  }
  ConfigReader r(j, source);
  ModelConfig c;
  DSV2_ASSIGN_OR_RETURN(c.vocab_size, r.Int(j, "vocab_size", "vocab_size", std::nullopt, 1));
  DSV2_ASSIGN_OR_RETURN(c.hidden_size, r.Int(j, "hidden_size", "hidden_size", std::nullopt, 1));
  DSV2_ASSIGN_OR_RETURN(c.intermediate_size,
              r.Int(j, "intermediate_size", "intermediate_size", std::nullopt, 1));
  DSV2_ASSIGN_OR_RETURN(c.moe_intermediate_size,
              r.Int(j, "moe_intermediate_size", "moe_intermediate_size", std::nullopt, 1));
  DSV2_ASSIGN_OR_RETURN(c.num_hidden_layers,
              r.Int(j, "num_hidden_layers", "num_hidden_layers", std::nullopt, 1));
  DSV2_ASSIGN_OR_RETURN(c.num_attention_heads,
              r.Int(j, "num_attention_heads", "num_attention_heads", std::nullopt, 1));
  if (r.Has(j, "q_lora_rank")) {
    int64_t q;
    DSV2_ASSIGN_OR_RETURN(q, r.Int(j, "q_lora_rank", "q_lora_rank", std::nullopt, 1));
    c.q_lora_rank = q;
  }
  DSV2_ASSIGN_OR_RETURN(c.kv_lora_rank, r.Int(j, "kv_lora_rank", "kv_lora_rank", std::nullopt, 1));
  DSV2_ASSIGN_OR_RETURN(c.qk_nope_head_dim,
              r.Int(j, "qk_nope_head_dim", "qk_nope_head_dim", std::nullopt, 1));
  DSV2_ASSIGN_OR_RETURN(c.qk_rope_head_dim,
              r.Int(j, "qk_rope_head_dim", "qk_rope_head_dim", std::nullopt, 2));
  if (c.qk_rope_head_dim % 2 != 0) {
    return r.Error("qk_rope_head_dim", c.qk_rope_head_dim, "must be even (rotary pairs)");
  }
  DSV2_ASSIGN_OR_RETURN(c.v_head_dim, r.Int(j, "v_head_dim", "v_head_dim", std::nullopt, 1));
  DSV2_ASSIGN_OR_RETURN(c.n_routed_experts,
              r.Int(j, "n_routed_experts", "n_routed_experts", std::nullopt, 1));
  DSV2_ASSIGN_OR_RETURN(c.n_shared_experts, r.Int(j, "n_shared_experts", "n_shared_experts", 0, 0));
  DSV2_ASSIGN_OR_RETURN(c.num_experts_per_tok,
              r.Int(j, "num_experts_per_tok", "num_experts_per_tok", std::nullopt, 1));
  if (c.num_experts_per_tok > c.n_routed_experts) {
    return r.Error("num_experts_per_tok", c.num_experts_per_tok,
                   absl::StrCat("exceeds n_routed_experts = ", c.n_routed_experts));
  }
  std::string topk_method;
  DSV2_ASSIGN_OR_RETURN(topk_method, r.Str(j, "topk_method", "greedy"));
  if (topk_method == "greedy") {
    c.topk_method = TopkMethod::kGreedy;
  } else if (topk_method == "group_limited_greedy") {
    c.topk_method = TopkMethod::kGroupLimitedGreedy;
  } else {
    return r.Error("topk_method", topk_method,
                   "is not supported (expected greedy or group_limited_greedy)");
  }
  if (c.topk_method == TopkMethod::kGroupLimitedGreedy) {
    DSV2_ASSIGN_OR_RETURN(c.n_group, r.Int(j, "n_group", "n_group", std::nullopt, 1));
    DSV2_ASSIGN_OR_RETURN(c.topk_group, r.Int(j, "topk_group", "topk_group", std::nullopt, 1));
    if (c.n_routed_experts % c.n_group != 0) {
      return r.Error("n_group", c.n_group,
                     absl::StrCat("does not divide n_routed_experts = ", c.n_routed_experts));
    }
    if (c.topk_group > c.n_group) {
      return r.Error("topk_group", c.topk_group, absl::StrCat("exceeds n_group = ", c.n_group));
    }
    if (c.num_experts_per_tok > c.topk_group * c.experts_per_group()) {
      return r.Error("num_experts_per_tok", c.num_experts_per_tok,
                     absl::StrCat("exceeds the experts in topk_group groups (",
                                  c.topk_group * c.experts_per_group(), ")"));
    }
  } else {
    // Greedy routing ignores groups; placement treats the experts as one group.
    c.n_group = 1;
    c.topk_group = 1;
  }
  DSV2_ASSIGN_OR_RETURN(c.routed_scaling_factor,
              r.Num(j, "routed_scaling_factor", "routed_scaling_factor", 1.0));
  DSV2_ASSIGN_OR_RETURN(c.norm_topk_prob, r.Bool(j, "norm_topk_prob", false));
  DSV2_ASSIGN_OR_RETURN(c.first_k_dense_replace,
              r.Int(j, "first_k_dense_replace", "first_k_dense_replace", 0, 0));
  DSV2_ASSIGN_OR_RETURN(c.rms_norm_eps, r.Num(j, "rms_norm_eps", "rms_norm_eps", 1e-6));
  if (!(c.rms_norm_eps > 0)) return r.Error("rms_norm_eps", c.rms_norm_eps, "must be positive");
  DSV2_ASSIGN_OR_RETURN(c.max_position_embeddings,
              r.Int(j, "max_position_embeddings", "max_position_embeddings", std::nullopt, 1));
  // Positions index int32 arrays and size caches: 2^31 bounds every product.
  if (c.max_position_embeddings > (int64_t{1} << 31)) {
    return r.Error("max_position_embeddings", c.max_position_embeddings, "exceeds 2^31");
  }
  DSV2_ASSIGN_OR_RETURN(c.tie_word_embeddings, r.Bool(j, "tie_word_embeddings", false));

  std::string scoring_func;
  DSV2_ASSIGN_OR_RETURN(scoring_func, r.Str(j, "scoring_func", "softmax"));
  if (scoring_func != "softmax") {
    return r.Error("scoring_func", scoring_func, "is not supported (expected softmax)");
  }
  int64_t moe_layer_freq;
  DSV2_ASSIGN_OR_RETURN(moe_layer_freq, r.Int(j, "moe_layer_freq", "moe_layer_freq", 1, 0));
  if (moe_layer_freq != 1) return r.Error("moe_layer_freq", moe_layer_freq, "must be 1");
  std::string hidden_act;
  DSV2_ASSIGN_OR_RETURN(hidden_act, r.Str(j, "hidden_act", "silu"));
  if (hidden_act != "silu") return r.Error("hidden_act", hidden_act, "must be silu");
  for (const char* flag : {"attention_bias", "mlp_bias"}) {
    bool v;
    DSV2_ASSIGN_OR_RETURN(v, r.Bool(j, flag, false));
    if (v) return r.Error(flag, v, "is not supported (must be false)");
  }
  if (r.Has(j, "bos_token_id")) {
    int64_t b;
    DSV2_ASSIGN_OR_RETURN(b, r.Int(j, "bos_token_id", "bos_token_id", std::nullopt, 0));
    c.bos_token_id = b;
  }
  if (r.Has(j, "eos_token_id")) {
    const json& e = j.at("eos_token_id");
    if (e.is_array()) {
      for (const json& x : e) {
        if (!x.is_number_integer() || x.get<int64_t>() < 0) {
          return r.Error("eos_token_id", e, "is not a list of token ids");
        }
        c.eos_token_ids.push_back(x.get<int64_t>());
      }
    } else {
      int64_t eos;
      DSV2_ASSIGN_OR_RETURN(eos, r.Int(j, "eos_token_id", "eos_token_id", std::nullopt, 0));
      c.eos_token_ids.push_back(eos);
    }
  }
  DSV2_ASSIGN_OR_RETURN(c.rope, ParseRope(r));
  if (r.Has(j, "quantization_config")) {
    DSV2_ASSIGN_OR_RETURN(c.stored_quantization, ParseStoredQuantization(r));
  }
  {
    json canonical = j;
    for (auto it = canonical.begin(); it != canonical.end();) {
      const std::string& key = it.key();
      const bool bookkeeping = key.starts_with("_") || key == "transformers_version" ||
                               key == "torch_dtype" || key == "dtype" || key == "architectures" ||
                               key == "auto_map" || key == "use_cache";
      it = bookkeeping ? canonical.erase(it) : std::next(it);
    }
    Fnv1a64 h;
    h.Add(canonical.dump());
    c.fingerprint = h.Hex();
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseModelConfig(ss.str(), path);
}

}  // namespace dsv2
