// AttentionEngine: the engine thread of an attention node. It owns the
// Scheduler (and through it the LayerLoop and the latent cache) and runs
// steps while there is work; other threads (gRPC handlers) submit and
// cancel requests through a bounded inbox and read each request's events
// from its RequestStream.
//
// Threads: one engine thread, started by the constructor and joined by
// Shutdown/the destructor; it is the only thread that touches the
// scheduler, loop and cache. Every public method is thread-safe.
#ifndef DSV2_ATTENTION_SERVICE_ENGINE_H_
#define DSV2_ATTENTION_SERVICE_ENGINE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "attention_service/scheduler.h"

namespace dsv2 {

// The events of one request, in order; the last one is terminal (finish
// reason or error).
class RequestStream {
 public:
  // Waits up to `timeout` for events; returns those queued (possibly none).
  std::vector<SequenceEvent> Next(absl::Duration timeout);
  void Push(SequenceEvent event);

 private:
  absl::Mutex mu_;
  std::deque<SequenceEvent> events_ ABSL_GUARDED_BY(mu_);
};

struct EngineStats {
  SchedulerStats scheduler;
  int64_t cache_capacity_tokens = 0;
  int64_t cache_free_tokens = 0;
  bool draining = false;
  // Submit/Cancel calls waiting for the engine thread to take them (it does
  // between steps): lets a test see that a cancel has reached the engine.
  int64_t pending_commands = 0;
};

class AttentionEngine {
 public:
  // `scheduler` and `cache` (the scheduler's) are used only by the engine
  // thread from now on; both must outlive the engine.
  // `on_step` (may be empty) runs on the engine thread after every step with
  // the scheduler's stats (metrics: batch size, step time).
  AttentionEngine(Scheduler& scheduler, const LatentCache& cache,
                  std::function<void(const SchedulerStats&)> on_step = nullptr);
  ~AttentionEngine();

  // Queues a request; its events arrive on the returned stream. The
  // admission checks of Scheduler::Add run on the engine thread and their
  // error is returned here (waits at most one step). Unavailable while
  // draining.
  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(GenerationRequest request);
  // Frees a request at once (no further events). False if not live.
  bool Cancel(uint64_t id);

  // Stops admitting (Submit -> Unavailable) and waits until every live
  // request finished or `timeout` passed; then fails what is left with
  // Unavailable. Returns whether everything finished.
  bool Drain(absl::Duration timeout);
  // Stops admitting and ends every live request at once with Aborted: the
  // node is leaving and its coordinator resumes them on other nodes
  // (DESIGN.md section 9, rolling updates).
  void HandOff();
  // Drains with zero timeout and joins the engine thread. Idempotent.
  void Shutdown();

  EngineStats stats() const;

 private:
  struct Command;
  void Run();
  // Stops admitting and queues a command that ends every live request with
  // `error` (Drain past its timeout, HandOff).
  void StopAdmittingAndFailAllLocked(absl::Status error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Deliver(std::vector<SequenceEvent>& events);

  Scheduler& scheduler_;
  const LatentCache& cache_;
  const std::function<void(const SchedulerStats&)> on_step_;

  mutable absl::Mutex mu_;
  std::deque<std::shared_ptr<Command>> inbox_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::shared_ptr<RequestStream>> streams_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool idle_ ABSL_GUARDED_BY(mu_) = true;
  EngineStats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace dsv2

#endif  // DSV2_ATTENTION_SERVICE_ENGINE_H_
