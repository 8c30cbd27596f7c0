// libFuzzer target: the data-plane wire decoders (transport/wire.h), the
// request a shard parses and the reply an attention node parses, on
// arbitrary bytes. Whatever they accept must re-encode to the same message
// and point only inside it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "transport/wire.h"

namespace {

void Inside(const std::vector<std::byte>& m, const void* p, size_t n) {
  const auto* b = static_cast<const std::byte*>(p);
  if (n > 0 && (b < m.data() || b + n > m.data() + m.size())) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A std::vector: 4-byte aligned, as the decoders require; exactly `size`.
  std::vector<std::byte> m(size);
  if (size > 0) std::memcpy(m.data(), data, size);
  (void)dsv2::transport::PeekHeader(m);
  if (auto req = dsv2::transport::ParseRequest(m); req.ok()) {
    Inside(m, req->assignments.data(), req->assignments.size_bytes());
    Inside(m, req->activations.data(), req->activations.size());
    for (const dsv2::transport::WireAssignment& a : req->assignments) {
      if (a.row < 0 || static_cast<uint32_t>(a.row) >= req->header.num_rows || a.expert < 0) {
        std::abort();
      }
    }
    // Accepted means well-formed: it encodes back to the same bytes.
    if (dsv2::transport::EncodeRequest(req->header, req->assignments, req->activations) != m) {
      std::abort();
    }
  }
  if (auto reply = dsv2::transport::ParseReply(m); reply.ok()) {
    Inside(m, reply->outputs.data(), reply->outputs.size());
    Inside(m, reply->error.data(), reply->error.size());
  }
  return 0;
}
