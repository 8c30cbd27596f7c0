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

#include "absl/container/flat_hash_map.h"
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
};

enum class FinishReason { kNone, kLength, kEos, kStop };

// What one step produced for one request.
struct SequenceEvent {
  uint64_t id = 0;
  std::vector<int32_t> tokens;  // newly sampled (0 or 1 per step)
  FinishReason finish = FinishReason::kNone;  // != kNone: last event
  absl::Status error;           // not OK: last event, the request failed
  int32_t preemptions = 0;      // times this request was preempted so far
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
  // message), bad sampling parameters. AlreadyExists: the id is live.
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
  // ... implementation-defined members
  const ModelConfig& config_;
  LayerLoop& loop_;
  LatentCache& cache_;
  const SchedulerOptions options_;
  uint64_t next_admit_order_ = 0;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // admission order
  SchedulerStats stats_;
};

}  // namespace dsv2

#endif  // DSV2_ATTENTION_SERVICE_SCHEDULER_H_
