// The life of a dsv2 service process, written once for dsv2-coordinator,
// dsv2-attention and dsv2-expert (DESIGN.md sections 2 and 9):
//
//   start-up   the binary builds its process object (a ServedProcess: model,
//              engine, metrics server) and hands it to Serve;
//   listening  Serve starts the gRPC server on --host:--port with the
//              process's services, grpc.health.v1 (and server reflection
//              when asked), then registers with the coordinator when
//              --coordinator is given (CoordinatorLink: register, heartbeat,
//              re-register, Leave); with an internal port, the process's
//              internal services are served there instead, with
//              grpc.health.v1 and without reflection;
//   ready      prints "<binary> ready port=P [internal_port=Q] <fields>" on
//              stdout;
//   draining   on SIGTERM/SIGINT: leave the coordinator first (it sends
//              nothing new), let the process finish live work (Drain, up to
//              the drain timeout), stop the gRPC server (cancelling what is
//              left), stop the process (Shutdown); exit 0.
//
// Exit codes: 0 after a drain; 1 when start-up fails (the server cannot
// listen, the coordinator refuses the registration before the ready line) or
// the coordinator refuses it later (a refusal raises SIGTERM, so the process
// drains and exits 1).
//
// Threads: Serve runs on the main thread and blocks until the signal; the
// link has its own thread (coordinator_link.h). REQUIRES:
// BlockTerminationSignals() was called first in main, before any thread
// started, so the signal reaches only Serve's sigwait.
#ifndef DSV2_SERVICE_SERVE_H_
#define DSV2_SERVICE_SERVE_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace grpc {
class Server;
class Service;
}  // namespace grpc

namespace dsv2::internal {
class RegisterRequest;
class HeartbeatRequest;
}  // namespace dsv2::internal

namespace dsv2::transport {
class DataPlaneKeyring;
}  // namespace dsv2::transport

namespace dsv2::service {

class TlsContext;

// What one service binary runs behind its gRPC port. Serve calls every
// method on the main thread except FillHeartbeat (the link's thread).
class ServedProcess {
 public:
  virtual ~ServedProcess() = default;

  // The gRPC services to register; they outlive Serve.
  virtual std::vector<grpc::Service*> services() = 0;
  // Services for the cluster's members only (the coordinator's membership
  // service): on the internal port when ServeOptions has one, else beside
  // services().
  virtual std::vector<grpc::Service*> internal_services() { return {}; }
  // A server listens (port bound, not yet in the ready line): called for
  // the main server and for the health port's; e.g. the coordinator hooks
  // its serving state to each one's health service here.
  virtual void OnListening(grpc::Server& /*server*/) {}
  // What follows "port=P" in the ready line, e.g. "metrics_port=9401
  // cache_tokens=16384 placement_version=0".
  virtual std::string ReadyFields() const = 0;
  // One log line once ready, e.g. "serving on port 50052 (16384 cache tokens)".
  virtual std::string ServingLogLine(int port) const = 0;

  // Only with --coordinator: the registration (role, sizes, data-plane
  // address, shard id; Serve sets grpc_address) and each heartbeat's load.
  virtual void FillRegistration(internal::RegisterRequest* /*registration*/) const {}
  virtual void FillHeartbeat(internal::HeartbeatRequest* /*heartbeat*/) const {}
  // Only with --coordinator: where the data-plane key of each registration
  // goes (the keyring the process's UCX client or server proves membership
  // with); null = none.
  virtual std::shared_ptr<transport::DataPlaneKeyring> data_plane_keys() const { return nullptr; }

  // After the signal, the coordinator left and before the gRPC server stops:
  // stop admitting and finish live work within `timeout`; false when it
  // timed out (what is left is cancelled by the server's shutdown).
  virtual bool Drain(absl::Duration /*timeout*/) { return true; }
  // After the gRPC server stopped: stop the process's threads and servers;
  // no callback (scrape hook, data-plane handler) may run afterwards.
  virtual void Shutdown() {}
};

struct ServeOptions {
  std::string binary;           // "dsv2-attention": the ready line and messages
  std::string host = "127.0.0.1";
  int port = 0;                 // 0 = OS-chosen; the bound port is in the ready line
  bool reflection = false;      // gRPC server reflection (the public endpoint)
  // Transport security (service/tls.h); null = plaintext. `port` then
  // serves TLS: with the server certificate only when it is the public
  // port (the coordinator's), mutual TLS otherwise; the internal port
  // always mutual TLS.
  std::shared_ptr<const TlsContext> tls;
  bool public_port = false;
  // A plaintext port on `host` serving grpc.health.v1 only (0 = OS-chosen,
  // in the ready line as health_port=); none = no such port.
  std::optional<int> health_port;
  // A second port, on `host`, for internal_services() (0 = OS-chosen); none
  // = they share `port`. Reflection is never served there.
  std::optional<int> internal_port;
  // HOST:PORT of dsv2-coordinator; none = do not register.
  std::optional<std::string> coordinator;
  // Host the coordinator uses to reach this process; empty = `host`.
  std::string advertise_host;
  // Drain budget after the signal, and how long the gRPC server then waits
  // for RPCs still running before cancelling them.
  absl::Duration drain_timeout = absl::Seconds(30);
  absl::Duration server_shutdown_grace = absl::Milliseconds(500);
  // How long start-up waits for the coordinator to accept or refuse the
  // registration before printing the ready line anyway (an absent
  // coordinator is not an error: the link keeps trying).
  absl::Duration registration_wait = absl::Seconds(1);
};

// Runs `process` as described above; returns the exit code for main.
int Serve(const ServeOptions& options, ServedProcess& process);

// Prints "<binary>: <message>" on stderr; returns 1 (the exit code of a
// start-up failure).
int StartupFailure(const std::string& binary, absl::string_view message);

// Runs `body` and turns an escaping exception into "<binary>: internal
// error: ..." and exit code 1 (a bug; nothing a peer or user sends may
// throw).
int RunMain(const char* binary, int (*body)(int, char**), int argc, char** argv);

}  // namespace dsv2::service

#endif  // DSV2_SERVICE_SERVE_H_
