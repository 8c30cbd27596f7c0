// Scheduler: continuous batching over one LayerLoop and its paged latent
// cache (DESIGN.md sections 2, 6 and 9). Sequences join between steps;
// every step mixes decode tokens and prefill chunks under a token budget;
// when the cache cannot hold the next step the youngest running sequence is
// preempted (its blocks freed, recomputed later from prompt + generated
// tokens, which gives the same tokens: attention is chunk-invariant and
// sampling is keyed by output position); a request whose prompt +
// max_tokens can never fit the cache is rejected at Add, never preempted
// forever.
//
// Step composition, in order: every running sequence that is decoding gets
// its one token; then prefill chunks (the oldest sequence first) fill what
// is left of max_step_tokens; then waiting sequences are admitted (oldest
// first; preempted ones go back to the front of the queue) while
// max_running allows and the cache has blocks for their first chunk.
//
// Decode tokens count against max_step_tokens too: with more decoding
// sequences than the budget, the oldest decode first. A step that preempted
// admits nobody (the freed blocks would go to a sequence that the next step
// preempts again). A preempted sequence keeps its first admission order, so
// the oldest sequences always make progress.
//
// Events: one per sampled token (a partial prefill chunk yields none), the
// last one carrying the finish reason or the error; a finishing token (EOS,
// stop token) is part of the output. finished_total counts requests that
// ended with a finish reason (not failed or cancelled ones).
//
// A step that fails (e.g. UNAVAILABLE from the experts) fails exactly the
// sequences in that step: each gets a terminal event with the error and its
// blocks are freed; everything else carries on.
//
// Thread-safety: not thread-safe; one engine thread owns the scheduler, the
// LayerLoop and the cache.
#ifndef DSV2_ATTENTION_SERVICE_SCHEDULER_H_
#define DSV2_ATTENTION_SERVICE_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "attention_service/latent_cache.h"
#include "attention_service/layer_loop.h"
#include "model/config.h"
#include "model/sampling.h"

namespace dsv2 {

struct GenerationRequest {
  uint64_t id = 0;              // unique among live requests
  std::vector<int32_t> prompt;  // token ids, verbatim
  SamplingParams sampling;
  int64_t max_tokens = 1;       // >= 1
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;  // end generation (token is emitted)
  // -1: no log-probabilities; 0..kMaxTopLogprobs: each event carries the
  // sampled token's logprob and this many most likely alternatives.
  int32_t logprobs = -1;
  // Output position of the first token this request samples, >= 0 and
  // < the prompt length: non-zero for a request resumed on another node
  // (the prompt then ends with the output_offset tokens already streamed).
  // The sampler is keyed by (seed, output_offset + i), so a resumed request
  // samples what the undisturbed one would have.
  int64_t output_offset = 0;
};

enum class FinishReason { kNone, kLength, kEos, kStop };

// What one step produced for one request.
struct SequenceEvent {
  uint64_t id = 0;
  std::vector<int32_t> tokens;  // newly sampled (0 or 1 per step)
  FinishReason finish = FinishReason::kNone;  // != kNone: last event
  absl::Status error;           // not OK: last event, the request failed
  int32_t preemptions = 0;      // times this request was preempted so far
  // One per `tokens` entry when the request set logprobs >= 0, from the
  // logits the token was sampled from (ComputeLogprobs); else empty.
  std::vector<TokenLogprobs> logprobs;
};

struct SchedulerOptions {
  int64_t max_step_tokens = 512;  // token budget of one step (>= 1)
  int64_t max_running = 64;       // sequences in one step (>= 1)
  int64_t max_waiting = 1024;     // admission queue bound
  // Tokens that end generation unless ignore_eos (the config's
  // eos_token_id, or the tokenizer's EOS).
  std::vector<int64_t> eos_token_ids;
};

struct SchedulerStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t steps_total = 0;
  int64_t failed_steps_total = 0;
  int64_t preemptions_total = 0;
  int64_t finished_total = 0;
  int64_t last_step_tokens = 0;     // tokens in the last step
  int64_t last_step_sequences = 0;  // sequences in the last step
  StepStats last_step;              // the layer loop's figures of the last step
};

class Scheduler {
 public:
  // `loop` and `cache` must outlive the scheduler; `loop` runs on `cache`.
  Scheduler(const ModelConfig& config, LayerLoop& loop, LatentCache& cache,
            SchedulerOptions options);
  ~Scheduler();

  // Queues a request. InvalidArgument: empty prompt, a token id outside the
  // vocabulary, max_tokens < 1, prompt + max_tokens over
  // max_position_embeddings or over the cache capacity (both numbers in the
  // message), bad sampling parameters, logprobs outside
  // [-1, kMaxTopLogprobs]. AlreadyExists: the id is live.
  // ResourceExhausted: max_waiting requests are already waiting.
  absl::Status Add(GenerationRequest request);

  // Removes a live request and frees its cache blocks at once; no event
  // follows. False when no live request has that id.
  bool Cancel(uint64_t id);

  // Fails every live request with `error` (terminal events), freeing all
  // blocks (used when draining times out or the node shuts down).
  void FailAll(const absl::Status& error, std::vector<SequenceEvent>* events);

  // Runs one step if there is work, appending the events it produced.
  // Returns false when there was nothing to run.
  bool Step(std::vector<SequenceEvent>* events);

  bool idle() const;
  SchedulerStats stats() const;

 private:
  struct Sequence;
  // One sequence's part of the step being composed: `num_tokens` of its
  // pending input, from cache.num_tokens on.
  struct Chunk {
    Sequence* seq;
    int64_t num_tokens;
  };

  // Composes the running sequences' chunks (decodes, then prefill chunks)
  // into `plan` and reserves their blocks. Returns the sequence whose
  // reservation failed (the plan is then incomplete), else nullptr;
  // `budget` is left with the step tokens still unused.
  Sequence* PlanRunning(std::vector<Chunk>* plan, int64_t* budget);
  // Admits waiting sequences into `plan` while max_running, the budget and
  // the free blocks allow.
  void Admit(std::vector<Chunk>* plan, int64_t* budget);
  // Frees the youngest running sequence's blocks and queues it at the
  // front of waiting_ for recomputation.
  void PreemptYoungest();
  // Releases `seq`'s blocks and forgets its id; the caller drops it.
  void Retire(Sequence& seq);
  // Samples the next token of `seq` from its last position's logits and
  // appends the event; true when the request finished.
  bool SampleAndEmit(Sequence& seq, const std::vector<float>& logits,
                     std::vector<SequenceEvent>* events);
  bool IsEos(int32_t token) const;

  // Constant after construction.
  const ModelConfig& config_;
  LayerLoop& loop_;
  LatentCache& cache_;
  const SchedulerOptions options_;

  // Owned by the engine thread.
  uint64_t next_admit_order_ = 0;
  std::deque<std::unique_ptr<Sequence>> waiting_;   // front = next to admit
  std::vector<std::unique_ptr<Sequence>> running_;  // ascending admit order
  absl::flat_hash_set<uint64_t> live_ids_;          // waiting_ + running_
  SchedulerStats stats_;
};

}  // namespace dsv2

#endif  // DSV2_ATTENTION_SERVICE_SCHEDULER_H_
