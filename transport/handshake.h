// The data-plane connection handshake (DESIGN.md section 9a): before a UCX
// connection carries a request, each end proves to the other that it holds
// the cluster's data-plane key, a 32-byte secret the coordinator makes once
// per incarnation and hands to every member in its RegisterResponse (over
// mutual TLS). A process that is not a member can neither open a connection
// to a shard (its hello is refused) nor pose as a shard (it cannot answer
// the challenge). The data plane itself is not encrypted (docs/security.md).
//
// Messages (the AM data of the handshake's active messages; all integers
// little-endian, every message starts with kWireMagic and kHandshakeVersion):
//
//   Hello      client -> server  key_id u64, client_nonce [16], hello_mac [32]
//   Challenge  server -> client  status u16, server_nonce [16], server_mac [32]
//   Proof      client -> server  proof_mac [32]
//   Welcome    server -> client  status u16
//
//   hello_mac  = HMAC-SHA256(K, "dsv2 data-plane hello" | key_id | client_nonce)
//   server_mac = HMAC-SHA256(K, "dsv2 data-plane challenge" | key_id |
//                            client_nonce | server_nonce | client_id)
//   proof_mac  = HMAC-SHA256(K, "dsv2 data-plane proof" | key_id |
//                            client_nonce | server_nonce | client_id)
//
// The hello's MAC lets a server refuse a forged hello at once; the fresh
// server nonce in the proof makes a replayed hello useless; the server's MAC
// over the client's fresh nonce proves the server. Distinct labels keep one
// MAC from standing in for another. Unauthenticated ends (no keyring: tests,
// benchmarks, a shard without a coordinator) send key id 0 and zero MACs; an
// authenticated end refuses them.
//
// Thread-safety: DataPlaneKeyring is thread-safe; the rest are pure
// functions (RandomNonce and MakeDataPlaneKey draw from OpenSSL's CSPRNG).
#ifndef DSV2_TRANSPORT_HANDSHAKE_H_
#define DSV2_TRANSPORT_HANDSHAKE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace dsv2::transport {

inline constexpr uint16_t kHandshakeVersion = 1;
inline constexpr size_t kDataPlaneKeyBytes = 32;

using HandshakeNonce = std::array<uint8_t, 16>;
using HandshakeMac = std::array<uint8_t, 32>;

// One incarnation's key. `id` is never 0 (0 means "no key" on the wire).
struct DataPlaneKey {
  uint64_t id = 0;
  std::array<uint8_t, kDataPlaneKeyBytes> secret{};
};

// A fresh random key with a fresh random non-zero id (the coordinator's, once
// per incarnation). Internal when the CSPRNG fails.
absl::StatusOr<DataPlaneKey> MakeDataPlaneKey();
// A key received from the network: InvalidArgument unless `secret` is
// exactly kDataPlaneKeyBytes and `id` is not 0.
absl::StatusOr<DataPlaneKey> DataPlaneKeyFrom(uint64_t id, std::string_view secret);

// The keys a member accepts: the current incarnation's and the one before,
// so that members which learn a new coordinator's key at different moments
// (each when it registers again) can still connect to each other meanwhile.
// Connections already open are not affected by a change of key.
class DataPlaneKeyring {
 public:
  // Makes `key` current; the current key, when it has another id, becomes
  // the previous one (the one before that is forgotten).
  void Install(const DataPlaneKey& key) ABSL_LOCKS_EXCLUDED(mu_);
  // What a client proves itself with; none before the first Install.
  std::optional<DataPlaneKey> current() const ABSL_LOCKS_EXCLUDED(mu_);
  // The current or previous key with this id; none otherwise (and for 0).
  std::optional<DataPlaneKey> Find(uint64_t id) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  std::optional<DataPlaneKey> current_ ABSL_GUARDED_BY(mu_);
  std::optional<DataPlaneKey> previous_ ABSL_GUARDED_BY(mu_);
};

// Why a server refused a handshake (Challenge and Welcome status).
enum class HandshakeStatus : uint16_t {
  kOk = 0,
  kUnknownKey = 1,  // the hello's key id is neither current nor previous (or 0)
  kBadMac = 2,      // the hello's or proof's MAC is wrong: not a member
  kNoKey = 3,       // the server has no key yet (not registered)
};
// Names used in logs and in the metric label (`reason`).
const char* HandshakeStatusName(HandshakeStatus status);

struct HandshakeHello {
  uint64_t key_id = 0;
  HandshakeNonce client_nonce{};
  HandshakeMac mac{};
};
struct HandshakeChallenge {
  HandshakeStatus status = HandshakeStatus::kOk;
  HandshakeNonce server_nonce{};
  HandshakeMac mac{};
};
struct HandshakeProof {
  HandshakeMac mac{};
};
struct HandshakeWelcome {
  HandshakeStatus status = HandshakeStatus::kOk;
};

// Encoders write exactly the layouts above. Parsers take bytes from the
// network: InvalidArgument unless the size, magic and version are exactly
// right and a status is one of HandshakeStatus.
std::vector<std::byte> EncodeHello(const HandshakeHello& hello);
std::vector<std::byte> EncodeChallenge(const HandshakeChallenge& challenge);
std::vector<std::byte> EncodeProof(const HandshakeProof& proof);
std::vector<std::byte> EncodeWelcome(const HandshakeWelcome& welcome);
absl::StatusOr<HandshakeHello> ParseHello(std::span<const std::byte> bytes);
absl::StatusOr<HandshakeChallenge> ParseChallenge(std::span<const std::byte> bytes);
absl::StatusOr<HandshakeProof> ParseProof(std::span<const std::byte> bytes);
absl::StatusOr<HandshakeWelcome> ParseWelcome(std::span<const std::byte> bytes);

HandshakeNonce RandomNonce();
HandshakeMac HelloMac(const DataPlaneKey& key, const HandshakeNonce& client_nonce);
HandshakeMac ChallengeMac(const DataPlaneKey& key, const HandshakeNonce& client_nonce,
                          const HandshakeNonce& server_nonce, uint64_t client_id);
HandshakeMac ProofMac(const DataPlaneKey& key, const HandshakeNonce& client_nonce,
                      const HandshakeNonce& server_nonce, uint64_t client_id);
// Constant-time comparison (CRYPTO_memcmp).
bool MacEquals(const HandshakeMac& a, const HandshakeMac& b);

}  // namespace dsv2::transport

#endif  // DSV2_TRANSPORT_HANDSHAKE_H_
