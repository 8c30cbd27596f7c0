// HookedExpertBackend: an ExpertBackend in front of another one that a test
// steers: it fails a chosen dispatch (fault injection), or holds the engine
// thread inside a chosen Send until the test releases it, so the engine
// stays mid-step, in a known state (its requests running, their cache
// blocks held, the step's events not yet out), for as long as the test
// looks at it. Plug it in with LocalEngineOptions::wrap_backend or between
// a LayerLoop and any backend.
//
// Thread-safety: Send/Wait/Forget on the engine thread (as any backend);
// the hooks and accessors from any thread.
#ifndef DSV2_TESTS_COMMON_HOOKED_EXPERT_BACKEND_H_
#define DSV2_TESTS_COMMON_HOOKED_EXPERT_BACKEND_H_

#include <cstdint>
#include <map>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "attention_service/expert_backend.h"

namespace dsv2::testing_util {

class HookedExpertBackend : public ExpertBackend {
 public:
  // `inner` must outlive this backend.
  explicit HookedExpertBackend(ExpertBackend& inner) : inner_(inner) {}
  // The engine thread must be done with it (a fixture calls Release before
  // it shuts the engine down: a held engine thread never stops).
  ~HookedExpertBackend() override = default;

  using ExpertBackend::Send;
  absl::StatusOr<uint64_t> Send(router::ExpertDispatch dispatch,
                                const DispatchContext& context) override;
  absl::StatusOr<router::ExpertReply> Wait(uint64_t ticket) override;
  void Forget(uint64_t ticket) override;

  // Send calls so far (each counts when it starts, held or not).
  int64_t dispatches() const;

  // The Send call with this 0-based index never reaches `inner`: its Wait
  // returns UNAVAILABLE "injected: expert shard unreachable" (as a shard
  // that cannot be reached would).
  void FailDispatch(int64_t call);

  // The Send call with this 0-based index, and every later one, blocks
  // (before reaching `inner`) until Release. With a single sequence a step
  // makes one dispatch per MoE layer, so HoldFrom(k * moe_layers) parks the
  // engine at the start of its step k + 1 (0-based k), after the events of
  // its first k steps were delivered.
  void HoldFrom(int64_t call);
  // Whether a Send is blocked now, waiting up to `timeout` for one.
  bool WaitUntilHeld(absl::Duration timeout);
  // Lets the held Send and every later one through.
  void Release();

 private:
  ExpertBackend& inner_;
  mutable absl::Mutex mu_;
  int64_t calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<int64_t> fail_call_ ABSL_GUARDED_BY(mu_);
  std::optional<int64_t> hold_from_ ABSL_GUARDED_BY(mu_);
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  // Engine thread only: our ticket -> the inner ticket, or nullopt for an
  // injected failure.
  uint64_t next_ticket_ = 1;
  std::map<uint64_t, std::optional<uint64_t>> tickets_;
};

}  // namespace dsv2::testing_util

#endif  // DSV2_TESTS_COMMON_HOOKED_EXPERT_BACKEND_H_
