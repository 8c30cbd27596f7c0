#include "attention_service/scheduler.h"

#include <algorithm>
#include <limits>
#include <span>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dsv2 {

// A live request. Its pending input is tokens[cache.num_tokens:]: the
// prompt remainder while prefilling, the last sampled token while decoding,
// and prompt + every generated token after a preemption (recomputation; the
// last position's logits then give the next token, at sampling position
// num_generated(), so the same token comes out).
struct Scheduler::Sequence {
  GenerationRequest request;
  std::vector<int32_t> tokens;  // prompt + generated
  SequenceCache cache;
  bool admitted = false;     // admit_order is set (kept across preemptions)
  uint64_t admit_order = 0;  // larger = younger
  int32_t preemptions = 0;

  int64_t num_generated() const {
    return static_cast<int64_t>(tokens.size() - request.prompt.size());
  }
  int64_t pending() const { return static_cast<int64_t>(tokens.size()) - cache.num_tokens; }
  // One token to feed and at least one already generated: a decode step.
  // Everything else (a prompt, a recomputation) is prefill.
  bool decoding() const { return pending() == 1 && num_generated() > 0; }
};

namespace {

SchedulerOptions Normalized(SchedulerOptions o) {
  // Both are validated where they come from (flags); clamp rather than
  // build a scheduler that can never run a step.
  o.max_step_tokens = std::max<int64_t>(1, o.max_step_tokens);
  o.max_running = std::max<int64_t>(1, o.max_running);
  o.max_waiting = std::max<int64_t>(0, o.max_waiting);
  return o;
}

SequenceEvent ErrorEvent(uint64_t id, int32_t preemptions, absl::Status error) {
  SequenceEvent e;
  e.id = id;
  e.error = std::move(error);
  e.preemptions = preemptions;
  return e;
}

}  // namespace

Scheduler::Scheduler(const ModelConfig& config, LayerLoop& loop, LatentCache& cache,
                     SchedulerOptions options)
    : config_(config), loop_(loop), cache_(cache), options_(Normalized(std::move(options))) {}

Scheduler::~Scheduler() {
  // The cache outlives the scheduler: give back what live requests hold.
  for (auto& s : running_) cache_.Release(s->cache);
  for (auto& s : waiting_) cache_.Release(s->cache);
}

absl::Status Scheduler::Add(GenerationRequest request) {
  const int64_t num_prompt = static_cast<int64_t>(request.prompt.size());
  if (num_prompt == 0) return absl::InvalidArgumentError("the prompt is empty");
  for (int64_t i = 0; i < num_prompt; ++i) {
    const int32_t t = request.prompt[i];
    if (t < 0 || t >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token ", i, " (id ", t,
                                                     ") is outside the vocabulary [0, ",
                                                     config_.vocab_size, ")"));
    }
  }
  if (request.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens = ", request.max_tokens, " must be >= 1"));
  }
  // Compared without forming the sum first, so a huge max_tokens cannot
  // overflow; the message's sum is then only informative.
  const int64_t total =
      num_prompt + std::min<int64_t>(request.max_tokens, std::numeric_limits<int64_t>::max() / 2);
  if (request.max_tokens > config_.max_position_embeddings - num_prompt) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", num_prompt, " tokens) + max_tokens (", request.max_tokens, ") = ", total,
        " exceeds the context length ", config_.max_position_embeddings));
  }
  // The final token is never fed back, so total - 1 positions would do;
  // rejecting at total keeps the rule simple and equal to the context check.
  if (request.max_tokens > cache_.capacity_tokens() - num_prompt) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", num_prompt, " tokens) + max_tokens (", request.max_tokens, ") = ", total,
        " exceeds the cache capacity ", cache_.capacity_tokens(), " tokens"));
  }
  if (absl::Status st = ValidateSamplingParams(request.sampling); !st.ok()) return st;
  if (request.logprobs < -1 || request.logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("logprobs = ", request.logprobs,
                                                   " must be in [0, ", kMaxTopLogprobs,
                                                   "] (or -1 for none)"));
  }
  if (request.output_offset < 0 || request.output_offset >= num_prompt) {
    return absl::InvalidArgumentError(absl::StrCat("output_offset = ", request.output_offset,
                                                   " must be in [0, prompt length ", num_prompt,
                                                   ")"));
  }
  if (live_ids_.contains(request.id)) {
    return absl::AlreadyExistsError(absl::StrCat("request ", request.id, " is already live"));
  }
  if (static_cast<int64_t>(waiting_.size()) >= options_.max_waiting) {
    return absl::ResourceExhaustedError(absl::StrCat("admission queue full: ", waiting_.size(),
                                                     " of ", options_.max_waiting,
                                                     " requests waiting"));
  }
  auto seq = std::make_unique<Sequence>();
  seq->tokens = request.prompt;
  seq->tokens.reserve(num_prompt + request.max_tokens);
  seq->request = std::move(request);
  live_ids_.insert(seq->request.id);
  waiting_.push_back(std::move(seq));
  return absl::OkStatus();
}

void Scheduler::Retire(Sequence& seq) {
  cache_.Release(seq.cache);
  live_ids_.erase(seq.request.id);
}

bool Scheduler::Cancel(uint64_t id) {
  if (!live_ids_.contains(id)) return false;
  const auto match = [id](const std::unique_ptr<Sequence>& s) { return s->request.id == id; };
  if (auto it = std::find_if(running_.begin(), running_.end(), match); it != running_.end()) {
    Retire(**it);
    running_.erase(it);
    return true;
  }
  if (auto it = std::find_if(waiting_.begin(), waiting_.end(), match); it != waiting_.end()) {
    Retire(**it);
    waiting_.erase(it);
    return true;
  }
  return false;  // unreachable: live_ids_ mirrors the two queues
}

void Scheduler::FailAll(const absl::Status& error, std::vector<SequenceEvent>* events) {
  for (auto& s : running_) {
    events->push_back(ErrorEvent(s->request.id, s->preemptions, error));
    Retire(*s);
  }
  for (auto& s : waiting_) {
    events->push_back(ErrorEvent(s->request.id, s->preemptions, error));
    Retire(*s);
  }
  running_.clear();
  waiting_.clear();
}

bool Scheduler::idle() const { return running_.empty() && waiting_.empty(); }

SchedulerStats Scheduler::stats() const {
  SchedulerStats s = stats_;
  s.running = static_cast<int64_t>(running_.size());
  s.waiting = static_cast<int64_t>(waiting_.size());
  return s;
}

bool Scheduler::IsEos(int32_t token) const {
  return std::find(options_.eos_token_ids.begin(), options_.eos_token_ids.end(), token) !=
         options_.eos_token_ids.end();
}

Scheduler::Sequence* Scheduler::PlanRunning(std::vector<Chunk>* plan, int64_t* budget) {
  plan->clear();
  *budget = options_.max_step_tokens;
  // Decode tokens first (oldest first; the budget bounds them too), then
  // prefill chunks, oldest first, each as long as the budget allows.
  for (auto& s : running_) {
    if (*budget == 0) break;
    if (!s->decoding()) continue;
    plan->push_back({s.get(), 1});
    --*budget;
  }
  for (auto& s : running_) {
    if (*budget == 0) break;
    if (s->decoding()) continue;
    const int64_t n = std::min(s->pending(), *budget);
    plan->push_back({s.get(), n});
    *budget -= n;
  }
  for (const Chunk& c : *plan) {
    if (!cache_.Reserve(c.seq->cache, c.seq->cache.num_tokens + c.num_tokens).ok()) return c.seq;
  }
  return nullptr;
}

void Scheduler::Admit(std::vector<Chunk>* plan, int64_t* budget) {
  while (!waiting_.empty() && *budget > 0 &&
         static_cast<int64_t>(running_.size()) < options_.max_running) {
    Sequence& s = *waiting_.front();
    const int64_t n = std::min(s.pending(), *budget);  // cache.num_tokens == 0 here
    if (LatentCache::BlocksForTokens(n) > cache_.free_blocks()) break;
    if (!cache_.Reserve(s.cache, n).ok()) break;  // not reached: checked above
    if (!s.admitted) {
      s.admitted = true;
      s.admit_order = next_admit_order_++;
    }
    plan->push_back({&s, n});
    *budget -= n;
    // A re-admitted sequence keeps its first admit order (so it is not
    // always the youngest, preempted again and again); keep running_ sorted.
    const auto pos = std::upper_bound(
        running_.begin(), running_.end(), s.admit_order,
        [](uint64_t order, const std::unique_ptr<Sequence>& r) { return order < r->admit_order; });
    running_.insert(pos, std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

void Scheduler::PreemptYoungest() {
  std::unique_ptr<Sequence> s = std::move(running_.back());
  running_.pop_back();
  cache_.Release(s->cache);  // num_tokens = 0: recompute prompt + generated
  ++s->preemptions;
  ++stats_.preemptions_total;
  waiting_.push_front(std::move(s));
}

bool Scheduler::SampleAndEmit(Sequence& seq, const std::vector<float>& logits,
                              std::vector<SequenceEvent>* events) {
  const int64_t position = seq.num_generated();
  const int32_t token = SampleToken(logits, seq.request.sampling,
                                    static_cast<uint64_t>(seq.request.output_offset + position));
  seq.tokens.push_back(token);
  SequenceEvent e;
  e.id = seq.request.id;
  e.tokens.push_back(token);
  e.preemptions = seq.preemptions;
  if (seq.request.logprobs >= 0) {
    e.logprobs.push_back(ComputeLogprobs(logits, token, seq.request.logprobs));
  }
  const auto& stops = seq.request.stop_token_ids;
  // The order of `dsv2 run`: EOS, then stop tokens, then the length limit.
  if (!seq.request.ignore_eos && IsEos(token)) {
    e.finish = FinishReason::kEos;
  } else if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
    e.finish = FinishReason::kStop;
  } else if (position + 1 >= seq.request.max_tokens) {
    e.finish = FinishReason::kLength;
  }
  const bool finished = e.finish != FinishReason::kNone;
  events->push_back(std::move(e));
  return finished;
}

bool Scheduler::Step(std::vector<SequenceEvent>* events) {
  if (idle()) return false;
  std::vector<Chunk> plan;
  int64_t budget = 0;
  bool preempted = false;
  while (Sequence* short_of_blocks = PlanRunning(&plan, &budget)) {
    if (running_.size() == 1) {
      // Add admits only requests whose prompt + max_tokens fit the whole
      // cache, so a sequence alone always fits: only a bug gets here.
      Sequence& s = *short_of_blocks;
      events->push_back(
          ErrorEvent(s.request.id, s.preemptions,
                     absl::InternalError(absl::StrCat("request ", s.request.id,
                                                      " does not fit the latent cache alone"))));
      Retire(s);
      running_.clear();
      continue;
    }
    // The youngest may be the sequence that came up short or one already
    // in the plan: the plan is recomposed from scratch either way.
    PreemptYoungest();
    preempted = true;
  }
  // Admitting right after a preemption would hand the freed blocks to the
  // preempted sequence (or a newer one) only to preempt it again next step.
  if (!preempted) Admit(&plan, &budget);
  if (plan.empty()) return true;  // only reached after the Internal error above

  std::vector<StepSequence> batch;
  batch.reserve(plan.size());
  int64_t step_tokens = 0;
  for (const Chunk& c : plan) {
    StepSequence s;
    s.cache = &c.seq->cache;
    s.tokens = std::span<const int32_t>(c.seq->tokens)
                   .subspan(static_cast<size_t>(c.seq->cache.num_tokens),
                            static_cast<size_t>(c.num_tokens));
    s.id = c.seq->request.id;
    batch.push_back(s);
    step_tokens += c.num_tokens;
  }
  ++stats_.steps_total;
  stats_.last_step_tokens = step_tokens;
  stats_.last_step_sequences = static_cast<int64_t>(plan.size());

  StepOutput out;
  const absl::Status st = loop_.Step(std::span<StepSequence>(batch), &out);
  stats_.last_step = out.stats;
  std::vector<Sequence*> done;
  if (!st.ok()) {
    ++stats_.failed_steps_total;
    for (const Chunk& c : plan) {
      Sequence& s = *c.seq;
      events->push_back(ErrorEvent(
          s.request.id, s.preemptions,
          absl::Status(st.code(), absl::StrCat("request ", s.request.id, ": step of ", plan.size(),
                                               " sequences and ", step_tokens,
                                               " tokens failed: ", st.message()))));
      done.push_back(&s);
    }
  } else {
    for (size_t i = 0; i < plan.size(); ++i) {
      Sequence& s = *plan[i].seq;
      // Only a chunk that reaches the end of the pending input yields a
      // token; a partial prefill chunk's logits are not needed.
      if (s.pending() != 0) continue;
      if (SampleAndEmit(s, out.logits[i], events)) {
        ++stats_.finished_total;
        done.push_back(&s);
      }
    }
  }
  if (!done.empty()) {
    for (Sequence* s : done) Retire(*s);
    std::erase_if(running_, [&done](const std::unique_ptr<Sequence>& r) {
      return std::find(done.begin(), done.end(), r.get()) != done.end();
    });
  }
  return true;
}

}  // namespace dsv2
