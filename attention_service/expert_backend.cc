#include "attention_service/expert_backend.h"

#include "absl/strings/str_cat.h"

namespace dsv2 {

absl::StatusOr<uint64_t> InProcessExpertBackend::Send(router::ExpertDispatch dispatch,
                                                      const DispatchContext& context) {
  (void)context;  // one process holds every expert: no replica to pick
  absl::StatusOr<router::ExpertReply> reply = handler_(dispatch);
  const uint64_t ticket = next_ticket_++;
  Result& result = pending_[ticket];
  if (reply.ok()) {
    result.reply = *std::move(reply);
  } else {
    result.status = reply.status();
  }
  return ticket;
}

absl::StatusOr<router::ExpertReply> InProcessExpertBackend::Wait(uint64_t ticket) {
  auto it = pending_.find(ticket);
  if (it == pending_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown dispatch ticket ", ticket));
  }
  Result result = std::move(it->second);
  pending_.erase(it);
  if (!result.status.ok()) return result.status;
  return std::move(result.reply);
}

void InProcessExpertBackend::Forget(uint64_t ticket) { pending_.erase(ticket); }

}  // namespace dsv2
