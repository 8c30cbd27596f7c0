// In-process implementation of the data plane (tests): servers register in
// a process-wide registry under addresses "inproc:<n>"; a client's Send
// queues the request to the server's handler thread, so requests are
// asynchronous exactly as over UCX. Stats count every request as eager.
#ifndef DSV2_TRANSPORT_IN_PROCESS_DATA_PLANE_H_
#define DSV2_TRANSPORT_IN_PROCESS_DATA_PLANE_H_

#include <memory>

#include "transport/data_plane.h"

namespace dsv2::transport {

std::unique_ptr<DataPlaneClient> CreateInProcessClient();
std::unique_ptr<DataPlaneServer> CreateInProcessServer(RequestHandler handler);
// A server that takes over `address` (another server's address(): a process
// restarted at the same host:port). Clients connected to the server it
// replaces keep their peers, which reach that server while it runs; a new
// Connect reaches this one.
std::unique_ptr<DataPlaneServer> CreateInProcessServerAt(const std::string& address,
                                                         RequestHandler handler);

}  // namespace dsv2::transport

#endif  // DSV2_TRANSPORT_IN_PROCESS_DATA_PLANE_H_
