#include "tools/service/coordinator_link.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <utility>

#include "absl/strings/str_cat.h"

#include "coordinator.grpc.pb.h"

namespace dsv2::service {

struct CoordinatorLink::Rpc {
  std::unique_ptr<internal::Coordinator::Stub> stub;
};

CoordinatorLink::CoordinatorLink(CoordinatorLinkOptions options)
    : options_(std::move(options)), rpc_(std::make_unique<Rpc>()) {
  rpc_->stub = internal::Coordinator::NewStub(
      grpc::CreateChannel(options_.coordinator_address, grpc::InsecureChannelCredentials()));
}

CoordinatorLink::~CoordinatorLink() { Stop(); }

void CoordinatorLink::Start() {
  absl::MutexLock lock(&mu_);
  if (started_) return;
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

void CoordinatorLink::Run() {
  absl::Duration interval = options_.retry_interval;
  grpc::StatusCode last_error = grpc::OK;
  while (true) {
    uint64_t node_id;
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      // The first registration goes out at once; later calls wait.
      if (registrations_ > 0 || last_error != grpc::OK) {
        if (mu_.AwaitWithTimeout(absl::Condition(&stopping), interval)) return;
      }
      if (stop_) return;
      node_id = node_id_;
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.call_timeout));
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
      if (st.ok()) {
        absl::MutexLock lock(&mu_);
        node_id_ = resp.node_id();
        ++registrations_;
        interval = resp.heartbeat_interval_ms() > 0
                       ? absl::Milliseconds(resp.heartbeat_interval_ms())
                       : options_.retry_interval;
        spdlog::info("registered with the coordinator at {} as node {}",
                     options_.coordinator_address, resp.node_id());
      } else if (st.error_code() == grpc::INVALID_ARGUMENT) {
        spdlog::error("the coordinator at {} refused this node: {}",
                      options_.coordinator_address, st.error_message());
        absl::MutexLock lock(&mu_);
        fatal_ = absl::InvalidArgumentError(
            absl::StrCat("the coordinator refused the registration: ", st.error_message()));
        return;
      }
    } else {
      internal::HeartbeatRequest req;
      if (options_.load) options_.load(&req);
      req.set_node_id(node_id);
      internal::HeartbeatResponse resp;
      st = rpc_->stub->Heartbeat(&ctx, req, &resp);
      if (st.error_code() == grpc::NOT_FOUND) {
        spdlog::warn("the coordinator no longer knows node {}: registering again", node_id);
        absl::MutexLock lock(&mu_);
        node_id_ = 0;
      }
    }
    if (!st.ok() && st.error_code() != grpc::NOT_FOUND) {
      if (st.error_code() != last_error) {
        spdlog::warn("coordinator at {}: {} (code {}); retrying", options_.coordinator_address,
                     st.error_message(), static_cast<int>(st.error_code()));
      }
      last_error = st.error_code();
      {
        absl::MutexLock lock(&mu_);
        if (node_id_ == 0) interval = options_.retry_interval;
      }
    } else if (st.ok()) {
      if (last_error != grpc::OK) spdlog::info("coordinator reachable again");
      last_error = grpc::OK;
    }
  }
}

void CoordinatorLink::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  uint64_t node_id;
  {
    absl::MutexLock lock(&mu_);
    node_id = node_id_;
  }
  if (node_id != 0) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(500)));
    internal::LeaveRequest req;
    req.set_node_id(node_id);
    internal::LeaveResponse resp;
    (void)rpc_->stub->Leave(&ctx, req, &resp);  // best effort: heartbeats time out anyway
  }
}

}  // namespace dsv2::service
