#include "attention_service/expert_backend.h"

#include "absl/strings/str_cat.h"

namespace dsv2 {

absl::StatusOr<uint64_t> InProcessExpertBackend::Send(router::ExpertDispatch dispatch) {
  if (pending_ticket_ != 0) {
    return absl::FailedPreconditionError("in-process backend: previous dispatch not waited on");
  }
  pending_ = handler_(dispatch);
  pending_ticket_ = next_ticket_++;
  return pending_ticket_;
}

absl::StatusOr<router::ExpertReply> InProcessExpertBackend::Wait(uint64_t ticket) {
  if (ticket == 0 || ticket != pending_ticket_) {
    return absl::InvalidArgumentError(absl::StrCat("unknown dispatch ticket ", ticket));
  }
  pending_ticket_ = 0;
  return std::move(pending_);
}

}  // namespace dsv2
