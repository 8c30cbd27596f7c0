// CoordinatorLink: keeps an attention node or expert shard registered with
// dsv2-coordinator (proto/coordinator.proto; DESIGN.md sections 2 and 9):
// registers (retrying while the coordinator is unreachable), heartbeats at
// the interval the coordinator asks for, registers again when the
// coordinator no longer knows the node (it restarted or declared the node
// dead), and sends Leave on Stop.
//
// Threads: Start spawns one owned thread that makes every Register and
// Heartbeat call; Stop wakes it, cancels the call in flight, joins it, and
// then sends Leave from the calling thread. The `load` and `on_fatal` callbacks run
// on that thread and must not call Stop. All public methods are
// thread-safe. The link owns its channel and thread; the callbacks' captures
// must outlive Stop (the destructor calls it).
#ifndef DSV2_SERVICE_COORDINATOR_LINK_H_
#define DSV2_SERVICE_COORDINATOR_LINK_H_

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

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace dsv2::transport {
class DataPlaneKeyring;
}  // namespace dsv2::transport

namespace dsv2::service {

class TlsContext;

struct CoordinatorLinkOptions {
  std::string coordinator_address;  // "host:port"
  // Mutual TLS to the coordinator's internal port (service/tls.h); null =
  // plaintext.
  std::shared_ptr<const TlsContext> tls;
  // Sent with every Register; its placement_version is replaced by the one
  // `load` reports (the version this node serves now).
  internal::RegisterRequest registration;
  // Fills the load fields of each heartbeat (and the placement version of a
  // re-registration); may be empty.
  std::function<void(internal::HeartbeatRequest*)> load;
  // Called once, on the link's thread, when the coordinator refuses the
  // registration (INVALID_ARGUMENT, PERMISSION_DENIED); the link has ended. May be empty. A
  // service binary raises SIGTERM here and exits 1 with fatal().
  std::function<void(const absl::Status&)> on_fatal;
  // Receives the data-plane key of each registration's response
  // (transport/handshake.h); a response without a valid key is logged and
  // changes nothing. Null = the key is not used.
  std::shared_ptr<transport::DataPlaneKeyring> data_plane_keys;
  // Deadline of each Register/Heartbeat call (Leave: at most 500 ms).
  absl::Duration call_timeout = absl::Seconds(2);
  // Wait between registration attempts while the coordinator is
  // unreachable; also bounds the channel's reconnect backoff, so a
  // coordinator that comes back is found within about this long.
  absl::Duration retry_interval = absl::Milliseconds(500);
};

class CoordinatorLink {
 public:
  explicit CoordinatorLink(CoordinatorLinkOptions options);
  ~CoordinatorLink();  // Stop()
  CoordinatorLink(const CoordinatorLink&) = delete;
  CoordinatorLink& operator=(const CoordinatorLink&) = delete;

  // Starts the thread: the first Register goes out at once. Idempotent;
  // does nothing after Stop.
  void Start();
  // Waits up to `timeout` for the first registration. OK once registered;
  // the coordinator's refusal (INVALID_ARGUMENT: a different model, bad
  // fields; PERMISSION_DENIED: the certificate's identity may not register
  // so) is returned as is and ends the link; FailedPrecondition after
  // Stop; DeadlineExceeded otherwise.
  absl::Status WaitRegistered(absl::Duration timeout);
  // Fatal refusal so far (OK if none): the node should exit.
  absl::Status fatal() const;
  // Registrations so far (1 after the first; more after re-registering).
  int64_t registrations() const;
  // Stops and joins the thread, then sends Leave for the current
  // registration (best effort: a coordinator that misses it declares the
  // node dead after its heartbeat timeout). Idempotent.
  void Stop();

 private:
  struct Rpc;  // gRPC stub (coordinator_link.cc), so this header stays light
  void Run();

  // Constant after construction.
  const CoordinatorLinkOptions options_;
  const std::unique_ptr<Rpc> rpc_;

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t node_id_ ABSL_GUARDED_BY(mu_) = 0;  // 0 = not registered
  int64_t registrations_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status fatal_ ABSL_GUARDED_BY(mu_);
  // The Register/Heartbeat call in flight on the thread (Stop cancels it).
  grpc::ClientContext* in_flight_ ABSL_GUARDED_BY(mu_) = nullptr;

  std::thread thread_;  // started by Start, joined by Stop
};

}  // namespace dsv2::service

#endif  // DSV2_SERVICE_COORDINATOR_LINK_H_
