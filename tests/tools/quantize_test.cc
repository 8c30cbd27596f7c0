// `dsv2 quantize` and quantized checkpoints (issue 13), at the library
// level: QuantizeCheckpoint writes a checkpoint whose loaded weights are
// byte for byte what load-time quantization makes of the input (every
// layout and flag combination), loading validates every quantized tensor
// pair against the config and names the file and tensor, and
// make-random-model writes the same layout directly.
#include "tools/dsv2/quantize.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/quant.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"
#include "tests/common/conformance_checkpoint.h"
#include "tools/dsv2/eval_kld.h"
#include "tools/dsv2/random_model.h"

namespace dsv2 {
namespace {

namespace fs = std::filesystem;
using Format = WeightQuantization::Format;

std::string Temp(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/dsv2_quantize_test_" + name;
  fs::remove_all(dir);
  return dir;
}

// Same form and bytes: both float (same rows as f32) or both quantized
// (same format, values and scales row by row).
void ExpectSameMatrix(const WeightMatrix& a, const WeightMatrix& b, const std::string& what) {
  ASSERT_EQ(a.rows, b.rows) << what;
  ASSERT_EQ(a.cols, b.cols) << what;
  ASSERT_EQ(a.quant.has_value(), b.quant.has_value()) << what;
  const auto K = static_cast<size_t>(a.cols);
  if (a.quant) {
    ASSERT_EQ(a.quant->format, b.quant->format) << what;
    const size_t row_bytes = kernels::QuantRowBytes(a.quant->format, K);
    const size_t groups = kernels::QuantGroupsPerRow(K);
    for (int64_t r = 0; r < a.rows; ++r) {
      const auto* qa = static_cast<const uint8_t*>(a.quant->q) + r * a.quant->ldq;
      const auto* qb = static_cast<const uint8_t*>(b.quant->q) + r * b.quant->ldq;
      ASSERT_EQ(std::memcmp(qa, qb, row_bytes), 0) << what << " row " << r;
      ASSERT_EQ(std::memcmp(a.quant->scales + r * a.quant->lds, b.quant->scales + r * b.quant->lds,
                            groups * 2),
                0)
          << what << " scales of row " << r;
    }
    return;
  }
  std::vector<float> ra(K), rb(K);
  for (int64_t r = 0; r < a.rows; ++r) {
    a.RowToF32(r, ra.data());
    b.RowToF32(r, rb.data());
    ASSERT_EQ(ra, rb) << what << " row " << r;
  }
}

struct Loaded {
  ModelConfig config;
  std::unique_ptr<Checkpoint> ckpt;
  std::unique_ptr<NonExpertWeights> weights;
  std::unique_ptr<ExpertWeightSet> experts;
};

absl::StatusOr<Loaded> Load(const std::string& dir, const WeightQuantization& q = {}) {
  Loaded l;
  auto config = LoadModelConfig(dir + "/config.json");
  if (!config.ok()) return config.status();
  l.config = *config;
  auto ckpt = Checkpoint::OpenDir(dir);
  if (!ckpt.ok()) return ckpt.status();
  l.ckpt = std::move(*ckpt);
  auto w = NonExpertWeights::Load(l.config, *l.ckpt, std::nullopt, q);
  if (!w.ok()) return w.status();
  l.weights = std::move(*w);
  std::vector<int32_t> all;
  for (int32_t e = 0; e < l.config.n_routed_experts; ++e) all.push_back(e);
  auto x = ExpertWeightSet::Load(l.config, *l.ckpt, ExpertWeightSet::AllLayers(l.config, all), q);
  if (!x.ok()) return x.status();
  l.experts = std::move(*x);
  return l;
}

// Every weight the forward uses, compared.
void ExpectSameWeights(const Loaded& a, const Loaded& b) {
  const ModelConfig& c = a.config;
  ExpectSameMatrix(a.weights->embed(), b.weights->embed(), "embed");
  ExpectSameMatrix(a.weights->lm_head(), b.weights->lm_head(), "lm_head");
  EXPECT_EQ(a.weights->final_norm(), b.weights->final_norm());
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& x = a.weights->layer(l);
    const LayerWeights& y = b.weights->layer(l);
    const std::string p = absl::StrCat("layer ", l, " ");
    EXPECT_EQ(x.input_norm, y.input_norm) << p;
    EXPECT_EQ(x.attn.kv_a_norm, y.attn.kv_a_norm) << p;
    if (c.q_lora_rank) {
      ExpectSameMatrix(x.attn.q_a_proj, y.attn.q_a_proj, p + "q_a_proj");
      ExpectSameMatrix(x.attn.q_b_proj, y.attn.q_b_proj, p + "q_b_proj");
    } else {
      ExpectSameMatrix(*x.attn.q_proj, *y.attn.q_proj, p + "q_proj");
    }
    ExpectSameMatrix(x.attn.kv_a_proj, y.attn.kv_a_proj, p + "kv_a_proj");
    ExpectSameMatrix(x.attn.kv_b_proj, y.attn.kv_b_proj, p + "kv_b_proj");
    ExpectSameMatrix(x.attn.o_proj, y.attn.o_proj, p + "o_proj");
    if (!x.is_moe) {
      ExpectSameMatrix(x.dense.gate, y.dense.gate, p + "dense gate");
      ExpectSameMatrix(x.dense.down, y.dense.down, p + "dense down");
      continue;
    }
    ExpectSameMatrix(x.router, y.router, p + "router");
    ExpectSameMatrix(x.shared.up, y.shared.up, p + "shared up");
    ExpectSameMatrix(x.shared.down, y.shared.down, p + "shared down");
    for (int32_t e = 0; e < c.n_routed_experts; ++e) {
      const ExpertWeights* ex = a.experts->Find(static_cast<int32_t>(l), e);
      const ExpertWeights* ey = b.experts->Find(static_cast<int32_t>(l), e);
      ASSERT_TRUE(ex != nullptr && ey != nullptr);
      ExpectSameMatrix(ex->gate, ey->gate, absl::StrCat(p, "expert ", e, " gate"));
      ExpectSameMatrix(ex->up, ey->up, absl::StrCat(p, "expert ", e, " up"));
      ExpectSameMatrix(ex->down, ey->down, absl::StrCat(p, "expert ", e, " down"));
    }
  }
}

class QuantizeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (const char* preset : {"v2-tiny", "v2-lite-tiny"}) {
      RandomModelOptions o;
      o.out_dir = Temp(preset);
      o.preset = preset;
      o.seed = 11;
      ASSERT_TRUE(MakeRandomModel(o).ok());
    }
  }
  static std::string Model(const char* preset) {
    return ::testing::TempDir() + "/dsv2_quantize_test_" + preset;
  }

  // QuantizeCheckpoint(in -> a new directory named `name`).
  static std::string Quantize(const std::string& in, const std::string& name,
                              const WeightQuantization& q, uint64_t max_shard_bytes = 1ull << 32) {
    QuantizeOptions o;
    o.model_dir = in;
    o.out_dir = Temp(name);
    o.quantization = q;
    o.max_shard_bytes = max_shard_bytes;
    const absl::Status s = QuantizeCheckpoint(o);
    EXPECT_TRUE(s.ok()) << s;
    return o.out_dir;
  }
};

TEST_F(QuantizeTest, LoadsTheWeightsLoadTimeQuantizationMakes) {
  struct Case {
    const char* input;  // a preset, or a conformance fixture (fused, sharded, f32)
    WeightQuantization q;
  };
  const std::vector<Case> cases = {
      {"v2-tiny", {Format::kInt8, false, false}},
      {"v2-tiny", {Format::kInt4, false, true}},
      {"v2-lite-tiny", {Format::kInt4, false, false}},
      {"v2-lite-tiny", {Format::kInt8, true, false}},
      {"fused_bf16", {Format::kInt4, false, false}},
      {"sharded_bf16", {Format::kInt8, false, false}},
      {"lite_f32", {Format::kInt4, true, false}},
  };
  int i = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat(c.input, " ", WeightFormatName(c.q.format),
                              c.q.experts_only ? " experts-only" : "",
                              c.q.lm_head_bf16 ? " lm-head-bf16" : ""));
    const std::string in =
        absl::StartsWith(c.input, "v2-") ? Model(c.input) : testing_util::FixtureDir(c.input);
    if (!fs::exists(in + "/config.json")) {
      ADD_FAILURE() << "missing " << in;
      continue;
    }
    const std::string out = Quantize(in, absl::StrCat("out", i++), c.q);
    absl::StatusOr<Loaded> quantized = Load(out);
    ASSERT_TRUE(quantized.ok()) << quantized.status();
    ASSERT_TRUE(quantized->config.stored_quantization.has_value());
    const WeightQuantization& stored = *quantized->config.stored_quantization;
    EXPECT_EQ(stored.format, c.q.format);
    EXPECT_EQ(stored.experts_only, c.q.experts_only);
    EXPECT_EQ(stored.lm_head_bf16 || stored.experts_only, c.q.lm_head_bf16 || c.q.experts_only);
    absl::StatusOr<Loaded> at_load = Load(in, c.q);
    ASSERT_TRUE(at_load.ok()) << at_load.status();
    ExpectSameWeights(*at_load, *quantized);
    // Asking again for what it stores is allowed (with any flags that make
    // the same plan: --lm-head-bf16 changes nothing with --experts-only);
    // anything else is not.
    EXPECT_TRUE(Load(out, stored).ok());
    if (stored.experts_only) {
      WeightQuantization same = stored;
      same.lm_head_bf16 = !same.lm_head_bf16;
      EXPECT_TRUE(Load(out, same).ok());
    }
    WeightQuantization other = stored;
    other.format = stored.format == Format::kInt8 ? Format::kInt4 : Format::kInt8;
    const absl::StatusOr<Loaded> mismatch = Load(out, other);
    ASSERT_FALSE(mismatch.ok());
    EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(mismatch.status().message(), "stored quantized"))
        << mismatch.status();
  }
}

TEST_F(QuantizeTest, ShardsAreListedByAnIndex) {
  const std::string out =
      Quantize(Model("v2-tiny"), "sharded", {Format::kInt8, false, false}, 200 * 1000);
  EXPECT_FALSE(fs::exists(out + "/model.safetensors"));
  std::ifstream f(out + "/model.safetensors.index.json");
  ASSERT_TRUE(f.good());
  const nlohmann::json index = nlohmann::json::parse(f);
  std::set<std::string> shards;
  for (const auto& [name, shard] : index["weight_map"].items()) shards.insert(shard);
  EXPECT_GT(shards.size(), 2u);
  uint64_t total = 0;
  for (const std::string& s : shards) {
    auto one = Checkpoint::OpenFile(out + "/" + s);
    ASSERT_TRUE(one.ok()) << one.status();
    uint64_t data = 0;
    for (const std::string& n : (*one)->Names()) data += (*one)->Find(n)->num_bytes;
    // A shard is over the limit only when one tensor alone is.
    if ((*one)->Names().size() > 1) {
      EXPECT_LE(data, 200u * 1000) << s;
    }
    total += data;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  for (const auto& e : fs::directory_iterator(out)) {
    EXPECT_FALSE(absl::StrContains(e.path().filename().string(), ".tmp")) << e.path();
  }
  absl::StatusOr<Loaded> sharded = Load(out);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  absl::StatusOr<Loaded> at_load = Load(Model("v2-tiny"), {Format::kInt8, false, false});
  ASSERT_TRUE(at_load.ok());
  ExpectSameWeights(*at_load, *sharded);
}

TEST_F(QuantizeTest, RefusesWhatItCannotDo) {
  QuantizeOptions o;
  o.model_dir = Model("v2-tiny");
  o.out_dir = Temp("refused");
  o.quantization.format = Format::kNone;
  EXPECT_EQ(QuantizeCheckpoint(o).code(), absl::StatusCode::kInvalidArgument);
  o.quantization.format = Format::kInt8;
  // Not an empty directory.
  fs::create_directories(o.out_dir);
  std::ofstream(o.out_dir + "/something") << "x";
  absl::Status s = QuantizeCheckpoint(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "not an empty directory")) << s;
  // Into itself.
  o.out_dir = o.model_dir;
  EXPECT_EQ(QuantizeCheckpoint(o).code(), absl::StatusCode::kInvalidArgument);
  // An already quantized checkpoint.
  o.model_dir = Quantize(Model("v2-tiny"), "twice", {Format::kInt8, false, false});
  o.out_dir = Temp("twice_again");
  s = QuantizeCheckpoint(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "already quantized")) << s;
}

// A copy of the quantized checkpoint `dir` as one model.safetensors with its
// tensor list edited, and config.json edited.
std::string Rewrite(const std::string& dir, const std::string& name,
                    const std::function<void(std::vector<TensorToWrite>&)>& edit,
                    const std::function<void(nlohmann::json&)>& edit_config = nullptr) {
  auto src = Checkpoint::OpenDir(dir);
  EXPECT_TRUE(src.ok()) << src.status();
  std::vector<TensorToWrite> tensors;
  for (const std::string& n : (*src)->Names()) {
    const TensorView* t = (*src)->Find(n);
    tensors.push_back(
        {n, t->dtype, t->shape, std::string(reinterpret_cast<const char*>(t->data), t->num_bytes)});
  }
  edit(tensors);
  const std::string out = Temp(name);
  fs::create_directories(out);
  std::ifstream in(dir + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  if (edit_config) edit_config(config);
  std::ofstream(out + "/config.json") << config.dump(2);
  EXPECT_TRUE(WriteSafetensors(out + "/model.safetensors", tensors).ok());
  return out;
}

TensorToWrite& Named(std::vector<TensorToWrite>& ts, const std::string& name) {
  for (TensorToWrite& t : ts) {
    if (t.name == name) return t;
  }
  ADD_FAILURE() << "no tensor " << name;
  static TensorToWrite none;
  return none;
}

TEST_F(QuantizeTest, LoadingValidatesEveryQuantizedTensor) {
  // v2-lite-tiny, int4: o_proj [64, 64] is U8 [64, 32] + F16 [64, 2].
  const std::string q4 = Quantize(Model("v2-lite-tiny"), "valid4", {Format::kInt4, false, false});
  const std::string o = "model.layers.1.self_attn.o_proj.weight";
  const std::string norm = "model.layers.1.input_layernorm.weight";
  struct Case {
    const char* name;
    std::function<void(std::vector<TensorToWrite>&)> edit;
    std::function<void(nlohmann::json&)> edit_config;
    std::string expect;  // a substring of the error
  };
  const std::vector<Case> cases = {
      {"packed_length",
       [&](auto& ts) {
         TensorToWrite& t = Named(ts, o);
         t.shape = {64, 31};
         t.bytes.resize(64 * 31);
       },
       nullptr, "model.safetensors: tensor '" + o + "' has shape [64, 31]; expected [64, 32]"},
      {"scale_shape",
       [&](auto& ts) {
         TensorToWrite& t = Named(ts, o + "_scale");
         t.shape = {64, 1};
         t.bytes.resize(64 * 2);
       },
       nullptr, "tensor '" + o + "_scale' has shape [64, 1]; expected [64, 2]"},
      {"scale_dtype", [&](auto& ts) { Named(ts, o + "_scale").dtype = DType::kBF16; }, nullptr,
       "tensor '" + o + "_scale' has dtype bf16; group scales are F16"},
      {"missing_scale",
       [&](auto& ts) {
         std::erase_if(ts, [&](const TensorToWrite& t) { return t.name == o + "_scale"; });
       },
       nullptr, o + "_scale"},
      {"values_dtype", [&](auto& ts) { Named(ts, o).dtype = DType::kI8; }, nullptr,
       "tensor '" + o + "' has dtype i8; config.json's quantization_config stores it as int4 (u8)"},
      {"float_where_quantized",
       [&](auto& ts) {
         TensorToWrite& t = Named(ts, o);
         t.dtype = DType::kBF16;
         t.shape = {64, 64};
         t.bytes.assign(64 * 64 * 2, '\0');
       },
       nullptr, "tensor '" + o + "' has shape [64, 64]; expected [64, 32]"},
      {"quantized_norm",
       [&](auto& ts) {
         TensorToWrite& t = Named(ts, norm);
         t.dtype = DType::kU8;
         t.bytes.resize(64);
       },
       nullptr, "tensor '" + norm + "' has dtype u8; expected a float type"},
      {"no_quantization_config", [](auto&) {},
       [](nlohmann::json& c) { c.erase("quantization_config"); },
       "tensor 'lm_head.weight' has dtype i8; expected a float type (a quantized tensor, but "
       "config.json has no quantization_config)"},
      {"quant_method", [](auto&) {},
       [](nlohmann::json& c) { c["quantization_config"]["quant_method"] = "gptq"; },
       "quantization_config.quant_method = \"gptq\" is not supported"},
      {"group_size", [](auto&) {},
       [](nlohmann::json& c) { c["quantization_config"]["group_size"] = 64; },
       "quantization_config.group_size = 64 must be 32"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string dir = Rewrite(q4, c.name, c.edit, c.edit_config);
    const absl::StatusOr<Loaded> l = Load(dir);
    ASSERT_FALSE(l.ok());
    EXPECT_TRUE(absl::StrContains(l.status().message(), c.expect)) << l.status();
  }
  // The unedited rewrite loads.
  EXPECT_TRUE(Load(Rewrite(q4, "unedited", [](auto&) {})).ok());
}

TEST_F(QuantizeTest, RandomModelWritesTheQuantizedLayoutDirectly) {
  RandomModelOptions o;
  o.out_dir = Temp("random_int4");
  o.preset = "v2-lite-tiny";
  o.seed = 11;
  o.quantization = {Format::kInt4, false, false};
  o.max_shard_bytes = 300 * 1000;
  ASSERT_TRUE(MakeRandomModel(o).ok());
  absl::StatusOr<Loaded> q = Load(o.out_dir);
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_TRUE(q->config.stored_quantization.has_value());
  EXPECT_EQ(q->config.stored_quantization->format, Format::kInt4);
  EXPECT_TRUE(fs::exists(o.out_dir + "/model.safetensors.index.json"));
  // The same draws as the bf16 model of that seed: the tensors kept as
  // stored are the same bytes, the quantized ones agree within a scale.
  absl::StatusOr<Loaded> f = Load(Model("v2-lite-tiny"));
  ASSERT_TRUE(f.ok());
  ExpectSameMatrix(f->weights->embed(), q->weights->embed(), "embed");
  ExpectSameMatrix(f->weights->layer(1).attn.kv_b_proj, q->weights->layer(1).attn.kv_b_proj,
                   "kv_b_proj");
  const WeightMatrix& a = f->weights->layer(1).attn.o_proj;
  const WeightMatrix& b = q->weights->layer(1).attn.o_proj;
  ASSERT_TRUE(b.quant.has_value());
  std::vector<float> ra(a.cols), rb(b.cols);
  for (int64_t r = 0; r < a.rows; ++r) {
    a.RowToF32(r, ra.data());
    b.RowToF32(r, rb.data());
    for (int64_t k = 0; k < a.cols; ++k) {
      const float scale = F16ToF32(b.quant->scales[r * b.quant->lds + k / 32]);
      // bf16 rounding of the draw plus int4 rounding (at most one scale).
      EXPECT_LE(std::abs(ra[k] - rb[k]), std::abs(scale) * 1.01f + std::abs(ra[k]) / 128)
          << r << "," << k;
    }
  }
}

TEST(EvalKldTest, KlDivergenceAndItsSummary) {
  const float p[2] = {0.0f, 0.0f};
  const float q[2] = {0.0f, static_cast<float>(std::log(3.0))};
  // P = (1/2, 1/2), Q = (1/4, 3/4): KL = ln(4/3) / 2.
  EXPECT_NEAR(KlDivergence(p, q, 2), std::log(4.0 / 3.0) / 2, 1e-7);
  const float q_shifted[2] = {10.0f, 10.0f + static_cast<float>(std::log(3.0))};
  EXPECT_NEAR(KlDivergence(p, q_shifted, 2), std::log(4.0 / 3.0) / 2, 1e-6);
  EXPECT_EQ(KlDivergence(q, q, 2), 0.0);
  std::vector<double> k;
  for (int i = 100; i >= 1; --i) k.push_back(i);
  const KldStats s = SummarizeKld(k, 75);
  EXPECT_EQ(s.positions, 100);
  EXPECT_DOUBLE_EQ(s.mean, 50.5);
  EXPECT_EQ(s.median, 50);
  EXPECT_EQ(s.p99, 99);
  EXPECT_EQ(s.max, 100);
  EXPECT_DOUBLE_EQ(s.top1_agreement, 0.75);
}

TEST_F(QuantizeTest, EvalKldScoresTheSecondHalfOfEachChunk) {
  EvalKldOptions o;
  o.model_dir = Model("v2-tiny");
  for (int32_t i = 0; i < 300; ++i) o.tokens.push_back((i * 7919) % 102400);
  o.context = 64;
  o.quantization = {Format::kInt8, false, false};
  absl::StatusOr<KldStats> int8 = EvalKld(o);
  ASSERT_TRUE(int8.ok()) << int8.status();
  // BOS + 63 tokens per chunk: 4 chunks of 64 score [32, 63), one of 49
  // scores [24, 48).
  EXPECT_EQ(int8->positions, 4 * 31 + 24);
  EXPECT_GT(int8->mean, 0.0);
  EXPECT_GT(int8->top1_agreement, 0.5);
  o.quantization = {Format::kInt4, false, false};
  absl::StatusOr<KldStats> int4 = EvalKld(o);
  ASSERT_TRUE(int4.ok()) << int4.status();
  EXPECT_GT(int4->mean, int8->mean);  // 4 bits lose more than 8
  // A stored checkpoint of the same weights gives the same figures.
  o.quantized_model_dir = Quantize(o.model_dir, "kld_int4", {Format::kInt4, false, false});
  o.max_positions = 50;
  absl::StatusOr<KldStats> stored = EvalKld(o);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->positions, 50);
  o.quantized_model_dir.reset();
  absl::StatusOr<KldStats> first50 = EvalKld(o);
  ASSERT_TRUE(first50.ok());
  EXPECT_EQ(stored->mean, first50->mean);
  EXPECT_EQ(stored->max, first50->max);
  // Nothing quantized: exactly zero.
  o.quantization = {};
  absl::StatusOr<KldStats> none = EvalKld(o);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->max, 0.0);
  EXPECT_EQ(none->top1_agreement, 1.0);
  o.tokens = {102400};
  EXPECT_EQ(EvalKld(o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dsv2
