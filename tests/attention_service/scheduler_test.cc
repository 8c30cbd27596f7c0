#include "attention_service/scheduler.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "gtest/gtest.h"
#include "tests/common/hooked_expert_backend.h"
#include "tools/dsv2/local_engine.h"
#include "tools/dsv2/random_model.h"

namespace dsv2 {
namespace {

// A 2-layer v2-tiny random model (layer 0 dense, layer 1 MoE).
std::string MakeModel(DType dtype) {
  const std::string dir = ::testing::TempDir() + "/dsv2_sched_v2-tiny2_" + DTypeName(dtype);
  if (!std::filesystem::exists(dir + "/model.safetensors")) {
    RandomModelOptions o;
    o.out_dir = dir;
    o.preset = "v2-tiny";
    o.num_layers = 2;
    o.seed = 17;
    o.dtype = dtype;
    o.tokenizer_dir = std::string(DSV2_SOURCE_DIR) + "/model/data/deepseek-v2";
    EXPECT_TRUE(MakeRandomModel(o).ok());
  }
  return dir;
}

// LocalEngine (the single-process composition) with a cache of chosen size,
// a HookedExpertBackend in front of its experts (fault injection) and the
// layer loop's default options (ping-pong on, as on an attention node).
class Engine {
 public:
  static std::unique_ptr<Engine> Open(DType dtype, int64_t cache_tokens) {
    auto e = std::unique_ptr<Engine>(new Engine());
    LocalEngineOptions o;
    o.model_dir = MakeModel(dtype);
    o.threads = 1;
    o.cache_tokens = cache_tokens;
    o.loop_options = LayerLoopOptions{};
    Engine* raw = e.get();
    o.wrap_backend = [raw](ExpertBackend& inner) {
      auto hooked = std::make_unique<testing_util::HookedExpertBackend>(inner);
      raw->hooked_ = hooked.get();
      return hooked;
    };
    absl::StatusOr<std::unique_ptr<LocalEngine>> local = LocalEngine::Open(o);
    EXPECT_TRUE(local.ok()) << local.status();
    if (!local.ok()) return nullptr;
    e->local_ = *std::move(local);
    return e;
  }

  const ModelConfig& config() const { return local_->config(); }
  LatentCache& cache() { return local_->cache(); }
  LayerLoop& loop() { return local_->loop(); }
  // A fresh LayerLoop over the same weights, cache and experts.
  std::unique_ptr<LayerLoop> NewLoop() {
    return std::make_unique<LayerLoop>(local_->weights(), local_->cache(), local_->backend(),
                                       local_->context());
  }
  int64_t dispatches() const { return hooked_->dispatches(); }
  // Makes the expert call with this 0-based index fail with UNAVAILABLE.
  void FailDispatch(int64_t call) { hooked_->FailDispatch(call); }

 private:
  Engine() = default;

  std::unique_ptr<LocalEngine> local_;
  testing_util::HookedExpertBackend* hooked_ = nullptr;  // owned by local_
};

struct Result {
  std::vector<int32_t> tokens;
  FinishReason finish = FinishReason::kNone;
  absl::Status error;
  int32_t max_preemptions = 0;
  // Preempted between two of its tokens: resumed by recomputing prompt +
  // generated tokens.
  bool resumed_after_tokens = false;
  bool terminal = false;
  std::vector<TokenLogprobs> logprobs;  // when the request set logprobs >= 0
};

// The `dsv2 run` algorithm for one request alone on a fresh LayerLoop: the
// prompt as one chunk, then one token per step; output position i sampled
// with SampleToken(logits, sampling, i); no step after the final token.
Result Reference(Engine& e, const GenerationRequest& r, const std::vector<int64_t>& eos_ids) {
  Result res;
  std::unique_ptr<LayerLoop> loop = e.NewLoop();
  SequenceCache seq;
  StepOutput out;
  StepSequence s{&seq, std::span<const int32_t>(r.prompt), false};
  absl::Status st = loop->Step(std::span<StepSequence>(&s, 1), &out);
  EXPECT_TRUE(st.ok()) << st;
  for (int64_t i = 0; st.ok() && i < r.max_tokens; ++i) {
    const int32_t next = SampleToken(out.logits[0], r.sampling, static_cast<uint64_t>(i));
    res.tokens.push_back(next);
    if (r.logprobs >= 0) res.logprobs.push_back(ComputeLogprobs(out.logits[0], next, r.logprobs));
    if (!r.ignore_eos && std::find(eos_ids.begin(), eos_ids.end(), next) != eos_ids.end()) {
      res.finish = FinishReason::kEos;
      break;
    }
    if (std::find(r.stop_token_ids.begin(), r.stop_token_ids.end(), next) !=
        r.stop_token_ids.end()) {
      res.finish = FinishReason::kStop;
      break;
    }
    if (i + 1 == r.max_tokens) {
      res.finish = FinishReason::kLength;
      break;
    }
    StepSequence d{&seq, std::span<const int32_t>(&res.tokens.back(), 1), false};
    st = loop->Step(std::span<StepSequence>(&d, 1), &out);
    EXPECT_TRUE(st.ok()) << st;
  }
  e.cache().Release(seq);
  res.terminal = true;
  return res;
}

// Folds events into per-request results, checking that each event carries
// at most one token and nothing follows a terminal event.
void Collect(const std::vector<SequenceEvent>& events, std::map<uint64_t, Result>* results) {
  for (const SequenceEvent& ev : events) {
    Result& r = (*results)[ev.id];
    EXPECT_FALSE(r.terminal) << "event for request " << ev.id << " after its last event";
    EXPECT_LE(ev.tokens.size(), 1u);
    if (!r.tokens.empty() && ev.preemptions > r.max_preemptions) r.resumed_after_tokens = true;
    r.tokens.insert(r.tokens.end(), ev.tokens.begin(), ev.tokens.end());
    EXPECT_TRUE(ev.logprobs.empty() || ev.logprobs.size() == ev.tokens.size()) << ev.id;
    r.logprobs.insert(r.logprobs.end(), ev.logprobs.begin(), ev.logprobs.end());
    r.max_preemptions = std::max(r.max_preemptions, ev.preemptions);
    if (ev.finish != FinishReason::kNone || !ev.error.ok()) {
      r.terminal = true;
      r.finish = ev.finish;
      r.error = ev.error;
    }
  }
}

struct Arrival {
  int64_t step;  // added before this step
  GenerationRequest request;
};

// Adds each request before its step and steps until everything finished.
std::map<uint64_t, Result> RunAll(Scheduler& sched, std::vector<Arrival> arrivals,
                                  int64_t max_steps = 100000) {
  std::map<uint64_t, Result> results;
  std::stable_sort(arrivals.begin(), arrivals.end(),
                   [](const Arrival& a, const Arrival& b) { return a.step < b.step; });
  size_t next = 0;
  for (int64_t step = 0; step < max_steps; ++step) {
    while (next < arrivals.size() && arrivals[next].step <= step) {
      const absl::Status st = sched.Add(arrivals[next++].request);
      EXPECT_TRUE(st.ok()) << st;
    }
    std::vector<SequenceEvent> events;
    const bool ran = sched.Step(&events);
    Collect(events, &results);
    if (!ran && next == arrivals.size()) break;
  }
  EXPECT_TRUE(sched.idle());
  return results;
}

GenerationRequest MakeRequest(uint64_t id, int64_t prompt_len, int64_t max_tokens,
                              float temperature = 0.f) {
  GenerationRequest r;
  r.id = id;
  for (int64_t i = 0; i < prompt_len; ++i) {
    r.prompt.push_back(static_cast<int32_t>((id * 7919 + i * 104729 + 13) % 102000));
  }
  r.max_tokens = max_tokens;
  r.sampling.temperature = temperature;
  if (temperature > 0) {
    r.sampling.top_k = 50;
    r.sampling.top_p = 0.9f;
    r.sampling.seed = 1000 + id;
  }
  return r;
}

// Ten requests of 1..150 prompt tokens (across 64-token cache blocks) and
// 1..12 new tokens, half greedy and half sampled, arriving over 6 steps.
std::vector<Arrival> MixedArrivals() {
  const int64_t prompt_lens[] = {5, 1, 70, 33, 150, 64, 12, 65, 2, 40};
  const int64_t max_tokens[] = {8, 6, 4, 12, 3, 1, 10, 5, 9, 7};
  const int64_t steps[] = {0, 0, 0, 1, 1, 2, 3, 3, 5, 6};
  std::vector<Arrival> a;
  for (int i = 0; i < 10; ++i) {
    a.push_back(
        {steps[i], MakeRequest(100 + i, prompt_lens[i], max_tokens[i], i % 2 ? 0.8f : 0.f)});
  }
  return a;
}

std::map<uint64_t, Result> References(Engine& e, const std::vector<Arrival>& arrivals,
                                      const std::vector<int64_t>& eos_ids) {
  std::map<uint64_t, Result> refs;
  for (const Arrival& a : arrivals) refs[a.request.id] = Reference(e, a.request, eos_ids);
  return refs;
}

void ExpectSameResults(const std::map<uint64_t, Result>& refs,
                       const std::map<uint64_t, Result>& results, const std::string& what) {
  ASSERT_EQ(results.size(), refs.size()) << what;
  for (const auto& [id, ref] : refs) {
    const auto it = results.find(id);
    ASSERT_NE(it, results.end()) << what << " request " << id;
    EXPECT_TRUE(it->second.error.ok()) << what << " " << it->second.error;
    EXPECT_TRUE(it->second.terminal) << what << " request " << id;
    EXPECT_EQ(it->second.tokens, ref.tokens) << what << " request " << id;
    EXPECT_EQ(it->second.finish, ref.finish) << what << " request " << id;
  }
}

class SchedulerDTypeTest : public ::testing::TestWithParam<DType> {};

TEST_P(SchedulerDTypeTest, ConcurrentRequestsGiveTheTokensOfRunningAlone) {
  auto e = Engine::Open(GetParam(), 4096);
  ASSERT_NE(e, nullptr);
  Scheduler sched(e->config(), e->loop(), e->cache(), SchedulerOptions{});
  const auto arrivals = MixedArrivals();
  const auto results = RunAll(sched, arrivals);
  ExpectSameResults(References(*e, arrivals, {}), results, "default budget");
  const SchedulerStats st = sched.stats();
  EXPECT_EQ(st.finished_total, 10);
  EXPECT_EQ(st.preemptions_total, 0);
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.waiting, 0);
  EXPECT_EQ(e->cache().free_blocks(), e->cache().num_blocks());
}

TEST_P(SchedulerDTypeTest, ChunkedPrefillBudgetsChangeNoToken) {
  auto e = Engine::Open(GetParam(), 4096);
  ASSERT_NE(e, nullptr);
  const auto arrivals = MixedArrivals();
  const auto refs = References(*e, arrivals, {});
  for (int64_t budget : {1, 3, 7, 64}) {
    SchedulerOptions o;
    o.max_step_tokens = budget;
    o.max_running = 4;
    Scheduler sched(e->config(), e->loop(), e->cache(), o);
    std::map<uint64_t, Result> results;
    // Steps never exceed the budget or max_running.
    const std::vector<Arrival>& sorted = arrivals;  // by step already
    size_t next = 0;
    for (int64_t step = 0; step < 100000; ++step) {
      while (next < sorted.size() && sorted[next].step <= step) {
        ASSERT_TRUE(sched.Add(sorted[next++].request).ok());
      }
      std::vector<SequenceEvent> events;
      const bool ran = sched.Step(&events);
      if (ran) {
        EXPECT_LE(sched.stats().last_step_tokens, budget);
        EXPECT_GE(sched.stats().last_step_tokens, 1);
        EXPECT_LE(sched.stats().last_step_sequences, 4);
      }
      Collect(events, &results);
      if (!ran && next == sorted.size()) break;
    }
    ExpectSameResults(refs, results, "budget " + std::to_string(budget));
    EXPECT_EQ(e->cache().free_blocks(), e->cache().num_blocks());
  }
}

TEST_P(SchedulerDTypeTest, FullCachePreemptsTheYoungestAndRecomputesTheSameTokens) {
  // 3 blocks (192 tokens): room for about two of these sequences at once.
  auto e = Engine::Open(GetParam(), 3 * kLatentBlockTokens);
  ASSERT_NE(e, nullptr);
  std::vector<Arrival> arrivals;
  const int64_t prompt_lens[] = {60, 100, 70, 30, 90, 64, 20, 110};
  for (int i = 0; i < 8; ++i) {
    arrivals.push_back(
        {i / 3, MakeRequest(200 + i, prompt_lens[i], 20 + 4 * i, i % 2 ? 0.f : 1.1f)});
  }
  SchedulerOptions o;
  o.max_step_tokens = 64;
  Scheduler sched(e->config(), e->loop(), e->cache(), o);
  const auto results = RunAll(sched, arrivals);
  EXPECT_GT(sched.stats().preemptions_total, 0);
  // Events report preemptions, and some sequence was preempted after it had
  // generated tokens (recomputed from prompt + generated).
  int resumed = 0;
  for (const auto& [id, r] : results) resumed += r.resumed_after_tokens;
  EXPECT_GT(resumed, 0);
  EXPECT_EQ(e->cache().free_blocks(), e->cache().num_blocks());
  ExpectSameResults(References(*e, arrivals, {}), results, "small cache");
}

// A request resumed on another node (coordinator failover): prompt + the k
// tokens already streamed, output_offset k, max_tokens n - k. It continues
// with exactly the undisturbed run's tokens k..n-1 (the sampler is keyed by
// seed and output position; the re-prefill gives the decode's logits).
TEST_P(SchedulerDTypeTest, ResumedRequestContinuesTheUndisturbedRun) {
  auto e = Engine::Open(GetParam(), 4096);
  ASSERT_NE(e, nullptr);
  for (float temperature : {0.f, 1.1f}) {
    const GenerationRequest whole = MakeRequest(300, 37, 12, temperature);
    const Result ref = Reference(*e, whole, {});
    ASSERT_EQ(ref.tokens.size(), 12u);
    for (int64_t k : {1, 5, 11}) {
      GenerationRequest resumed = whole;
      resumed.id = 301 + k;
      resumed.prompt.insert(resumed.prompt.end(), ref.tokens.begin(), ref.tokens.begin() + k);
      resumed.max_tokens = whole.max_tokens - k;
      resumed.output_offset = k;
      Scheduler sched(e->config(), e->loop(), e->cache(), SchedulerOptions{});
      const auto results = RunAll(sched, {{0, resumed}});
      const Result& got = results.at(resumed.id);
      EXPECT_TRUE(got.error.ok()) << got.error;
      EXPECT_EQ(got.tokens, std::vector<int32_t>(ref.tokens.begin() + k, ref.tokens.end()))
          << "temperature " << temperature << ", resumed after " << k;
      EXPECT_EQ(got.finish, FinishReason::kLength);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Scheduler, SchedulerDTypeTest,
                         ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(SchedulerTest, AddRejectsBadRequestsNamingTheNumbers) {
  auto e = Engine::Open(DType::kF32, 2 * kLatentBlockTokens);
  ASSERT_NE(e, nullptr);
  Scheduler sched(e->config(), e->loop(), e->cache(), SchedulerOptions{});
  // Can never fit the 128-token cache: rejected now, not preempted forever.
  absl::Status st = sched.Add(MakeRequest(1, 100, 29));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("129"), absl::string_view::npos) << st;
  EXPECT_NE(st.message().find("128"), absl::string_view::npos) << st;
  EXPECT_TRUE(sched.Add(MakeRequest(2, 100, 28)).ok());  // exactly fits
  // Over the context length.
  st = sched.Add(MakeRequest(3, 10, e->config().max_position_embeddings));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find(std::to_string(e->config().max_position_embeddings)),
            absl::string_view::npos)
      << st;
  EXPECT_NE(st.message().find("context"), absl::string_view::npos) << st;
  EXPECT_EQ(sched.Add(MakeRequest(4, 0, 1)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sched.Add(MakeRequest(5, 3, 0)).code(), absl::StatusCode::kInvalidArgument);
  GenerationRequest bad_token = MakeRequest(6, 3, 1);
  bad_token.prompt[1] = static_cast<int32_t>(e->config().vocab_size);
  st = sched.Add(bad_token);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("102400"), absl::string_view::npos) << st;
  bad_token.prompt[1] = -1;
  EXPECT_EQ(sched.Add(bad_token).code(), absl::StatusCode::kInvalidArgument);
  GenerationRequest bad_sampling = MakeRequest(7, 3, 1);
  bad_sampling.sampling.top_p = 0.f;
  EXPECT_EQ(sched.Add(bad_sampling).code(), absl::StatusCode::kInvalidArgument);
  // output_offset counts streamed tokens at the end of the prompt: [0, prompt length).
  for (int64_t offset : {int64_t{-1}, int64_t{3}, int64_t{1} << 40}) {
    GenerationRequest bad_offset = MakeRequest(8, 3, 1);
    bad_offset.output_offset = offset;
    st = sched.Add(bad_offset);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << offset;
    EXPECT_NE(st.message().find("output_offset"), absl::string_view::npos) << st;
  }
  EXPECT_EQ(sched.stats().waiting, 1);
}

TEST(SchedulerTest, AddRejectsLogprobsOutOfRangeNamingTheField) {
  auto e = Engine::Open(DType::kF32, 1024);
  ASSERT_NE(e, nullptr);
  Scheduler sched(e->config(), e->loop(), e->cache(), SchedulerOptions{});
  uint64_t id = 1;
  for (int32_t n : {-2, kMaxTopLogprobs + 1, 1000}) {
    GenerationRequest r = MakeRequest(id++, 3, 1);
    r.logprobs = n;
    const absl::Status st = sched.Add(r);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << n;
    EXPECT_NE(st.message().find("logprobs"), absl::string_view::npos) << st;
    EXPECT_NE(st.message().find(std::to_string(n)), absl::string_view::npos) << st;
  }
  for (int32_t n : {-1, 0, kMaxTopLogprobs}) {
    GenerationRequest r = MakeRequest(id++, 3, 1);
    r.logprobs = n;
    EXPECT_TRUE(sched.Add(r).ok()) << n;
  }
}

TEST(SchedulerTest, LogprobsAreThoseOfTheLogitsEachTokenWasSampledFrom) {
  auto e = Engine::Open(DType::kF32, 4096);
  ASSERT_NE(e, nullptr);
  // Mixed greedy and sampled requests in one batch, with none, 0, 3 and 20
  // alternatives; a small step budget chunks the prefills.
  std::vector<Arrival> arrivals = MixedArrivals();
  const int32_t top_ns[] = {kMaxTopLogprobs, 0, 3, -1};
  for (size_t i = 0; i < arrivals.size(); ++i) arrivals[i].request.logprobs = top_ns[i % 4];
  const auto refs = References(*e, arrivals, {});
  SchedulerOptions o;
  o.max_step_tokens = 48;
  Scheduler sched(e->config(), e->loop(), e->cache(), o);
  const auto results = RunAll(sched, arrivals);
  ExpectSameResults(refs, results, "logprobs");
  for (const Arrival& a : arrivals) {
    const GenerationRequest& req = a.request;
    const Result& got = results.at(req.id);
    const Result& ref = refs.at(req.id);
    if (req.logprobs < 0) {
      EXPECT_TRUE(got.logprobs.empty()) << req.id;
      continue;
    }
    ASSERT_EQ(got.logprobs.size(), got.tokens.size()) << req.id;
    ASSERT_EQ(ref.logprobs.size(), got.logprobs.size()) << req.id;
    for (size_t t = 0; t < got.logprobs.size(); ++t) {
      const TokenLogprobs& g = got.logprobs[t];
      const TokenLogprobs& r = ref.logprobs[t];
      EXPECT_EQ(g.token, got.tokens[t]);
      EXPECT_NEAR(g.logprob, r.logprob, 1e-4) << req.id << " token " << t;
      EXPECT_LE(g.logprob, 0.0f);
      ASSERT_EQ(g.top.size(), static_cast<size_t>(req.logprobs)) << req.id;
      ASSERT_EQ(r.top.size(), g.top.size());
      for (size_t k = 0; k < g.top.size(); ++k) {
        EXPECT_EQ(g.top[k].first, r.top[k].first) << req.id << " token " << t << " top " << k;
        EXPECT_NEAR(g.top[k].second, r.top[k].second, 1e-4);
        if (k > 0) {
          EXPECT_GE(g.top[k - 1].second, g.top[k].second);
        }
      }
      if (req.sampling.temperature == 0.0f) {
        // Greedy: the token is the argmax, so its logprob is the largest.
        if (!g.top.empty()) {
          EXPECT_EQ(g.top[0].first, g.token);
          EXPECT_EQ(g.top[0].second, g.logprob);
        }
        EXPECT_GE(g.logprob, std::log(1.0f / static_cast<float>(e->config().vocab_size)));
      }
    }
  }
}

TEST(SchedulerTest, FullQueueIsResourceExhaustedAndLiveIdsAreUnique) {
  auto e = Engine::Open(DType::kF32, 1024);
  ASSERT_NE(e, nullptr);
  SchedulerOptions o;
  o.max_waiting = 2;
  o.max_running = 1;
  Scheduler sched(e->config(), e->loop(), e->cache(), o);
  ASSERT_TRUE(sched.Add(MakeRequest(1, 4, 3)).ok());
  ASSERT_TRUE(sched.Add(MakeRequest(2, 4, 3)).ok());
  EXPECT_EQ(sched.Add(MakeRequest(3, 4, 3)).code(), absl::StatusCode::kResourceExhausted);
  std::vector<SequenceEvent> events;
  ASSERT_TRUE(sched.Step(&events));  // admits 1; 2 still waits
  EXPECT_EQ(sched.stats().running, 1);
  EXPECT_EQ(sched.stats().waiting, 1);
  EXPECT_EQ(sched.Add(MakeRequest(1, 4, 3)).code(), absl::StatusCode::kAlreadyExists);  // running
  EXPECT_EQ(sched.Add(MakeRequest(2, 4, 3)).code(), absl::StatusCode::kAlreadyExists);  // waiting
  ASSERT_TRUE(sched.Add(MakeRequest(3, 4, 3)).ok());
  std::map<uint64_t, Result> results;
  while (sched.Step(&events)) {
  }
  Collect(events, &results);
  EXPECT_EQ(results.size(), 3u);
  EXPECT_TRUE(sched.Add(MakeRequest(1, 4, 3)).ok());  // finished ids may come back
}

TEST(SchedulerTest, CancelFreesBlocksAtOnceAndStopsEvents) {
  auto e = Engine::Open(DType::kF32, 1024);
  ASSERT_NE(e, nullptr);
  Scheduler sched(e->config(), e->loop(), e->cache(), SchedulerOptions{});
  const GenerationRequest keep = MakeRequest(1, 20, 10);
  ASSERT_TRUE(sched.Add(keep).ok());
  ASSERT_TRUE(sched.Add(MakeRequest(2, 130, 10)).ok());  // 3 blocks
  std::vector<SequenceEvent> events;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(sched.Step(&events));
  const int64_t free_before = e->cache().free_blocks();
  EXPECT_TRUE(sched.Cancel(2));
  EXPECT_EQ(e->cache().free_blocks(), free_before + 3);
  EXPECT_FALSE(sched.Cancel(2));
  EXPECT_FALSE(sched.Cancel(99));
  ASSERT_TRUE(sched.Add(MakeRequest(3, 5, 5)).ok());
  EXPECT_TRUE(sched.Cancel(3));  // still waiting
  std::map<uint64_t, Result> results;
  Collect(events, &results);
  events.clear();
  while (sched.Step(&events)) {
  }
  for (const SequenceEvent& ev : events) {
    EXPECT_NE(ev.id, 2u);
    EXPECT_NE(ev.id, 3u);
  }
  Collect(events, &results);
  EXPECT_EQ(results[1].tokens, Reference(*e, keep, {}).tokens);
  EXPECT_EQ(e->cache().free_blocks(), e->cache().num_blocks());
  EXPECT_TRUE(sched.idle());
}

TEST(SchedulerTest, ExpertFailureFailsExactlyTheSequencesOfThatStep) {
  auto e = Engine::Open(DType::kF32, 2048);
  ASSERT_NE(e, nullptr);
  SchedulerOptions o;
  o.max_running = 2;
  Scheduler sched(e->config(), e->loop(), e->cache(), o);
  ASSERT_TRUE(sched.Add(MakeRequest(1, 10, 8)).ok());
  ASSERT_TRUE(sched.Add(MakeRequest(2, 70, 8)).ok());
  const GenerationRequest waiting = MakeRequest(3, 15, 6, 0.7f);
  ASSERT_TRUE(sched.Add(waiting).ok());  // waits: max_running = 2
  std::vector<SequenceEvent> events;
  ASSERT_TRUE(sched.Step(&events));  // prefill of 1 and 2
  ASSERT_TRUE(sched.Step(&events));  // first decode
  // One MoE layer: one dispatch per step (two with ping-pong micro-batches);
  // the next call fails the next step.
  e->FailDispatch(e->dispatches());
  const int64_t free_before = e->cache().free_blocks();
  std::map<uint64_t, Result> results;
  Collect(events, &results);
  events.clear();
  ASSERT_TRUE(sched.Step(&events));
  ASSERT_EQ(events.size(), 2u);
  for (const SequenceEvent& ev : events) {
    EXPECT_TRUE(ev.id == 1 || ev.id == 2) << ev.id;
    EXPECT_EQ(ev.error.code(), absl::StatusCode::kUnavailable) << ev.error;
    EXPECT_NE(ev.error.message().find("injected"), absl::string_view::npos) << ev.error;
    EXPECT_TRUE(ev.tokens.empty());
  }
  Collect(events, &results);
  EXPECT_EQ(sched.stats().failed_steps_total, 1);
  EXPECT_EQ(sched.stats().running, 0);
  EXPECT_EQ(sched.stats().waiting, 1);
  EXPECT_EQ(e->cache().free_blocks(), e->cache().num_blocks());
  EXPECT_GT(e->cache().free_blocks(), free_before);
  // The waiting request and one added afterwards complete unharmed.
  const GenerationRequest later = MakeRequest(4, 40, 7);
  ASSERT_TRUE(sched.Add(later).ok());
  events.clear();
  while (sched.Step(&events)) {
  }
  Collect(events, &results);
  EXPECT_TRUE(results[3].error.ok());
  EXPECT_TRUE(results[4].error.ok());
  EXPECT_EQ(results[3].tokens, Reference(*e, waiting, {}).tokens);
  EXPECT_EQ(results[4].tokens, Reference(*e, later, {}).tokens);
  EXPECT_EQ(results[4].finish, FinishReason::kLength);
  EXPECT_EQ(sched.stats().failed_steps_total, 1);
  EXPECT_EQ(e->cache().free_blocks(), e->cache().num_blocks());
}

TEST(SchedulerTest, FinishReasonsEosStopAndIgnoreEos) {
  auto e = Engine::Open(DType::kF32, 1024);
  ASSERT_NE(e, nullptr);
  // The tokens this prompt produces with nothing ending it early.
  const GenerationRequest base = MakeRequest(1, 9, 12);
  const std::vector<int32_t> free_run = Reference(*e, base, {}).tokens;
  ASSERT_EQ(free_run.size(), 12u);
  const int32_t eos = free_run[4];
  const size_t first_eos = std::find(free_run.begin(), free_run.end(), eos) - free_run.begin();
  const int32_t stop = free_run[2];
  const size_t first_stop = std::find(free_run.begin(), free_run.end(), stop) - free_run.begin();

  SchedulerOptions o;
  o.eos_token_ids = {eos};
  Scheduler sched(e->config(), e->loop(), e->cache(), o);
  GenerationRequest with_eos = base;
  with_eos.id = 1;
  GenerationRequest ignoring = base;
  ignoring.id = 2;
  ignoring.ignore_eos = true;
  GenerationRequest with_stop = base;
  with_stop.id = 3;
  with_stop.stop_token_ids = {stop};
  with_stop.ignore_eos = true;
  const auto results = RunAll(sched, {{0, with_eos}, {0, ignoring}, {0, with_stop}});
  // The finishing token is part of the output.
  EXPECT_EQ(results.at(1).finish, FinishReason::kEos);
  EXPECT_EQ(results.at(1).tokens,
            std::vector<int32_t>(free_run.begin(), free_run.begin() + first_eos + 1));
  EXPECT_EQ(results.at(2).finish, FinishReason::kLength);
  EXPECT_EQ(results.at(2).tokens, free_run);
  EXPECT_EQ(results.at(3).finish, FinishReason::kStop);
  EXPECT_EQ(results.at(3).tokens,
            std::vector<int32_t>(free_run.begin(), free_run.begin() + first_stop + 1));
  EXPECT_EQ(sched.stats().finished_total, 3);
  EXPECT_EQ(e->cache().free_blocks(), e->cache().num_blocks());
}

TEST(SchedulerTest, FailAllEndsEveryLiveRequestAndFreesTheCache) {
  auto e = Engine::Open(DType::kF32, 1024);
  ASSERT_NE(e, nullptr);
  SchedulerOptions o;
  o.max_running = 2;
  Scheduler sched(e->config(), e->loop(), e->cache(), o);
  for (uint64_t id = 1; id <= 3; ++id) ASSERT_TRUE(sched.Add(MakeRequest(id, 30, 10)).ok());
  std::vector<SequenceEvent> events;
  ASSERT_TRUE(sched.Step(&events));
  ASSERT_TRUE(sched.Step(&events));
  events.clear();
  sched.FailAll(absl::UnavailableError("node shutting down"), &events);
  ASSERT_EQ(events.size(), 3u);
  for (const SequenceEvent& ev : events) {
    EXPECT_EQ(ev.error.code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_TRUE(sched.idle());
  EXPECT_EQ(e->cache().free_blocks(), e->cache().num_blocks());
  events.clear();
  EXPECT_FALSE(sched.Step(&events));
  EXPECT_TRUE(events.empty());
}

}  // namespace
}  // namespace dsv2
