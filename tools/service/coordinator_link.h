// CoordinatorLink: keeps an attention node or expert shard registered with
// dsv2-coordinator (proto/coordinator.proto; DESIGN.md sections 2 and 9):
// registers (retrying while the coordinator is unreachable), heartbeats at
// the interval the coordinator asks for, registers again when the
// coordinator no longer knows the node (it restarted or declared the node
// dead), and sends Leave on Stop.
//
// Threads: Start spawns one owned thread that makes every RPC; Stop wakes
// and joins it. The load callback runs on that thread. All public methods
// are thread-safe.
#ifndef DSV2_TOOLS_SERVICE_COORDINATOR_LINK_H_
#define DSV2_TOOLS_SERVICE_COORDINATOR_LINK_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator.pb.h"

namespace dsv2::service {

struct CoordinatorLinkOptions {
  std::string coordinator_address;  // "host:port"
  internal::RegisterRequest registration;
  // Fills the load fields of each heartbeat (and the placement version of a
  // re-registration); may be empty.
  std::function<void(internal::HeartbeatRequest*)> load;
  absl::Duration call_timeout = absl::Seconds(2);
  absl::Duration retry_interval = absl::Milliseconds(500);
};

class CoordinatorLink {
 public:
  explicit CoordinatorLink(CoordinatorLinkOptions options);
  ~CoordinatorLink();  // Stop()
  CoordinatorLink(const CoordinatorLink&) = delete;
  CoordinatorLink& operator=(const CoordinatorLink&) = delete;

  void Start();
  // Waits up to `timeout` for the first registration. OK once registered;
  // the coordinator's refusal (INVALID_ARGUMENT: a different model, bad
  // fields) is returned as is and ends the link; DeadlineExceeded otherwise.
  absl::Status WaitRegistered(absl::Duration timeout);
  // Fatal refusal so far (OK if none): the node should exit.
  absl::Status fatal() const;
  // Registrations so far (1 after the first; more after re-registering).
  int64_t registrations() const;
  // Sends Leave (best effort), stops and joins the thread. Idempotent.
  void Stop();

 private:
  struct Rpc;  // gRPC stub (coordinator_link.cc), so this header stays light
  void Run();

  const CoordinatorLinkOptions options_;
  std::unique_ptr<Rpc> rpc_;
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t node_id_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t registrations_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status fatal_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace dsv2::service

#endif  // DSV2_TOOLS_SERVICE_COORDINATOR_LINK_H_
