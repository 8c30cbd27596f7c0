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

}  // namespace dsv2::transport

#endif  // DSV2_TRANSPORT_IN_PROCESS_DATA_PLANE_H_
