// libFuzzer target: the data-plane connection handshake's parsers, as a
// peer can send them: the AM header (transport/ucx_data_plane_internal.h)
// and the hello, challenge, proof and welcome (transport/handshake.h). The
// first input byte picks the parser; the rest is the message.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "transport/handshake.h"
#include "transport/ucx_data_plane_internal.h"

namespace {

using namespace dsv2::transport;

// A message that parses re-encodes to exactly its bytes (nothing is
// ignored or invented by the parser).
template <typename Parse, typename Encode>
void CheckRoundTrip(std::span<const std::byte> bytes, Parse parse, Encode encode) {
  auto parsed = parse(bytes);
  if (!parsed.ok()) return;
  const std::vector<std::byte> again = encode(*parsed);
  if (again.size() != bytes.size() || std::memcmp(again.data(), bytes.data(), bytes.size()) != 0) {
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // Exactly the message's bytes, so reads past them are caught.
  std::vector<std::byte> message(size - 1);
  if (size > 1) std::memcpy(message.data(), data + 1, size - 1);
  const std::span<const std::byte> bytes(message);
  switch (data[0] % 5) {
    case 0: {
      ucx_internal::UcxAmHeader h;
      const bool ok = ucx_internal::ReadAmHeader(message.data(), message.size(), &h);
      // Only a header of exactly its size is read, as it was written.
      if (ok && (message.size() != sizeof(h) || std::memcmp(&h, message.data(), sizeof(h)) != 0)) {
        std::abort();
      }
      break;
    }
    case 1:
      CheckRoundTrip(bytes, ParseHello, EncodeHello);
      break;
    case 2:
      CheckRoundTrip(bytes, ParseChallenge, EncodeChallenge);
      break;
    case 3:
      CheckRoundTrip(bytes, ParseProof, EncodeProof);
      break;
    case 4:
      CheckRoundTrip(bytes, ParseWelcome, EncodeWelcome);
      break;
  }
  return 0;
}
