// UCX active-message implementation of the data plane (DESIGN.md section 4).
//
// Requests and replies are UCX active messages (ucp_am_send_nbx) whose AM
// header carries the channel's ticket; the message itself is the AM data.
// Messages below `rendezvous_threshold` bytes go eagerly
// (UCP_AM_SEND_FLAG_EAGER); larger ones by explicit rendezvous
// (UCP_AM_SEND_FLAG_RNDV), which the receiver completes with
// ucp_am_recv_data_nbx into its own buffer. Servers reply on the endpoint
// UCX hands the handler (UCP_AM_SEND_FLAG_REPLY), so any number of clients
// can use one server (M-to-N).
//
// Threads: each client and each server owns one UCX context + worker and
// one progress thread, the only thread that touches the worker. It sleeps in
// epoll on the worker's event fd (ucp_worker_get_efd / ucp_worker_arm) and an
// eventfd that other threads signal when they queue work; it spins only
// briefly (`spin` below) after activity. A server also owns a handler thread
// that runs the RequestHandler. Transports are UCX's choice, narrowed by
// `transports` (UCX_TLS syntax: "tcp", "sm", "rc,sm", ...; "" = UCX_TLS from
// the environment or UCX's default).
#ifndef DSV2_TRANSPORT_UCX_DATA_PLANE_H_
#define DSV2_TRANSPORT_UCX_DATA_PLANE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/data_plane.h"

namespace dsv2::transport {

struct UcxOptions {
  std::string transports;                 // UCX_TLS value; "" = UCX's choice
  size_t rendezvous_threshold = 64 << 10;  // bytes; messages >= it use rendezvous
  absl::Duration spin = absl::Microseconds(50);  // busy-progress after activity
};

// Unavailable when UCX cannot be initialised with the given transports.
absl::StatusOr<std::unique_ptr<DataPlaneClient>> CreateUcxClient(const UcxOptions& options);
absl::StatusOr<std::unique_ptr<DataPlaneServer>> CreateUcxServer(const UcxOptions& options,
                                                                  RequestHandler handler);

}  // namespace dsv2::transport

#endif  // DSV2_TRANSPORT_UCX_DATA_PLANE_H_
