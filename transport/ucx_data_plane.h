// UCX active-message implementation of the data plane (DESIGN.md section 4).
//
// Requests and replies are UCX active messages (ucp_am_send_nbx) whose AM
// header carries the channel's ticket; the message itself is the AM data.
// Messages below `rendezvous_threshold` bytes go eagerly
// (UCP_AM_SEND_FLAG_EAGER); larger ones by explicit rendezvous
// (UCP_AM_SEND_FLAG_RNDV), which the receiver completes with
// ucp_am_recv_data_nbx into its own buffer. Any number of clients can use
// one server (M-to-N).
//
// Connections use UCX's client-server mode: a server listens on
// `listen_host`:`listen_port` (ucp_listener_create) and its address() is
// "host:port"; Connect resolves such an address and connects through UCX's
// connection manager; the server accepts with its own endpoint (with an
// error handler) and replies on it; the handshake of transport/handshake.h
// (hello, challenge, proof, welcome) names the connection and, with `keys`,
// proves that both ends are members. No UCX worker address ever crosses the
// network. Connect returns only once both directions work, and fails with
// Unavailable (after `connect_timeout` at most) when the server is
// unreachable, has no key yet or does not know ours (a coordinator
// restarted: retry), PermissionDenied when the server or we fail the other's
// MAC check (not a member), InvalidArgument for an address that is not
// host:port. A server counts every refused handshake and every request on a
// connection that has not completed one (DataPlaneServerStats). A server that
// shuts down tells its clients (requests it drops are refused, then a
// goodbye), so their tickets fail at once.
//
// Threads: each client and each server owns one UCX context + worker and
// one progress thread, the only thread that touches the worker. It sleeps in
// epoll on the worker's event fd (ucp_worker_get_efd / ucp_worker_arm) and an
// eventfd that other threads signal when they queue work; it spins only
// briefly (`spin` below) after activity, and wakes at least every 100 ms so
// that UCX keepalive runs. A server also owns a handler thread that runs the
// RequestHandler. Transports are UCX's choice, narrowed by `transports`
// (UCX_TLS syntax: "tcp", "sm", "rc,sm", ...; "" = UCX_TLS from the
// environment or UCX's default); a list without tcp gets it added, because
// client-server connections are wired up over tcp (the active messages then
// use shared memory where both ends share a host).
//
// Endpoints use UCP_ERR_HANDLING_MODE_PEER, so a failed peer fails its
// tickets with Unavailable. What that takes with UCX 1.13 (Debian libucx0),
// checked between processes and within one on a single host:
//  * tcp: nothing. UCX 1.13 lists the loopback device `lo` among its tcp
//    devices, so UCX_TLS=tcp works on one host (UCX_NET_DEVICES=lo keeps it
//    on loopback). A killed peer is noticed at once (socket error).
//  * sm: the shared-memory transports (posix, sysv) expose peer-failure
//    support only with UCX_{POSIX,SYSV}_ERROR_HANDLING=y; without it "sm"
//    has no usable transport ("no peer failure handler"). Create sets it
//    (ucp_config_modify "MM_ERROR_HANDLING=y") unless either variable is in
//    the environment. UCX then picks sysv for active messages, so both
//    processes need the same IPC namespace (one host or one pod). A killed
//    peer process is noticed by UCX keepalive, every KEEPALIVE_INTERVAL:
//    Create sets 1 s (UCX's default is 20 s) unless UCX_KEEPALIVE_INTERVAL
//    is in the environment or `config` names it (the tests use 200ms).
//    Neither disabling cma nor UCX_POSIX_USE_PROC_LINK=n was needed here.
#ifndef DSV2_TRANSPORT_UCX_DATA_PLANE_H_
#define DSV2_TRANSPORT_UCX_DATA_PLANE_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/data_plane.h"
#include "transport/handshake.h"

namespace dsv2::transport {

struct UcxOptions {
  std::string transports;                 // UCX_TLS value; "" = UCX's choice
  size_t rendezvous_threshold = 64 << 10;  // bytes; messages >= it use rendezvous
  absl::Duration spin = absl::Microseconds(50);  // busy-progress after activity
  // Further UCX settings, applied with ucp_config_modify over the UCX_*
  // environment: (name without the "UCX_" prefix, value), e.g.
  // {"KEEPALIVE_INTERVAL", "1s"}. A value UCX rejects makes Create fail with
  // InvalidArgument; a name UCX does not know is only reported by UCX (a
  // warning "invalid configuration" when the worker starts) and ignored.
  std::vector<std::pair<std::string, std::string>> config;
  // How long Connect waits for the server's answer to the connection
  // handshake before it returns Unavailable.
  absl::Duration connect_timeout = absl::Seconds(5);
  // Servers: the data-plane listener binds listen_host:listen_port (port 0 =
  // any free port) and address() advertises advertise_host (default
  // listen_host; set it when listen_host is a wildcard such as 0.0.0.0).
  std::string listen_host = "127.0.0.1";
  int listen_port = 0;
  std::string advertise_host;
  // Servers refuse requests larger than this (the client's Wait gets
  // Unavailable) instead of allocating whatever a peer announces; a real
  // dispatch is rows x hidden x 2-4 bytes, far below it.
  size_t max_request_bytes = size_t{1} << 30;
  // Membership proof in the connection handshake (transport/handshake.h).
  // Null: none (key id 0, zero MACs), and a server accepts such hellos: for
  // tests, benchmarks and processes without a coordinator. Set: a client
  // proves itself with the keyring's current key and checks the server's
  // proof; a server accepts only hellos under its current or previous key.
  // The keyring may be filled later (when the member registers).
  std::shared_ptr<const DataPlaneKeyring> keys;
};

// Unavailable when UCX cannot be initialised with the given transports.
absl::StatusOr<std::unique_ptr<DataPlaneClient>> CreateUcxClient(const UcxOptions& options);
absl::StatusOr<std::unique_ptr<DataPlaneServer>> CreateUcxServer(const UcxOptions& options,
                                                                  RequestHandler handler);

}  // namespace dsv2::transport

#endif  // DSV2_TRANSPORT_UCX_DATA_PLANE_H_
