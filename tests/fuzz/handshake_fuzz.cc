// libFuzzer target: the UCX data plane's control-message header parser
// (the hello, its ack, goodbye and bye: transport/ucx_data_plane_internal.h)
// on arbitrary bytes, as a peer can send them.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "transport/ucx_data_plane_internal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> header(data, data + size);  // exactly `size` bytes
  dsv2::transport::ucx_internal::UcxAmHeader h;
  const bool ok = dsv2::transport::ucx_internal::ReadAmHeader(header.data(), header.size(), &h);
  // Only a header of exactly its size is read, as it was written.
  if (ok && (size != sizeof(h) || std::memcmp(&h, data, sizeof(h)) != 0)) std::abort();
  return 0;
}
