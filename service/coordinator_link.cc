#include "service/coordinator_link.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "coordinator.grpc.pb.h"
#include "service/service_common.h"
#include "service/tls.h"
#include "transport/handshake.h"

namespace dsv2::service {

struct CoordinatorLink::Rpc {
  std::unique_ptr<internal::Coordinator::Stub> stub;
};

namespace {

std::shared_ptr<grpc::Channel> MakeChannel(const CoordinatorLinkOptions& options) {
  // A node must find a restarted coordinator within its heartbeat timeout:
  // reconnect every retry interval.
  const std::shared_ptr<const TlsContext> tls =
      options.tls != nullptr ? options.tls : TlsContext::Insecure();
  return grpc::CreateCustomChannel(options.coordinator_address,
                                   tls->MemberChannelCredentials({MemberRole::kCoordinator}),
                                   MemberLinkChannelArguments(options.retry_interval));
}

}  // namespace

CoordinatorLink::CoordinatorLink(CoordinatorLinkOptions options)
    : options_(std::move(options)), rpc_(std::make_unique<Rpc>()) {
  rpc_->stub = internal::Coordinator::NewStub(MakeChannel(options_));
}

CoordinatorLink::~CoordinatorLink() { Stop(); }

void CoordinatorLink::Start() {
  absl::MutexLock lock(&mu_);
  if (started_ || stop_) return;
  started_ = true;
  thread_ = std::thread([this] { Run(); });
}

absl::Status CoordinatorLink::WaitRegistered(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return registrations_ > 0 || !fatal_.ok() || stop_;
  };
  mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  if (!fatal_.ok()) return fatal_;
  if (registrations_ > 0) return absl::OkStatus();
  if (stop_) return absl::FailedPreconditionError("the coordinator link is stopped");
  return absl::DeadlineExceededError(absl::StrCat("not registered with the coordinator at ",
                                                  options_.coordinator_address, " after ",
                                                  absl::FormatDuration(timeout)));
}

absl::Status CoordinatorLink::fatal() const {
  absl::MutexLock lock(&mu_);
  return fatal_;
}

int64_t CoordinatorLink::registrations() const {
  absl::MutexLock lock(&mu_);
  return registrations_;
}

// One loop: wait (retry or heartbeat interval; the first Register goes out
// at once), then Register when not registered, else Heartbeat. Each error
// code is logged once until a call succeeds again.
void CoordinatorLink::Run() {
  absl::Duration interval = options_.retry_interval;
  grpc::StatusCode last_error = grpc::OK;
  bool first = true;
  while (true) {
    grpc::ClientContext ctx;
    uint64_t node_id;
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (!first && mu_.AwaitWithTimeout(absl::Condition(&stopping), interval)) return;
      if (stop_) return;
      first = false;
      node_id = node_id_;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.call_timeout));
      // Stop cancels the call in flight, a Register too: shutting down
      // promptly matters more than the ghost entry a Register the
      // coordinator already processed leaves (gone at its heartbeat timeout).
      in_flight_ = &ctx;
    }
    grpc::Status st;
    if (node_id == 0) {
      internal::RegisterRequest req = options_.registration;
      if (options_.load) {
        internal::HeartbeatRequest load;
        options_.load(&load);
        req.set_placement_version(load.placement_version());
      }
      internal::RegisterResponse resp;
      st = rpc_->stub->Register(&ctx, req, &resp);
      absl::MutexLock lock(&mu_);
      in_flight_ = nullptr;
      if (st.ok()) {
        node_id_ = resp.node_id();
        ++registrations_;
        interval = resp.heartbeat_interval_ms() > 0
                       ? absl::Milliseconds(resp.heartbeat_interval_ms())
                       : options_.retry_interval;
        spdlog::info("registered with the coordinator at {} as node {}",
                     options_.coordinator_address, resp.node_id());
        if (options_.data_plane_keys != nullptr) {
          absl::StatusOr<transport::DataPlaneKey> key =
              transport::DataPlaneKeyFrom(resp.data_plane_key_id(), resp.data_plane_key());
          if (key.ok()) {
            options_.data_plane_keys->Install(*key);
          } else {
            spdlog::error(
                "the coordinator at {} sent no valid data-plane key ({}): data-plane "
                "connections cannot be made",
                options_.coordinator_address, std::string(key.status().message()));
          }
        }
      } else if (st.error_code() == grpc::INVALID_ARGUMENT ||
                 st.error_code() == grpc::PERMISSION_DENIED) {
        // Another model, bad fields, or a certificate that may not register
        // as this member: retrying cannot help.
        fatal_ = absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                              absl::StrCat("the coordinator at ", options_.coordinator_address,
                                           " refused the registration: ", st.error_message()));
      } else {
        interval = options_.retry_interval;
      }
    } else {
      internal::HeartbeatRequest req;
      if (options_.load) options_.load(&req);
      req.set_node_id(node_id);
      internal::HeartbeatResponse resp;
      st = rpc_->stub->Heartbeat(&ctx, req, &resp);
      absl::MutexLock lock(&mu_);
      in_flight_ = nullptr;
      if (st.error_code() == grpc::NOT_FOUND) {
        // The coordinator restarted or declared us dead: register again
        // after one interval (it may still be starting up).
        spdlog::warn("the coordinator no longer knows node {}: registering again", node_id);
        node_id_ = 0;
      }
    }
    absl::Status fatal;
    {
      absl::MutexLock lock(&mu_);
      fatal = fatal_;
    }
    if (!fatal.ok()) {
      spdlog::error("{}", std::string(fatal.message()));
      if (options_.on_fatal) options_.on_fatal(fatal);
      return;
    }
    if (st.ok() || st.error_code() == grpc::NOT_FOUND) {
      if (last_error != grpc::OK) {
        spdlog::info("coordinator at {} reachable again", options_.coordinator_address);
      }
      last_error = grpc::OK;
    } else if (st.error_code() != last_error) {
      // CANCELLED here is Stop cancelling the call: not worth a warning.
      if (st.error_code() != grpc::CANCELLED) {
        spdlog::warn("coordinator at {}: {} (code {}); retrying", options_.coordinator_address,
                     st.error_message(), static_cast<int>(st.error_code()));
      }
      last_error = st.error_code();
    }
  }
}

void CoordinatorLink::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    stop_ = true;
    if (in_flight_ != nullptr) in_flight_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
  uint64_t node_id;
  {
    absl::MutexLock lock(&mu_);
    node_id = node_id_;
  }
  if (node_id == 0) return;
  grpc::ClientContext ctx;
  ctx.set_deadline(
      absl::ToChronoTime(absl::Now() + std::min(options_.call_timeout, absl::Milliseconds(500))));
  internal::LeaveRequest req;
  req.set_node_id(node_id);
  internal::LeaveResponse resp;
  const grpc::Status st = rpc_->stub->Leave(&ctx, req, &resp);
  if (st.ok()) {
    spdlog::info("left the coordinator at {} (node {})", options_.coordinator_address, node_id);
  } else {
    spdlog::warn("Leave to the coordinator at {} failed: {}", options_.coordinator_address,
                 st.error_message());
  }
}

}  // namespace dsv2::service
