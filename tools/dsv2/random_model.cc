#include "tools/dsv2/random_model.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "base/data_dir.h"
#include "base/status_macros.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

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

class RandomTensors {
 public:
  RandomTensors(uint64_t seed, DType dtype) : rng_(seed), dtype_(dtype) {}

  void Add(const std::string& name, std::vector<int64_t> shape, float stddev, float mean = 0.f) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    TensorToWrite t;
    t.name = name;
    t.dtype = dtype_;
    t.shape = std::move(shape);
    std::normal_distribution<float> dist(mean, stddev);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng_);
    t.bytes.resize(n * DTypeSize(dtype_));
    FromF32(v.data(), n, dtype_, t.bytes.data());
    tensors_.push_back(std::move(t));
  }
  const std::vector<TensorToWrite>& tensors() const { return tensors_; }

 private:
  std::mt19937_64 rng_;
  DType dtype_;
  std::vector<TensorToWrite> tensors_;
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
  DSV2_ASSIGN_OR_RETURN(const ModelConfig c, ParseModelConfig(cj.dump(), "preset"));
  // Found before anything is written: no half-made model without a tokenizer.
  std::filesystem::path tok(o.tokenizer_dir);
  if (o.tokenizer_dir.empty()) {
    DSV2_ASSIGN_OR_RETURN(tok, ShippedTokenizerDir());
  }

  const int64_t D = c.hidden_size, H = c.num_attention_heads, C = c.kv_lora_rank;
  const int64_t R = c.qk_rope_head_dim, nope = c.qk_nope_head_dim, vd = c.v_head_dim;
  const int64_t I = c.moe_intermediate_size, E = c.n_routed_experts, V = c.vocab_size;
  // The tensors are built in memory before writing: refuse what cannot fit.
  const int64_t moe_layers = c.num_hidden_layers - c.first_k_dense_replace;
  const double approx_bytes =
      static_cast<double>(DTypeSize(o.dtype)) *
      (2.0 * V * D + moe_layers * 3.0 * E * I * D + c.first_k_dense_replace * 3.0 * c.intermediate_size * D);
  constexpr double kMaxBytes = 8.0 * (1ull << 30);
  if (approx_bytes > kMaxBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "preset ", o.preset, " with ", c.num_hidden_layers, " layers is about ",
        static_cast<int64_t>(approx_bytes / (1 << 30)), " GiB; use --num-layers to stay under 8 GiB"));
  }
  // Scaled so activations keep unit-ish variance through the layers.
  auto sd = [](int64_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(fan_in)); };
  RandomTensors t(o.seed, o.dtype);
  t.Add("model.embed_tokens.weight", {V, D}, 1.0f);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    t.Add(p + "input_layernorm.weight", {D}, 0.05f, 1.0f);
    t.Add(p + "post_attention_layernorm.weight", {D}, 0.05f, 1.0f);
    const std::string a = p + "self_attn.";
    if (c.q_lora_rank) {
      t.Add(a + "q_a_proj.weight", {*c.q_lora_rank, D}, sd(D));
      t.Add(a + "q_a_layernorm.weight", {*c.q_lora_rank}, 0.05f, 1.0f);
      t.Add(a + "q_b_proj.weight", {H * (nope + R), *c.q_lora_rank}, sd(*c.q_lora_rank));
    } else {
      t.Add(a + "q_proj.weight", {H * (nope + R), D}, sd(D));
    }
    t.Add(a + "kv_a_proj_with_mqa.weight", {C + R, D}, sd(D));
    t.Add(a + "kv_a_layernorm.weight", {C}, 0.05f, 1.0f);
    t.Add(a + "kv_b_proj.weight", {H * (nope + vd), C}, sd(C));
    t.Add(a + "o_proj.weight", {D, H * vd}, sd(H * vd));
    if (!c.is_moe_layer(l)) {
      t.Add(p + "mlp.gate_proj.weight", {c.intermediate_size, D}, sd(D));
      t.Add(p + "mlp.up_proj.weight", {c.intermediate_size, D}, sd(D));
      t.Add(p + "mlp.down_proj.weight", {D, c.intermediate_size}, sd(c.intermediate_size));
      continue;
    }
    t.Add(p + "mlp.gate.weight", {E, D}, sd(D));
    for (int64_t e = 0; e < E; ++e) {
      const std::string x = absl::StrCat(p, "mlp.experts.", e, ".");
      t.Add(x + "gate_proj.weight", {I, D}, sd(D));
      t.Add(x + "up_proj.weight", {I, D}, sd(D));
      t.Add(x + "down_proj.weight", {D, I}, sd(I));
    }
    const int64_t S = I * c.n_shared_experts;
    t.Add(p + "mlp.shared_experts.gate_proj.weight", {S, D}, sd(D));
    t.Add(p + "mlp.shared_experts.up_proj.weight", {S, D}, sd(D));
    t.Add(p + "mlp.shared_experts.down_proj.weight", {D, S}, sd(S));
  }
  t.Add("model.norm.weight", {D}, 0.05f, 1.0f);
  t.Add("lm_head.weight", {V, D}, sd(D));

  const std::filesystem::path dir(o.out_dir);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", o.out_dir, ": ", ec.message()));
  {
    std::ofstream f(dir / "config.json");
    f << cj.dump(2) << "\n";
    if (!f) return absl::InternalError(absl::StrCat("write ", (dir / "config.json").string()));
  }
  DSV2_RETURN_IF_ERROR(CopyFile(tok / "tokenizer.json", dir / "tokenizer.json"));
  DSV2_RETURN_IF_ERROR(CopyFile(tok / "tokenizer_config.json", dir / "tokenizer_config.json"));
  // Last, and whole or not at all (written aside, then renamed; two
  // processes may make the same default model at once): `dsv2 up` takes a
  // directory with model.safetensors as a finished default model.
  const std::filesystem::path tmp = dir / absl::StrCat("model.safetensors.tmp.", getpid());
  DSV2_RETURN_IF_ERROR(WriteSafetensors(tmp.string(), t.tensors()));
  std::filesystem::rename(tmp, dir / "model.safetensors", ec);
  if (ec) return absl::InternalError(absl::StrCat("rename ", tmp.string(), ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace dsv2
