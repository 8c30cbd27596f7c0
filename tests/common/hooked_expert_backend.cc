#include "tests/common/hooked_expert_backend.h"

#include "absl/strings/str_cat.h"

namespace dsv2::testing_util {

absl::StatusOr<uint64_t> HookedExpertBackend::Send(router::ExpertDispatch dispatch,
                                                   const DispatchContext& context) {
  bool fail;
  {
    absl::MutexLock lock(&mu_);
    const int64_t call = calls_++;
    fail = fail_call_ == call;
    if (hold_from_ && call >= *hold_from_) {
      held_ = true;
      const auto released = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !hold_from_.has_value();
      };
      mu_.Await(absl::Condition(&released));
      held_ = false;
    }
  }
  const uint64_t ticket = next_ticket_++;
  if (fail) {
    tickets_[ticket] = std::nullopt;
    return ticket;
  }
  absl::StatusOr<uint64_t> inner = inner_.Send(std::move(dispatch), context);
  if (!inner.ok()) return inner.status();
  tickets_[ticket] = *inner;
  return ticket;
}

absl::StatusOr<router::ExpertReply> HookedExpertBackend::Wait(uint64_t ticket) {
  auto it = tickets_.find(ticket);
  if (it == tickets_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown dispatch ticket ", ticket));
  }
  const std::optional<uint64_t> inner = it->second;
  tickets_.erase(it);
  if (!inner) return absl::UnavailableError("injected: expert shard unreachable");
  return inner_.Wait(*inner);
}

void HookedExpertBackend::Forget(uint64_t ticket) {
  auto it = tickets_.find(ticket);
  if (it == tickets_.end()) return;
  if (it->second) inner_.Forget(*it->second);
  tickets_.erase(it);
}

int64_t HookedExpertBackend::dispatches() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

void HookedExpertBackend::FailDispatch(int64_t call) {
  absl::MutexLock lock(&mu_);
  fail_call_ = call;
}

void HookedExpertBackend::HoldFrom(int64_t call) {
  absl::MutexLock lock(&mu_);
  hold_from_ = call;
}

bool HookedExpertBackend::WaitUntilHeld(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const auto held = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return held_; };
  return mu_.AwaitWithTimeout(absl::Condition(&held), timeout);
}

void HookedExpertBackend::Release() {
  absl::MutexLock lock(&mu_);
  hold_from_.reset();
}

}  // namespace dsv2::testing_util
