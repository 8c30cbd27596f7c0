// The seam between the layer loop and the routed experts (DESIGN.md section
// 1): the loop sends one dispatch per MoE layer and later collects the
// unweighted expert output rows. The single-process engine plugs in an
// in-process backend (tools/ composes it with expert_service's ExpertCompute);
// the cluster plugs in a data-plane backend.
//
// With ping-pong (DESIGN.md section 3) a step has two micro-batches, so up to
// two tickets are in flight at once; a backend must accept any number of
// outstanding tickets and waits on them in any order.
//
// Thread-safety: one engine thread calls Send and Wait; implementations may
// complete the work on other threads.
#ifndef DSV2_ATTENTION_SERVICE_EXPERT_BACKEND_H_
#define DSV2_ATTENTION_SERVICE_EXPERT_BACKEND_H_

#include <cstdint>
#include <functional>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "router/dispatch.h"

namespace dsv2 {

// Where a dispatch comes from, for the wire header and replica choice
// (DESIGN.md sections 4 and 5).
struct DispatchContext {
  // The micro-batch of the step: 0, or 1 for the second half of a ping-pong
  // step.
  int32_t micro_batch = 0;
  // Picks a replica deterministically when an expert has several: the id of
  // the micro-batch's first sequence (StepSequence::id).
  uint64_t replica_key = 0;
};

class ExpertBackend {
 public:
  virtual ~ExpertBackend() = default;

  // Starts the dispatch; returns a ticket for Wait. The call must not block
  // on the expert computation when the backend is remote, so the caller can
  // overlap its shared-expert work with the round trip.
  virtual absl::StatusOr<uint64_t> Send(router::ExpertDispatch dispatch,
                                        const DispatchContext& context) = 0;

  // Send with the default context (micro-batch 0, replica key 0).
  // Implementations add `using ExpertBackend::Send;` to keep it visible.
  absl::StatusOr<uint64_t> Send(router::ExpertDispatch dispatch) {
    return Send(std::move(dispatch), DispatchContext{});
  }

  // The reply for `ticket` (each ticket is waited on exactly once).
  // Unavailable when the experts could not be reached in time; the caller
  // keeps the layer's input so the step can be re-sent.
  virtual absl::StatusOr<router::ExpertReply> Wait(uint64_t ticket) = 0;

  // Abandons a ticket that will never be waited on (a step failed while it
  // was in flight): the backend drops its state and its reply, if one still
  // comes. Never blocks; called from the engine thread, like Send and Wait.
  // Backends that keep per-ticket state must override it; the default does
  // nothing.
  virtual void Forget(uint64_t ticket) { (void)ticket; }
};

// Calls `handler` synchronously inside Send (an ExpertCompute::Handle in the
// single-process engine); Wait returns the stored result. Any number of
// tickets may be outstanding.
class InProcessExpertBackend : public ExpertBackend {
 public:
  using Handler = std::function<absl::StatusOr<router::ExpertReply>(const router::ExpertDispatch&)>;
  explicit InProcessExpertBackend(Handler handler) : handler_(std::move(handler)) {}

  using ExpertBackend::Send;
  absl::StatusOr<uint64_t> Send(router::ExpertDispatch dispatch,
                                const DispatchContext& context) override;
  absl::StatusOr<router::ExpertReply> Wait(uint64_t ticket) override;
  void Forget(uint64_t ticket) override;

  // Tickets sent and neither waited on nor forgotten (tests: nothing leaks).
  size_t num_outstanding() const { return pending_.size(); }

 private:
  Handler handler_;
  uint64_t next_ticket_ = 1;
  struct Result {
    absl::Status status;  // the handler's error, or OK with `reply`
    router::ExpertReply reply;
  };
  // Ticket -> result; a few entries at most (one per micro-batch in flight).
  std::map<uint64_t, Result> pending_;
};

}  // namespace dsv2

#endif  // DSV2_ATTENTION_SERVICE_EXPERT_BACKEND_H_
