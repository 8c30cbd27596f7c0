#include "tools/dsv2/random_model.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/data_dir.h"
#include "base/status_macros.h"
#include "kernels/quant.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"
#include "tools/dsv2/quantize.h"

namespace dsv2 {
namespace {

using nlohmann::json;

json PresetConfig(const std::string& preset) {
  json c = {
      {"architectures", {"DeepseekV2ForCausalLM"}},
      {"model_type", "deepseek_v2"},
      {"vocab_size", 102400},
      {"bos_token_id", 100000},
      {"eos_token_id", 100001},
      {"hidden_act", "silu"},
      {"attention_bias", false},
      {"mlp_bias", false},
      {"tie_word_embeddings", false},
      {"scoring_func", "softmax"},
      {"moe_layer_freq", 1},
      {"first_k_dense_replace", 1},
      {"norm_topk_prob", false},
      {"n_shared_experts", 2},
      {"num_experts_per_tok", 6},
      {"rope_theta", 10000.0},
      {"max_position_embeddings", 163840},
      {"rope_scaling",
       {{"type", "yarn"},
        {"factor", 40},
        {"original_max_position_embeddings", 4096},
        {"beta_fast", 32},
        {"beta_slow", 1},
        {"mscale", 0.707},
        {"mscale_all_dim", 0.707}}},
      {"rms_norm_eps", 1e-6},
      // Fields the released checkpoints' config.json also has (dsv2 does not
      // read them; other tools do, e.g. llama.cpp's converter needs
      // num_key_value_heads). Without "auto_map": we ship no remote code.
      {"attention_dropout", 0.0},
      {"aux_loss_alpha", 0.001},
      {"seq_aux", true},
      {"initializer_range", 0.02},
      {"pretraining_tp", 1},
      {"use_cache", true},
  };
  if (preset == "v2-tiny") {
    c.update({{"hidden_size", 64}, {"intermediate_size", 192}, {"moe_intermediate_size", 32},
              {"num_hidden_layers", 3}, {"num_attention_heads", 4}, {"q_lora_rank", 48},
              {"kv_lora_rank", 32}, {"qk_nope_head_dim", 16}, {"qk_rope_head_dim", 8},
              {"v_head_dim", 16}, {"n_routed_experts", 160}, {"topk_method", "group_limited_greedy"},
              {"n_group", 8}, {"topk_group", 3}, {"routed_scaling_factor", 16.0}});
  } else if (preset == "v2-lite-tiny") {
    c.update({{"hidden_size", 64}, {"intermediate_size", 192}, {"moe_intermediate_size", 32},
              {"num_hidden_layers", 3}, {"num_attention_heads", 4}, {"q_lora_rank", nullptr},
              {"kv_lora_rank", 32}, {"qk_nope_head_dim", 16}, {"qk_rope_head_dim", 8},
              {"v_head_dim", 16}, {"n_routed_experts", 64}, {"topk_method", "greedy"},
              {"n_group", 1}, {"topk_group", 1}, {"routed_scaling_factor", 1.0}});
  } else if (preset == "v2-lite") {
    c.update({{"hidden_size", 2048}, {"intermediate_size", 10944}, {"moe_intermediate_size", 1408},
              {"num_hidden_layers", 27}, {"num_attention_heads", 16}, {"q_lora_rank", nullptr},
              {"kv_lora_rank", 512}, {"qk_nope_head_dim", 128}, {"qk_rope_head_dim", 64},
              {"v_head_dim", 128}, {"n_routed_experts", 64}, {"topk_method", "greedy"},
              {"n_group", 1}, {"topk_group", 1}, {"routed_scaling_factor", 1.0}});
  } else {
    return nullptr;
  }
  // MLA has one key/value per head (released configs spell it out).
  c["num_key_value_heads"] = c["num_attention_heads"];
  return c;
}

// One random tensor: normal(mean, stddev) values, drawn in list order from
// one generator (so the values do not depend on how they are stored).
struct RandomTensor {
  std::string name;
  std::vector<int64_t> shape;
  float stddev = 1.0f;
  float mean = 0.0f;
};

absl::Status CopyFile(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::error_code ec;
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) return absl::InternalError(absl::StrCat("copy ", from.string(), ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> ShippedTokenizerDir() {
  DSV2_ASSIGN_OR_RETURN(const std::filesystem::path data, DataDir());
  const std::filesystem::path dir = data / "deepseek-v2";
  std::error_code ec;
  if (!std::filesystem::exists(dir / "tokenizer.json", ec)) {
    return absl::NotFoundError(
        absl::StrCat("no shipped tokenizer: ", (dir / "tokenizer.json").string(), " is missing"));
  }
  return dir.string();
}

absl::Status MakeRandomModel(const RandomModelOptions& o) {
  json cj = PresetConfig(o.preset);
  if (cj.is_null()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown preset '", o.preset, "' (expected v2-tiny, v2-lite-tiny or v2-lite)"));
  }
  if (o.num_layers < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--num-layers ", o.num_layers, " must be >= 0"));
  }
  if (o.num_layers > 0) cj["num_hidden_layers"] = o.num_layers;
  cj["torch_dtype"] = o.dtype == DType::kBF16 ? "bfloat16" : "float32";
  if (o.quantization.format != WeightQuantization::Format::kNone) {
    cj["quantization_config"] = json::parse(QuantizationConfigJson(o.quantization).dump());
  }
  DSV2_ASSIGN_OR_RETURN(const ModelConfig c, ParseModelConfig(cj.dump(), "preset"));
  // Found before anything is written: no half-made model without a tokenizer.
  std::filesystem::path tok(o.tokenizer_dir);
  if (o.tokenizer_dir.empty()) {
    DSV2_ASSIGN_OR_RETURN(tok, ShippedTokenizerDir());
  }

  const int64_t D = c.hidden_size, H = c.num_attention_heads, C = c.kv_lora_rank;
  const int64_t R = c.qk_rope_head_dim, nope = c.qk_nope_head_dim, vd = c.v_head_dim;
  const int64_t I = c.moe_intermediate_size, E = c.n_routed_experts, V = c.vocab_size;
  // Scaled so activations keep unit-ish variance through the layers.
  auto sd = [](int64_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(fan_in)); };
  std::vector<RandomTensor> list;
  auto add = [&](std::string name, std::vector<int64_t> shape, float stddev, float mean = 0.f) {
    list.push_back(RandomTensor{std::move(name), std::move(shape), stddev, mean});
  };
  add("model.embed_tokens.weight", {V, D}, 1.0f);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {D}, 0.05f, 1.0f);
    add(p + "post_attention_layernorm.weight", {D}, 0.05f, 1.0f);
    const std::string a = p + "self_attn.";
    if (c.q_lora_rank) {
      add(a + "q_a_proj.weight", {*c.q_lora_rank, D}, sd(D));
      add(a + "q_a_layernorm.weight", {*c.q_lora_rank}, 0.05f, 1.0f);
      add(a + "q_b_proj.weight", {H * (nope + R), *c.q_lora_rank}, sd(*c.q_lora_rank));
    } else {
      add(a + "q_proj.weight", {H * (nope + R), D}, sd(D));
    }
    add(a + "kv_a_proj_with_mqa.weight", {C + R, D}, sd(D));
    add(a + "kv_a_layernorm.weight", {C}, 0.05f, 1.0f);
    add(a + "kv_b_proj.weight", {H * (nope + vd), C}, sd(C));
    add(a + "o_proj.weight", {D, H * vd}, sd(H * vd));
    if (!c.is_moe_layer(l)) {
      add(p + "mlp.gate_proj.weight", {c.intermediate_size, D}, sd(D));
      add(p + "mlp.up_proj.weight", {c.intermediate_size, D}, sd(D));
      add(p + "mlp.down_proj.weight", {D, c.intermediate_size}, sd(c.intermediate_size));
      continue;
    }
    add(p + "mlp.gate.weight", {E, D}, sd(D));
    for (int64_t e = 0; e < E; ++e) {
      const std::string x = absl::StrCat(p, "mlp.experts.", e, ".");
      add(x + "gate_proj.weight", {I, D}, sd(D));
      add(x + "up_proj.weight", {I, D}, sd(D));
      add(x + "down_proj.weight", {D, I}, sd(I));
    }
    const int64_t S = I * c.n_shared_experts;
    add(p + "mlp.shared_experts.gate_proj.weight", {S, D}, sd(D));
    add(p + "mlp.shared_experts.up_proj.weight", {S, D}, sd(D));
    add(p + "mlp.shared_experts.down_proj.weight", {D, S}, sd(S));
  }
  add("model.norm.weight", {D}, 0.05f, 1.0f);
  add("lm_head.weight", {V, D}, sd(D));

  // How each tensor is stored: quantized (values + scales, the layout of
  // model/weights.h, as `dsv2 quantize` writes it) or in o.dtype.
  std::vector<std::optional<kernels::QuantFormat>> formats;
  std::vector<TensorSpec> specs;
  for (const RandomTensor& t : list) {
    const std::optional<LinearRole> role = LinearRoleOf(t.name);
    formats.push_back(role ? PlannedFormat(o.quantization, *role) : std::nullopt);
    if (formats.back()) {
      specs.push_back(QuantValuesSpec(t.name, *formats.back(), t.shape[0], t.shape[1]));
      specs.push_back(QuantScalesSpec(t.name, t.shape[0], t.shape[1]));
    } else {
      specs.push_back(TensorSpec{t.name, o.dtype, t.shape});
    }
  }
  uint64_t total_bytes = 0;
  for (const TensorSpec& s : specs) {
    DSV2_ASSIGN_OR_RETURN(const uint64_t b, SafetensorsFileWriter::DataBytes(s));
    total_bytes += b;
  }

  const std::filesystem::path dir(o.out_dir);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", o.out_dir, ": ", ec.message()));
  // Tensors are made and written one at a time, so memory is no limit; the
  // disk is: refuse up front what would not fit (with 1 GiB to spare).
  const std::filesystem::space_info space = std::filesystem::space(dir, ec);
  if (!ec && total_bytes + (uint64_t{1} << 30) > space.available) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "preset ", o.preset, " with ", c.num_hidden_layers, " layers needs ", total_bytes >> 20,
        " MiB of disk; ", space.available >> 20, " MiB are free in ", o.out_dir));
  }
  {
    std::ofstream f(dir / "config.json");
    f << cj.dump(2) << "\n";
    if (!f) return absl::InternalError(absl::StrCat("write ", (dir / "config.json").string()));
  }
  DSV2_RETURN_IF_ERROR(CopyFile(tok / "tokenizer.json", dir / "tokenizer.json"));
  DSV2_RETURN_IF_ERROR(CopyFile(tok / "tokenizer_config.json", dir / "tokenizer_config.json"));
  // Last, and whole or not at all (each file written aside and renamed, the
  // single model.safetensors or the index last; two processes may make the
  // same model at once): a directory with either is a finished model.
  DSV2_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> writer,
                        CheckpointWriter::Create(o.out_dir, std::move(specs), o.max_shard_bytes));
  std::mt19937_64 rng(o.seed);
  std::vector<float> v;
  std::string bytes;
  std::vector<uint16_t> scales;
  for (size_t i = 0; i < list.size(); ++i) {
    const RandomTensor& t = list[i];
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    std::normal_distribution<float> dist(t.mean, t.stddev);
    v.resize(static_cast<size_t>(n));
    for (float& x : v) x = dist(rng);
    if (const std::optional<kernels::QuantFormat> f = formats[i]) {
      const auto N = static_cast<size_t>(t.shape[0]), K = static_cast<size_t>(t.shape[1]);
      const size_t ldq = kernels::QuantRowBytes(*f, K), lds = kernels::QuantGroupsPerRow(K);
      bytes.assign(N * ldq, '\0');
      scales.assign(N * lds, 0);
      DSV2_RETURN_IF_ERROR(
          kernels::QuantizeRows(*f, v.data(), K, N, K, bytes.data(), ldq, scales.data(), lds));
      DSV2_RETURN_IF_ERROR(writer->Append(t.name, bytes));
      DSV2_RETURN_IF_ERROR(writer->Append(
          QuantScaleName(t.name),
          std::string_view(reinterpret_cast<const char*>(scales.data()), scales.size() * 2)));
    } else {
      bytes.resize(static_cast<size_t>(n) * DTypeSize(o.dtype));
      FromF32(v.data(), static_cast<size_t>(n), o.dtype, bytes.data());
      DSV2_RETURN_IF_ERROR(writer->Append(t.name, bytes));
    }
  }
  return writer->Finish();
}

}  // namespace dsv2
