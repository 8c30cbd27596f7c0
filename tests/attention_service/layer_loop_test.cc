#include "attention_service/layer_loop.h"

#include <array>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <tuple>

#include "attention_service/expert_backend.h"
#include "expert_service/expert_compute.h"
#include "gtest/gtest.h"
#include "model/safetensors.h"
#include "tools/dsv2/local_engine.h"
#include "tools/dsv2/random_model.h"

namespace dsv2 {
namespace {

std::string MakeModel(const std::string& preset, DType dtype) {
  const std::string dir = ::testing::TempDir() + "/dsv2_ll_" + preset + DTypeName(dtype);
  if (!std::filesystem::exists(dir + "/model.safetensors")) {
    RandomModelOptions o;
    o.out_dir = dir;
    o.preset = preset;
    o.seed = 5;
    o.dtype = dtype;
    o.tokenizer_dir = std::string(DSV2_SOURCE_DIR) + "/model/data/deepseek-v2";
    EXPECT_TRUE(MakeRandomModel(o).ok());
  }
  return dir;
}

struct MlaCase {
  std::string preset;
  DType dtype;
  double tolerance;  // relative to max |reference|
  // Load-time quantization (the reference then uses QGemmReference).
  WeightQuantization::Format weights = WeightQuantization::Format::kNone;
};

class AbsorbedMlaTest : public ::testing::TestWithParam<MlaCase> {};

// MODEL_SPEC section 5: the absorbed form over the latent cache equals the
// reference form of section 4, for every position of a 150-token sequence
// (three cache blocks), computed in chunks.
TEST_P(AbsorbedMlaTest, AgreesWithReferenceForm) {
  const MlaCase& mc = GetParam();
  LocalEngineOptions o;
  o.model_dir = MakeModel(mc.preset, mc.dtype);
  o.cache_tokens = 256;
  o.quantization.format = mc.weights;
  o.quantization.int8_activations = false;  // the reference's f32 products
  auto e = LocalEngine::Open(o);
  ASSERT_TRUE(e.ok()) << e.status();
  const ModelConfig& c = (*e)->config();
  const int64_t T = 150, D = c.hidden_size;
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> h(T * D);
  for (float& x : h) x = dist(rng);
  RoundInPlace(h.data(), h.size(), (*e)->weights().activation_dtype());
  for (int64_t layer : {int64_t{0}, c.num_hidden_layers - 1}) {
    std::vector<float> ref(T * D), ours(T * D);
    ReferenceMla(c, (*e)->weights().layer(layer).attn, MakeRopeTable(c),
                 (*e)->weights().activation_dtype(), h.data(), T, ref.data());
    SequenceCache seq;
    for (int64_t begin = 0; begin < T; begin += 37) {
      const int64_t n = std::min<int64_t>(37, T - begin);
      ASSERT_TRUE((*e)->loop().MlaForTest(layer, seq, &h[begin * D], n, &ours[begin * D]).ok());
      seq.num_tokens += n;
    }
    (*e)->cache().Release(seq);
    double scale = 0, diff = 0;
    for (int64_t i = 0; i < T * D; ++i) {
      scale = std::max(scale, std::fabs(double(ref[i])));
      diff = std::max(diff, std::fabs(double(ref[i]) - ours[i]));
    }
    EXPECT_GT(scale, 0.0);
    EXPECT_LE(diff, mc.tolerance * scale) << "layer " << layer;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, AbsorbedMlaTest,
                         ::testing::Values(MlaCase{"v2-tiny", DType::kF32, 1e-5},
                                           MlaCase{"v2-lite-tiny", DType::kF32, 1e-5},
                                           MlaCase{"v2-tiny", DType::kBF16, 3e-2},
                                           MlaCase{"v2-tiny", DType::kF32, 1e-5,
                                                   WeightQuantization::Format::kInt8},
                                           MlaCase{"v2-lite-tiny", DType::kF32, 1e-5,
                                                   WeightQuantization::Format::kInt4}));

// Logits of every position of a 150-token sequence (three 64-token key
// blocks) are bitwise the same whether prefilled at once or in chunks that
// straddle the block boundaries, and with 1 or 2 threads.
TEST(LayerLoopTest, ChunkBoundariesAcrossKeyBlocksChangeNoBit) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    std::vector<std::vector<float>> results;
    for (int threads : {1, 2}) {
      LocalEngineOptions o;
      o.model_dir = MakeModel("v2-tiny", dtype);
      o.cache_tokens = 256;
      o.threads = threads;
      auto e = LocalEngine::Open(o);
      ASSERT_TRUE(e.ok()) << e.status();
      std::vector<int32_t> tokens(150);
      for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(7 + 13 * i);
      for (size_t chunk : {150, 1, 37, 64, 65}) {
        SequenceCache seq;
        std::vector<float> all;
        StepOutput out;
        for (size_t b = 0; b < tokens.size(); b += chunk) {
          StepSequence s{&seq, std::span<const int32_t>(tokens).subspan(
                                   b, std::min(chunk, tokens.size() - b)),
                         true};
          ASSERT_TRUE((*e)->loop().Step(std::span<StepSequence>(&s, 1), &out).ok());
          all.insert(all.end(), out.logits[0].begin(), out.logits[0].end());
        }
        (*e)->cache().Release(seq);
        results.push_back(std::move(all));
      }
    }
    for (size_t i = 1; i < results.size(); ++i) {
      EXPECT_TRUE(results[i] == results[0]) << DTypeName(dtype) << " variant " << i;
    }
  }
}

// `count` prompts, prompt i of len0 + len_step * i tokens
// t0 + seq_step * i + tok_step * t.
std::vector<std::vector<int32_t>> MakePrompts(size_t count, size_t len0, size_t len_step,
                                              int32_t t0, int32_t seq_step, int32_t tok_step) {
  std::vector<std::vector<int32_t>> prompts(count);
  for (size_t i = 0; i < count; ++i) {
    prompts[i].resize(len0 + len_step * i);
    for (size_t t = 0; t < prompts[i].size(); ++t) {
      prompts[i][t] = static_cast<int32_t>(t0 + seq_step * static_cast<int32_t>(i) +
                                           tok_step * static_cast<int32_t>(t));
    }
  }
  return prompts;
}

// Steps every prompt alone (prefill, then the one token `next`), then all of
// them in one batch (prefill, then `next` each), and expects each
// sequence's logits of the batch to be bitwise those it had alone, with the
// right number of rows. Sequence i's prefill wants every row when
// prefill_all(i); its decode when decode_all.
void ExpectBatchEqualsEachAlone(LocalEngine& e, const std::vector<std::vector<int32_t>>& prompts,
                                const std::function<bool(size_t)>& prefill_all, bool decode_all,
                                int32_t next, const std::string& label) {
  const size_t V = static_cast<size_t>(e.config().vocab_size);
  const int32_t next_token[1] = {next};
  // [sequence][0 prefill, 1 decode] -> logits
  std::vector<std::array<std::vector<float>, 2>> alone(prompts.size());
  StepOutput out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SequenceCache seq;
    StepSequence s{&seq, prompts[i], prefill_all(i)};
    ASSERT_TRUE(e.loop().Step(std::span<StepSequence>(&s, 1), &out).ok());
    alone[i][0] = out.logits[0];
    StepSequence d{&seq, next_token, decode_all};
    ASSERT_TRUE(e.loop().Step(std::span<StepSequence>(&d, 1), &out).ok());
    alone[i][1] = out.logits[0];
    e.cache().Release(seq);
  }
  std::vector<SequenceCache> seqs(prompts.size());
  std::vector<StepSequence> batch;
  for (size_t i = 0; i < prompts.size(); ++i) {
    batch.push_back({&seqs[i], prompts[i], prefill_all(i)});
  }
  ASSERT_TRUE(e.loop().Step(std::span<StepSequence>(batch), &out).ok());
  ASSERT_EQ(out.logits.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const size_t rows = prefill_all(i) ? prompts[i].size() : 1;
    EXPECT_EQ(out.logits[i].size(), rows * V) << label << " prefill " << i;
    EXPECT_TRUE(out.logits[i] == alone[i][0]) << label << " prefill " << i;
    // The sequences' logits differ from each other (so a mix-up would show).
    if (i > 0) {
      EXPECT_FALSE(out.logits[i] == out.logits[0]) << label << " prefill " << i;
    }
  }
  batch.clear();
  for (size_t i = 0; i < prompts.size(); ++i) batch.push_back({&seqs[i], next_token, decode_all});
  ASSERT_TRUE(e.loop().Step(std::span<StepSequence>(batch), &out).ok());
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(out.logits[i].size(), V) << label << " decode " << i;  // one new token
    EXPECT_TRUE(out.logits[i] == alone[i][1]) << label << " decode " << i;
    e.cache().Release(seqs[i]);
  }
}

// Load-time quantization (issue 13) keeps row invariance: with int8 and
// int4 weights, every logit of a step over three sequences (prefill, then
// one decode token each) is bitwise the logit of that sequence stepped
// alone, with 2 threads.
TEST(LayerLoopTest, QuantizedBatchOfSequencesEqualsEachAlone) {
  for (auto format : {WeightQuantization::Format::kInt8, WeightQuantization::Format::kInt4}) {
    LocalEngineOptions o;
    o.model_dir = MakeModel("v2-tiny", DType::kBF16);
    o.cache_tokens = 512;
    o.threads = 2;
    o.quantization.format = format;
    auto e = LocalEngine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    ASSERT_TRUE((*e)->weights().layer(0).attn.o_proj.quant.has_value());
    ExpectBatchEqualsEachAlone(
        **e, MakePrompts(3, 7, 13, 11, 97, 31), [](size_t) { return true; }, true, 42,
        WeightFormatName(format));
  }
}

// Head() gives the sequences that want their last row only one shared
// lm_head product (a batch reads lm_head once); each sequence still gets
// exactly its own logits, bit for bit, next to one that wants every row.
TEST(LayerLoopTest, SharedLmHeadProductGivesEachSequenceItsOwnLogits) {
  for (auto format : {WeightQuantization::Format::kNone, WeightQuantization::Format::kInt8}) {
    LocalEngineOptions o;
    o.model_dir = MakeModel("v2-tiny", DType::kBF16);
    o.cache_tokens = 512;
    o.threads = 2;
    o.quantization.format = format;
    auto e = LocalEngine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    // Sequence 1 wants every row; the others their last row only.
    ExpectBatchEqualsEachAlone(
        **e, MakePrompts(4, 5, 9, 7, 89, 37), [](size_t i) { return i == 1; }, false, 99,
        WeightFormatName(format));
  }
}

TEST(LayerLoopTest, RejectsBadTokensAndPositionsWithoutChangingTheCache) {
  LocalEngineOptions o;
  o.model_dir = MakeModel("v2-tiny", DType::kF32);
  o.cache_tokens = 64;
  auto e = LocalEngine::Open(o);
  ASSERT_TRUE(e.ok()) << e.status();
  SequenceCache seq;
  StepOutput out;
  EXPECT_EQ((*e)->loop().Step(std::span<StepSequence>(), &out).code(),
            absl::StatusCode::kInvalidArgument);  // empty batch
  const std::vector<int32_t> bad = {1, 102400};
  StepSequence s{&seq, bad, false};
  const absl::Status st = (*e)->loop().Step(std::span<StepSequence>(&s, 1), &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("102400"), absl::string_view::npos);
  EXPECT_EQ((*e)->cache().free_blocks(), (*e)->cache().num_blocks());
  // 65 tokens do not fit a 64-token cache: ResourceExhausted, nothing held.
  const std::vector<int32_t> many(65, 3);
  StepSequence s2{&seq, many, false};
  EXPECT_EQ((*e)->loop().Step(std::span<StepSequence>(&s2, 1), &out).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*e)->cache().free_blocks(), (*e)->cache().num_blocks());
  EXPECT_EQ(seq.num_tokens, 0);
}

// Ping-pong (DESIGN.md section 3). ------------------------------------------

// Each sequence's tokens and the chunks it is fed in over three steps.
struct Scenario {
  std::vector<std::vector<int32_t>> tokens;               // per sequence
  std::vector<std::vector<std::vector<int32_t>>> chunks;  // [step][sequence]
};

// n sequences: step 0 prefills a first chunk of 3 + 4s tokens; step 1 mixes
// decode tokens (even s) with second prefill chunks (odd s); step 2 decodes
// one token each.
Scenario MakeScenario(int n) {
  Scenario sc;
  sc.chunks.resize(3);
  for (int s = 0; s < n; ++s) {
    const size_t first = 3 + 4 * s, second = s % 2 == 0 ? 1 : 5 + s;
    std::vector<int32_t> t(first + second + 1);
    for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int32_t>((11 + 7 * s + 13 * i) % 1000);
    sc.chunks[0].emplace_back(t.begin(), t.begin() + first);
    sc.chunks[1].emplace_back(t.begin() + first, t.begin() + first + second);
    sc.chunks[2].emplace_back(t.begin() + first + second, t.end());
    sc.tokens.push_back(std::move(t));
  }
  return sc;
}

// Runs the scenario on fresh sequences; returns every step's logits (all
// positions) and stats. The sequences' blocks are released at the end.
struct ScenarioResult {
  std::vector<std::vector<std::vector<float>>> logits;  // [step][sequence]
  std::vector<StepStats> stats;                         // [step]
};

ScenarioResult RunScenario(LayerLoop& loop, LatentCache& cache, const Scenario& sc) {
  ScenarioResult res;
  const size_t n = sc.tokens.size();
  std::vector<SequenceCache> seqs(n);
  for (const auto& step : sc.chunks) {
    std::vector<StepSequence> batch;
    for (size_t s = 0; s < n; ++s) batch.push_back({&seqs[s], step[s], true, 100 + s});
    StepOutput out;
    const absl::Status st = loop.Step(batch, &out);
    EXPECT_TRUE(st.ok()) << st;
    res.logits.push_back(std::move(out.logits));
    res.stats.push_back(out.stats);
  }
  for (SequenceCache& sq : seqs) cache.Release(sq);
  return res;
}

// Splitting a step into two micro-batches changes no bit of any logit, for
// mixed prefill/decode steps of 2, 3 and 5 sequences, f32 and bf16, with a
// thread pool.
TEST(LayerLoopPingPongTest, MicroBatchesChangeNoBit) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    LocalEngineOptions o;
    o.model_dir = MakeModel("v2-tiny", dtype);
    o.cache_tokens = 1024;
    o.threads = 2;
    auto e = LocalEngine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    const ModelConfig& c = (*e)->config();
    const int64_t moe_layers = c.num_hidden_layers - c.first_k_dense_replace;
    ASSERT_GT(moe_layers, 0);
    for (int n : {2, 3, 5}) {
      const Scenario sc = MakeScenario(n);
      (*e)->loop().set_options({.min_rows_for_micro_batches = 0});
      const ScenarioResult off = RunScenario((*e)->loop(), (*e)->cache(), sc);
      (*e)->loop().set_options({.min_rows_for_micro_batches = 1});
      const ScenarioResult on = RunScenario((*e)->loop(), (*e)->cache(), sc);
      ASSERT_EQ(off.logits.size(), on.logits.size());
      for (size_t step = 0; step < off.logits.size(); ++step) {
        EXPECT_EQ(off.stats[step].num_micro_batches, 1);
        EXPECT_EQ(on.stats[step].num_micro_batches, 2);
        EXPECT_EQ(off.stats[step].num_dispatches, moe_layers);
        EXPECT_EQ(on.stats[step].num_dispatches, 2 * moe_layers);
        EXPECT_EQ(on.stats[step].micro_batch_rows[0] + on.stats[step].micro_batch_rows[1],
                  off.stats[step].micro_batch_rows[0]);
        for (int s = 0; s < n; ++s) {
          ASSERT_FALSE(off.logits[step][s].empty());
          EXPECT_TRUE(off.logits[step][s] == on.logits[step][s])
              << DTypeName(dtype) << " n=" << n << " step " << step << " sequence " << s;
        }
      }
    }
    EXPECT_EQ((*e)->cache().free_blocks(), (*e)->cache().num_blocks());
  }
}

// The split is by whole sequences in order, where the row counts are
// closest, and only from min_rows_for_micro_batches rows and two sequences.
TEST(LayerLoopPingPongTest, SplitBalancesRowsAndRespectsTheThreshold) {
  LocalEngineOptions o;
  o.model_dir = MakeModel("v2-tiny", DType::kF32);
  o.cache_tokens = 256;
  auto e = LocalEngine::Open(o);
  ASSERT_TRUE(e.ok()) << e.status();
  LayerLoop& loop = (*e)->loop();
  EXPECT_EQ(LayerLoopOptions{}.min_rows_for_micro_batches, 32);  // the default
  // dsv2 run's in-process experts have no round trip to hide.
  EXPECT_EQ(loop.options().min_rows_for_micro_batches, 0);
  auto run = [&](const std::vector<size_t>& lengths, int64_t min_rows) {
    loop.set_options({.min_rows_for_micro_batches = min_rows});
    std::vector<SequenceCache> seqs(lengths.size());
    std::vector<std::vector<int32_t>> tokens;
    std::vector<StepSequence> batch;
    for (size_t s = 0; s < lengths.size(); ++s) tokens.emplace_back(lengths[s], 5);
    for (size_t s = 0; s < lengths.size(); ++s) batch.push_back({&seqs[s], tokens[s]});
    StepOutput out;
    EXPECT_TRUE(loop.Step(batch, &out).ok());
    for (SequenceCache& sq : seqs) (*e)->cache().Release(sq);
    return out.stats.micro_batch_rows;
  };
  using Rows2 = std::array<int64_t, 2>;
  EXPECT_EQ(run({3, 7, 11}, 1), (Rows2{10, 11}));
  EXPECT_EQ(run({20, 1, 1, 1}, 1), (Rows2{20, 3}));
  EXPECT_EQ(run({1, 1, 1, 20}, 1), (Rows2{3, 20}));
  EXPECT_EQ(run({16, 16}, 32), (Rows2{16, 16}));
  EXPECT_EQ(run({16, 15}, 32), (Rows2{31, 0}));  // below the threshold
  EXPECT_EQ(run({40}, 1), (Rows2{40, 0}));       // one sequence
  EXPECT_EQ(run({16, 16}, 0), (Rows2{32, 0}));   // disabled
}

// Every routed expert of a model in one process (what LocalEngine composes).
struct InProcessExperts {
  std::unique_ptr<Checkpoint> checkpoint;
  std::unique_ptr<ExpertCompute> shard;
  std::unique_ptr<InProcessExpertBackend> backend;
};

std::unique_ptr<InProcessExperts> OpenExperts(const std::string& dir, const ModelConfig& c,
                                              kernels::CpuContext ctx) {
  auto x = std::make_unique<InProcessExperts>();
  auto ckpt = Checkpoint::OpenDir(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (!ckpt.ok()) return nullptr;
  x->checkpoint = std::move(*ckpt);
  std::vector<int32_t> all(c.n_routed_experts);
  std::iota(all.begin(), all.end(), 0);
  auto w = ExpertWeightSet::Load(c, *x->checkpoint, ExpertWeightSet::AllLayers(c, all));
  EXPECT_TRUE(w.ok()) << w.status();
  if (!w.ok()) return nullptr;
  x->shard = std::make_unique<ExpertCompute>(c, std::move(*w), ctx);
  ExpertCompute* shard = x->shard.get();
  x->backend = std::make_unique<InProcessExpertBackend>(
      [shard](const router::ExpertDispatch& d) { return shard->Handle(d); });
  return x;
}

// Forwards to an inner backend, recording Send ('S'), Wait ('W') and Forget
// ('F') as (op, micro-batch, layer); can fail one Send or one Wait.
class RecordingBackend : public ExpertBackend {
 public:
  struct Event {
    char op;
    int32_t micro_batch;
    int32_t layer;
    bool operator==(const Event&) const = default;
  };
  explicit RecordingBackend(ExpertBackend& inner) : inner_(inner) {}

  using ExpertBackend::Send;
  absl::StatusOr<uint64_t> Send(router::ExpertDispatch d, const DispatchContext& ctx) override {
    const std::pair<int32_t, int32_t> key{ctx.micro_batch, d.layer};
    if (fail_send == key) {
      fail_send.reset();
      return absl::UnavailableError("injected send failure");
    }
    events.push_back({'S', ctx.micro_batch, d.layer});
    replica_keys.push_back(ctx.replica_key);
    auto t = inner_.Send(std::move(d), ctx);
    if (t.ok()) tickets_[*t] = key;
    return t;
  }
  absl::StatusOr<router::ExpertReply> Wait(uint64_t ticket) override {
    const auto key = tickets_.at(ticket);
    tickets_.erase(ticket);
    events.push_back({'W', key.first, key.second});
    auto reply = inner_.Wait(ticket);
    if (fail_wait == key) {
      fail_wait.reset();
      return absl::UnavailableError("injected wait failure");
    }
    return reply;
  }
  void Forget(uint64_t ticket) override {
    const auto key = tickets_.at(ticket);
    tickets_.erase(ticket);
    events.push_back({'F', key.first, key.second});
    inner_.Forget(ticket);
  }

  size_t outstanding() const { return tickets_.size(); }

  std::optional<std::pair<int32_t, int32_t>> fail_send, fail_wait;  // (micro-batch, layer)
  std::vector<Event> events;
  std::vector<uint64_t> replica_keys;

 private:
  ExpertBackend& inner_;
  std::map<uint64_t, std::pair<int32_t, int32_t>> tickets_;
};

std::ostream& operator<<(std::ostream& os, const RecordingBackend::Event& e) {
  return os << e.op << "(m" << e.micro_batch << ",l" << e.layer << ")";
}

class PingPongOrderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LocalEngineOptions o;
    o.model_dir = MakeModel("v2-tiny", DType::kF32);
    o.cache_tokens = 512;
    auto e = LocalEngine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    const kernels::CpuContext ctx{engine_->isa(), nullptr};
    experts_ = OpenExperts(o.model_dir, engine_->config(), ctx);
    ASSERT_NE(experts_, nullptr);
    recorder_ = std::make_unique<RecordingBackend>(*experts_->backend);
    loop_ = std::make_unique<LayerLoop>(engine_->weights(), engine_->cache(), *recorder_, ctx,
                                        LayerLoopOptions{.min_rows_for_micro_batches = 1});
    ASSERT_EQ(engine_->config().first_k_dense_replace, 1);
    ASSERT_EQ(engine_->config().num_hidden_layers, 3);
  }

  std::unique_ptr<LocalEngine> engine_;
  std::unique_ptr<InProcessExperts> experts_;
  std::unique_ptr<RecordingBackend> recorder_;
  std::unique_ptr<LayerLoop> loop_;
};

// Both micro-batches' dispatches of a layer are sent before the first one is
// waited on, and m0 sends layer l+1 before m1's layer l is waited on; the
// replica key is each micro-batch's first sequence id. Layer 0 is dense.
TEST_F(PingPongOrderTest, MicroBatchesInterleaveAtTheExperts) {
  using E = RecordingBackend::Event;
  std::vector<SequenceCache> seqs(3);
  const std::vector<int32_t> a(9, 4), b(2, 5), d(7, 6);
  std::vector<StepSequence> batch = {
      {&seqs[0], a, false, 7}, {&seqs[1], b, false, 8}, {&seqs[2], d, false, 9}};
  StepOutput out;
  ASSERT_TRUE(loop_->Step(batch, &out).ok());
  EXPECT_EQ(out.stats.num_micro_batches, 2);
  EXPECT_EQ(out.stats.micro_batch_rows, (std::array<int64_t, 2>{9, 9}));
  EXPECT_EQ(out.stats.num_dispatches, 4);
  EXPECT_EQ(recorder_->events, (std::vector<E>{{'S', 0, 1},
                                               {'S', 1, 1},
                                               {'W', 0, 1},
                                               {'S', 0, 2},
                                               {'W', 1, 1},
                                               {'S', 1, 2},
                                               {'W', 0, 2},
                                               {'W', 1, 2}}));
  // m0 = {sequence 0}, m1 = {sequences 1, 2}: 9 rows each.
  EXPECT_EQ(recorder_->replica_keys, (std::vector<uint64_t>{7, 8, 7, 8}));

  // One micro-batch: the same loop, Send then Wait per layer.
  recorder_->events.clear();
  recorder_->replica_keys.clear();
  loop_->set_options({.min_rows_for_micro_batches = 0});
  ASSERT_TRUE(loop_->Step(batch, &out).ok());
  EXPECT_EQ(out.stats.num_micro_batches, 1);
  EXPECT_EQ(recorder_->events,
            (std::vector<E>{{'S', 0, 1}, {'W', 0, 1}, {'S', 0, 2}, {'W', 0, 2}}));
  EXPECT_EQ(recorder_->replica_keys, (std::vector<uint64_t>{7, 7}));
  EXPECT_EQ(experts_->backend->num_outstanding(), 0u);
  for (SequenceCache& sq : seqs) engine_->cache().Release(sq);
}

// A backend error on either micro-batch, at Send or at Wait, fails the step
// with that error, abandons the other micro-batch's ticket (nothing left
// outstanding), advances no num_tokens; re-running the step then gives the
// logits of a run that never failed.
TEST_F(PingPongOrderTest, FailureWithTwoMicroBatchesInFlightChangesNothing) {
  const std::vector<int32_t> p0 = {3, 1, 4, 1, 5, 9, 2, 6}, p1 = {2, 7, 1, 8, 2};
  const std::vector<int32_t> d0 = {11}, d1 = {12};
  auto run_two_steps = [&](std::vector<SequenceCache>& seqs,
                           std::optional<std::pair<int32_t, int32_t>> fail_send,
                           std::optional<std::pair<int32_t, int32_t>> fail_wait,
                           std::vector<std::vector<float>>* logits) {
    for (int step = 0; step < 2; ++step) {
      std::vector<StepSequence> batch = {{&seqs[0], step == 0 ? p0 : d0, true, 1},
                                         {&seqs[1], step == 0 ? p1 : d1, true, 2}};
      StepOutput out;
      if (step == 1 && (fail_send || fail_wait)) {
        const std::vector<int64_t> before = {seqs[0].num_tokens, seqs[1].num_tokens};
        recorder_->fail_send = fail_send;
        recorder_->fail_wait = fail_wait;
        const absl::Status st = loop_->Step(batch, &out);
        EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
        EXPECT_EQ(seqs[0].num_tokens, before[0]);
        EXPECT_EQ(seqs[1].num_tokens, before[1]);
        EXPECT_EQ(recorder_->outstanding(), 0u);
        EXPECT_EQ(experts_->backend->num_outstanding(), 0u);
        EXPECT_FALSE(recorder_->fail_send || recorder_->fail_wait);  // it fired
      }
      const absl::Status st = loop_->Step(batch, &out);
      ASSERT_TRUE(st.ok()) << st;
      for (auto& l : out.logits) logits->push_back(std::move(l));
    }
  };
  std::vector<std::vector<float>> want;
  {
    std::vector<SequenceCache> seqs(2);
    run_two_steps(seqs, std::nullopt, std::nullopt, &want);
    for (SequenceCache& sq : seqs) engine_->cache().Release(sq);
  }
  using Key = std::pair<int32_t, int32_t>;
  const std::vector<std::tuple<std::optional<Key>, std::optional<Key>, RecordingBackend::Event>>
      cases = {
          // m1's Send fails while m0's dispatch of the same layer is in flight.
          {Key{1, 1}, std::nullopt, {'F', 0, 1}},
          {Key{1, 2}, std::nullopt, {'F', 0, 2}},
          // m0's Wait fails while m1's dispatch is in flight.
          {std::nullopt, Key{0, 1}, {'F', 1, 1}},
          // m0's Send fails while m1's previous layer is in flight.
          {Key{0, 2}, std::nullopt, {'F', 1, 1}},
      };
  for (const auto& [fail_send, fail_wait, forgotten] : cases) {
    recorder_->events.clear();
    std::vector<SequenceCache> seqs(2);
    std::vector<std::vector<float>> got;
    run_two_steps(seqs, fail_send, fail_wait, &got);
    EXPECT_NE(std::find(recorder_->events.begin(), recorder_->events.end(), forgotten),
              recorder_->events.end())
        << forgotten;
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(got[i] == want[i]) << "logits " << i;
    for (SequenceCache& sq : seqs) engine_->cache().Release(sq);
  }
  EXPECT_EQ(engine_->cache().free_blocks(), engine_->cache().num_blocks());
}

}  // namespace
}  // namespace dsv2
