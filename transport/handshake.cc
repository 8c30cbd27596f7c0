#include "transport/handshake.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "transport/wire.h"

namespace dsv2::transport {
namespace {

// Every message: magic u32 | version u16 | reserved u16 (0) | body.
constexpr size_t kPrefixBytes = 8;
constexpr size_t kHelloBytes = kPrefixBytes + 8 + 16 + 32;
constexpr size_t kChallengeBytes = kPrefixBytes + 8 + 16 + 32;  // status u16 + 6 reserved bytes
constexpr size_t kProofBytes = kPrefixBytes + 32;
constexpr size_t kWelcomeBytes = kPrefixBytes + 8;  // status u16 + 6 reserved bytes

class Writer {
 public:
  explicit Writer(size_t size) : out_(size) {
    Put(kWireMagic);
    Put(kHandshakeVersion);
    Put(uint16_t{0});
  }
  template <typename T>
  void Put(const T& value) {
    std::memcpy(out_.data() + at_, &value, sizeof(value));
    at_ += sizeof(value);
  }
  void Skip(size_t n) { at_ += n; }  // zero already
  std::vector<std::byte> Done() { return std::move(out_); }

 private:
  std::vector<std::byte> out_;
  size_t at_ = 0;
};

class Reader {
 public:
  Reader(std::span<const std::byte> bytes, size_t expected, const char* what)
      : bytes_(bytes), what_(what) {
    if (bytes.size() != expected) {
      status_ = absl::InvalidArgumentError(
          absl::StrCat("data-plane ", what, " of ", bytes.size(), " bytes, expected ", expected));
      return;
    }
    uint32_t magic = 0;
    uint16_t version = 0;
    uint16_t reserved = 0;
    Get(&magic);
    Get(&version);
    Get(&reserved);
    if (magic != kWireMagic || version != kHandshakeVersion || reserved != 0) {
      status_ = absl::InvalidArgumentError(absl::StrCat(
          "data-plane ", what, " with magic ", magic, " version ", version, ", expected ",
          kWireMagic, " version ", kHandshakeVersion, " (another program or dsv2 version?)"));
    }
  }
  template <typename T>
  void Get(T* value) {
    std::memcpy(value, bytes_.data() + at_, sizeof(*value));
    at_ += sizeof(*value);
  }
  // A status u16 and 6 reserved zero bytes.
  void GetStatus(HandshakeStatus* status) {
    uint16_t raw = 0;
    uint16_t pad16 = 0;
    uint32_t pad32 = 0;
    Get(&raw);
    Get(&pad16);
    Get(&pad32);
    if (raw > static_cast<uint16_t>(HandshakeStatus::kNoKey) || pad16 != 0 || pad32 != 0) {
      status_ = absl::InvalidArgumentError(
          absl::StrCat("data-plane ", what_, " with unknown status ", raw));
    }
    *status = static_cast<HandshakeStatus>(raw);
  }
  const absl::Status& status() const { return status_; }

 private:
  std::span<const std::byte> bytes_;
  const char* what_;
  size_t at_ = 0;
  absl::Status status_;
};

void PutStatus(Writer& w, HandshakeStatus status) {
  w.Put(static_cast<uint16_t>(status));
  w.Skip(6);
}

HandshakeMac Hmac(const DataPlaneKey& key, std::string_view label, uint64_t key_id,
                  const HandshakeNonce& client_nonce, const HandshakeNonce* server_nonce,
                  uint64_t client_id) {
  std::string data(label);
  data.append(reinterpret_cast<const char*>(&key_id), sizeof(key_id));
  data.append(reinterpret_cast<const char*>(client_nonce.data()), client_nonce.size());
  if (server_nonce != nullptr) {
    data.append(reinterpret_cast<const char*>(server_nonce->data()), server_nonce->size());
    data.append(reinterpret_cast<const char*>(&client_id), sizeof(client_id));
  }
  HandshakeMac mac{};
  unsigned int length = 0;
  // HMAC() with SHA-256 cannot fail for these sizes; a zero MAC would be
  // refused by the peer anyway.
  HMAC(EVP_sha256(), key.secret.data(), static_cast<int>(key.secret.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac.data(), &length);
  return mac;
}

}  // namespace

absl::StatusOr<DataPlaneKey> MakeDataPlaneKey() {
  DataPlaneKey key;
  do {
    if (RAND_bytes(reinterpret_cast<unsigned char*>(&key.id), sizeof(key.id)) != 1 ||
        RAND_bytes(key.secret.data(), static_cast<int>(key.secret.size())) != 1) {
      return absl::InternalError("OpenSSL's RAND_bytes failed to make a data-plane key");
    }
  } while (key.id == 0);
  return key;
}

absl::StatusOr<DataPlaneKey> DataPlaneKeyFrom(uint64_t id, std::string_view secret) {
  if (id == 0) return absl::InvalidArgumentError("data-plane key id 0");
  if (secret.size() != kDataPlaneKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("data-plane key of ", secret.size(), " bytes, expected ", kDataPlaneKeyBytes));
  }
  DataPlaneKey key;
  key.id = id;
  std::memcpy(key.secret.data(), secret.data(), secret.size());
  return key;
}

void DataPlaneKeyring::Install(const DataPlaneKey& key) {
  absl::MutexLock lock(&mu_);
  if (current_.has_value() && current_->id != key.id) previous_ = current_;
  current_ = key;
}

std::optional<DataPlaneKey> DataPlaneKeyring::current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

std::optional<DataPlaneKey> DataPlaneKeyring::Find(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  if (id == 0) return std::nullopt;
  if (current_.has_value() && current_->id == id) return current_;
  if (previous_.has_value() && previous_->id == id) return previous_;
  return std::nullopt;
}

const char* HandshakeStatusName(HandshakeStatus status) {
  switch (status) {
    case HandshakeStatus::kOk:
      return "ok";
    case HandshakeStatus::kUnknownKey:
      return "unknown_key";
    case HandshakeStatus::kBadMac:
      return "bad_mac";
    case HandshakeStatus::kNoKey:
      return "no_key";
  }
  return "unknown";
}

std::vector<std::byte> EncodeHello(const HandshakeHello& hello) {
  Writer w(kHelloBytes);
  w.Put(hello.key_id);
  w.Put(hello.client_nonce);
  w.Put(hello.mac);
  return w.Done();
}

std::vector<std::byte> EncodeChallenge(const HandshakeChallenge& challenge) {
  Writer w(kChallengeBytes);
  PutStatus(w, challenge.status);
  w.Put(challenge.server_nonce);
  w.Put(challenge.mac);
  return w.Done();
}

std::vector<std::byte> EncodeProof(const HandshakeProof& proof) {
  Writer w(kProofBytes);
  w.Put(proof.mac);
  return w.Done();
}

std::vector<std::byte> EncodeWelcome(const HandshakeWelcome& welcome) {
  Writer w(kWelcomeBytes);
  PutStatus(w, welcome.status);
  return w.Done();
}

absl::StatusOr<HandshakeHello> ParseHello(std::span<const std::byte> bytes) {
  Reader r(bytes, kHelloBytes, "hello");
  if (!r.status().ok()) return r.status();
  HandshakeHello hello;
  r.Get(&hello.key_id);
  r.Get(&hello.client_nonce);
  r.Get(&hello.mac);
  return hello;
}

absl::StatusOr<HandshakeChallenge> ParseChallenge(std::span<const std::byte> bytes) {
  Reader r(bytes, kChallengeBytes, "challenge");
  if (!r.status().ok()) return r.status();
  HandshakeChallenge challenge;
  r.GetStatus(&challenge.status);
  r.Get(&challenge.server_nonce);
  r.Get(&challenge.mac);
  if (!r.status().ok()) return r.status();
  return challenge;
}

absl::StatusOr<HandshakeProof> ParseProof(std::span<const std::byte> bytes) {
  Reader r(bytes, kProofBytes, "proof");
  if (!r.status().ok()) return r.status();
  HandshakeProof proof;
  r.Get(&proof.mac);
  return proof;
}

absl::StatusOr<HandshakeWelcome> ParseWelcome(std::span<const std::byte> bytes) {
  Reader r(bytes, kWelcomeBytes, "welcome");
  if (!r.status().ok()) return r.status();
  HandshakeWelcome welcome;
  r.GetStatus(&welcome.status);
  if (!r.status().ok()) return r.status();
  return welcome;
}

HandshakeNonce RandomNonce() {
  HandshakeNonce nonce{};
  // A failing CSPRNG leaves a zero nonce; the handshake then only loses its
  // replay protection for this connection, and OpenSSL's RAND_bytes fails
  // only when the system has no entropy source at all.
  RAND_bytes(nonce.data(), static_cast<int>(nonce.size()));
  return nonce;
}

HandshakeMac HelloMac(const DataPlaneKey& key, const HandshakeNonce& client_nonce) {
  return Hmac(key, "dsv2 data-plane hello", key.id, client_nonce, nullptr, 0);
}

HandshakeMac ChallengeMac(const DataPlaneKey& key, const HandshakeNonce& client_nonce,
                          const HandshakeNonce& server_nonce, uint64_t client_id) {
  return Hmac(key, "dsv2 data-plane challenge", key.id, client_nonce, &server_nonce, client_id);
}

HandshakeMac ProofMac(const DataPlaneKey& key, const HandshakeNonce& client_nonce,
                      const HandshakeNonce& server_nonce, uint64_t client_id) {
  return Hmac(key, "dsv2 data-plane proof", key.id, client_nonce, &server_nonce, client_id);
}

bool MacEquals(const HandshakeMac& a, const HandshakeMac& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace dsv2::transport
