// The seam between the layer loop and the routed experts (DESIGN.md section
// 1): the loop sends one dispatch per MoE layer and later collects the
// unweighted expert output rows. The single-process engine plugs in an
// in-process backend (tools/ composes it with expert_service's ExpertShard);
// the cluster plugs in a data-plane backend.
//
// Thread-safety: one engine thread calls Send and Wait; implementations may
// complete the work on other threads.
#ifndef DSV2_ATTENTION_SERVICE_EXPERT_BACKEND_H_
#define DSV2_ATTENTION_SERVICE_EXPERT_BACKEND_H_

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "router/dispatch.h"

namespace dsv2 {

class ExpertBackend {
 public:
  virtual ~ExpertBackend() = default;

  // Starts the dispatch; returns a ticket for Wait. The call must not block
  // on the expert computation when the backend is remote, so the caller can
  // overlap its shared-expert work with the round trip.
  virtual absl::StatusOr<uint64_t> Send(router::ExpertDispatch dispatch) = 0;

  // The reply for `ticket` (each ticket is waited on exactly once).
  // Unavailable when the experts could not be reached in time; the caller
  // keeps the layer's input so the step can be re-sent.
  virtual absl::StatusOr<router::ExpertReply> Wait(uint64_t ticket) = 0;
};

// Calls `handler` synchronously inside Send (an ExpertShard::Handle in the
// single-process engine); Wait returns the stored result.
class InProcessExpertBackend : public ExpertBackend {
 public:
  using Handler = std::function<absl::StatusOr<router::ExpertReply>(const router::ExpertDispatch&)>;
  explicit InProcessExpertBackend(Handler handler) : handler_(std::move(handler)) {}

  absl::StatusOr<uint64_t> Send(router::ExpertDispatch dispatch) override;
  absl::StatusOr<router::ExpertReply> Wait(uint64_t ticket) override;

 private:
  Handler handler_;
  uint64_t next_ticket_ = 1;
  uint64_t pending_ticket_ = 0;
  absl::StatusOr<router::ExpertReply> pending_ = absl::UnknownError("no dispatch");
};

}  // namespace dsv2

#endif  // DSV2_ATTENTION_SERVICE_EXPERT_BACKEND_H_
