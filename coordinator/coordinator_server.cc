#include "coordinator/coordinator_server.h"

#include "coordinator/coordinator_core_internal.h"

namespace dsv2::coordinator {

Coordinator::Coordinator(const ModelConfig& config, ServedModel model, CoordinatorOptions options)
    : core_(std::make_unique<CoordinatorCore>(config, std::move(model), std::move(options))) {
  core_->inference = MakeInferenceService(*core_);
  core_->membership = MakeMembershipService(*core_);
  core_->placement_thread = std::thread([this] { core_->PlacementLoop(); });
  core_->cancellation_thread = std::thread([this] { core_->CancellationLoop(); });
}

Coordinator::~Coordinator() { Shutdown(); }

grpc::Service* Coordinator::inference_service() { return core_->inference.get(); }
grpc::Service* Coordinator::membership_service() { return core_->membership.get(); }
ClusterState& Coordinator::state() { return core_->state; }

void Coordinator::SetServingCallback(std::function<void(bool)> callback) {
  absl::MutexLock lock(&core_->loop_mu);
  core_->serving_callback = std::move(callback);
  core_->report_serving = true;  // the next tick reports the current state
}

bool Coordinator::Drain(absl::Duration timeout) {
  absl::MutexLock lock(&core_->live_mu);
  core_->draining = true;
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(core_->live_mu) {
    return core_->active == 0;
  };
  return core_->live_mu.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void Coordinator::Shutdown() {
  {
    absl::MutexLock lock(&core_->loop_mu);
    core_->stop = true;
  }
  if (core_->placement_thread.joinable()) core_->placement_thread.join();
  if (core_->cancellation_thread.joinable()) core_->cancellation_thread.join();
}

}  // namespace dsv2::coordinator
