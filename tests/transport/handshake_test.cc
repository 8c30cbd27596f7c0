// The data-plane membership handshake (transport/handshake.h): the message
// codecs and MACs, the keyring, and real UCX connections (tcp and shared
// memory) between members, former members and processes that are not
// members, including a raw UCX endpoint that sends forged messages.
#include "transport/handshake.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "tests/common/wait_for.h"
#include "transport/ucx_data_plane.h"
#include "transport/ucx_data_plane_internal.h"

namespace dsv2::transport {
namespace {

DataPlaneKey Key(uint64_t id, uint8_t fill) {
  DataPlaneKey key;
  key.id = id;
  key.secret.fill(fill);
  return key;
}

std::shared_ptr<DataPlaneKeyring> Keyring(std::vector<DataPlaneKey> keys) {
  auto ring = std::make_shared<DataPlaneKeyring>();
  for (const DataPlaneKey& k : keys) ring->Install(k);
  return ring;
}

std::vector<std::byte> Bytes(const std::string& s) {
  std::vector<std::byte> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

TEST(Handshake, MessagesRoundTripAndAnythingElseIsInvalidArgument) {
  HandshakeHello hello;
  hello.key_id = 0x0102030405060708;
  hello.client_nonce = RandomNonce();
  hello.mac = HelloMac(Key(9, 1), hello.client_nonce);
  const std::vector<std::byte> h = EncodeHello(hello);
  absl::StatusOr<HandshakeHello> back = ParseHello(h);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->key_id, hello.key_id);
  EXPECT_EQ(back->client_nonce, hello.client_nonce);
  EXPECT_EQ(back->mac, hello.mac);

  HandshakeChallenge challenge;
  challenge.status = HandshakeStatus::kUnknownKey;
  challenge.server_nonce = RandomNonce();
  const std::vector<std::byte> c = EncodeChallenge(challenge);
  absl::StatusOr<HandshakeChallenge> cback = ParseChallenge(c);
  ASSERT_TRUE(cback.ok()) << cback.status();
  EXPECT_EQ(cback->status, HandshakeStatus::kUnknownKey);
  EXPECT_EQ(cback->server_nonce, challenge.server_nonce);
  EXPECT_TRUE(ParseProof(EncodeProof(HandshakeProof{})).ok());
  absl::StatusOr<HandshakeWelcome> w = ParseWelcome(EncodeWelcome({HandshakeStatus::kBadMac}));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->status, HandshakeStatus::kBadMac);

  // Wrong sizes, magic, version, reserved bits and statuses.
  std::vector<std::byte> shorter(h.begin(), h.end() - 1);
  std::vector<std::byte> longer = h;
  longer.push_back(std::byte{0});
  std::vector<std::byte> magic = h;
  magic[0] ^= std::byte{1};
  std::vector<std::byte> version = h;
  version[4] = std::byte{9};
  std::vector<std::byte> reserved = h;
  reserved[6] = std::byte{1};
  for (const auto& bad : {shorter, longer, magic, version, reserved, std::vector<std::byte>{}}) {
    EXPECT_EQ(ParseHello(bad).status().code(), absl::StatusCode::kInvalidArgument);
  }
  std::vector<std::byte> status = c;
  status[8] = std::byte{200};
  EXPECT_EQ(ParseChallenge(status).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseChallenge(h).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseWelcome(c).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseProof(Bytes("not a proof")).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Handshake, EachMacDependsOnEveryInputAndItsLabel) {
  const DataPlaneKey k = Key(5, 7);
  const HandshakeNonce c = RandomNonce();
  const HandshakeNonce s = RandomNonce();
  const HandshakeMac challenge = ChallengeMac(k, c, s, 3);
  EXPECT_TRUE(MacEquals(challenge, ChallengeMac(k, c, s, 3)));
  // The proof cannot be the challenge's MAC sent back (distinct labels).
  EXPECT_FALSE(MacEquals(challenge, ProofMac(k, c, s, 3)));
  EXPECT_FALSE(MacEquals(challenge, ChallengeMac(k, s, c, 3)));
  EXPECT_FALSE(MacEquals(challenge, ChallengeMac(k, c, s, 4)));
  EXPECT_FALSE(MacEquals(challenge, ChallengeMac(Key(5, 8), c, s, 3)));
  EXPECT_FALSE(MacEquals(challenge, ChallengeMac(Key(6, 7), c, s, 3)));
  EXPECT_FALSE(MacEquals(HelloMac(k, c), HelloMac(k, s)));
  EXPECT_NE(RandomNonce(), RandomNonce());
}

TEST(Handshake, KeysFromTheNetworkAreValidatedAndTheKeyringKeepsCurrentAndPrevious) {
  EXPECT_EQ(DataPlaneKeyFrom(0, std::string(32, 'k')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DataPlaneKeyFrom(1, std::string(31, 'k')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DataPlaneKeyFrom(1, "").status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<DataPlaneKey> made = MakeDataPlaneKey();
  ASSERT_TRUE(made.ok());
  EXPECT_NE(made->id, 0u);
  absl::StatusOr<DataPlaneKey> again = MakeDataPlaneKey();
  ASSERT_TRUE(again.ok());
  EXPECT_NE(made->secret, again->secret);

  DataPlaneKeyring ring;
  EXPECT_FALSE(ring.current().has_value());
  EXPECT_FALSE(ring.Find(0).has_value());
  ring.Install(Key(1, 1));
  ring.Install(Key(1, 1));  // the same key again: 1 is still the only one
  ring.Install(Key(2, 2));
  EXPECT_EQ(ring.current()->id, 2u);
  ASSERT_TRUE(ring.Find(1).has_value());
  EXPECT_EQ(ring.Find(1)->secret, Key(1, 1).secret);
  ring.Install(Key(3, 3));
  EXPECT_FALSE(ring.Find(1).has_value());
  EXPECT_TRUE(ring.Find(2).has_value());
  EXPECT_TRUE(ring.Find(3).has_value());
  EXPECT_FALSE(ring.Find(0).has_value());
}

// Echoes every request; counts them.
struct EchoHandler {
  std::atomic<int> calls{0};
  RequestHandler handler() {
    return [this](std::span<const std::byte> request) {
      calls.fetch_add(1);
      return std::vector<std::byte>(request.begin(), request.end());
    };
  }
};

class UcxHandshakeTest : public testing::TestWithParam<std::string> {
 protected:
  UcxOptions Options(std::shared_ptr<const DataPlaneKeyring> keys) const {
    UcxOptions o;
    o.transports = GetParam();
    o.connect_timeout = absl::Seconds(5);
    o.config.push_back({"KEEPALIVE_INTERVAL", "200ms"});
    o.keys = std::move(keys);
    return o;
  }
  std::unique_ptr<DataPlaneServer> Server(std::shared_ptr<const DataPlaneKeyring> keys) {
    absl::StatusOr<std::unique_ptr<DataPlaneServer>> s =
        CreateUcxServer(Options(std::move(keys)), echo_.handler());
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }
  std::unique_ptr<DataPlaneClient> Client(std::shared_ptr<const DataPlaneKeyring> keys) {
    absl::StatusOr<std::unique_ptr<DataPlaneClient>> c = CreateUcxClient(Options(std::move(keys)));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
  // A request and its echo over a connected peer.
  static absl::Status RoundTrip(DataPlaneClient& client, PeerId peer) {
    const std::vector<std::byte> m = Bytes("expert rows");
    absl::StatusOr<uint64_t> t = client.Send(peer, m);
    if (!t.ok()) return t.status();
    absl::StatusOr<std::vector<std::byte>> r = client.Wait(*t, absl::Now() + absl::Seconds(10));
    if (!r.ok()) return r.status();
    return *r == m ? absl::OkStatus() : absl::InternalError("wrong echo");
  }
  static testing::AssertionResult AwaitStats(
      const DataPlaneServer& server, const std::function<bool(const DataPlaneServerStats&)>& ok) {
    return testing_util::WaitFor([&] { return ok(server.stats()); }, absl::Seconds(30));
  }

  EchoHandler echo_;
};

TEST_P(UcxHandshakeTest, MembersWithTheClusterKeyConnectAndServe) {
  auto keys = Keyring({Key(11, 0xAB)});
  auto server = Server(keys);
  auto client = Client(keys);
  ASSERT_TRUE(server && client);
  absl::StatusOr<PeerId> peer = client->Connect(server->address());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_TRUE(RoundTrip(*client, *peer).ok());
  const DataPlaneServerStats s = server->stats();
  EXPECT_EQ(s.handshakes_accepted, 1);
  EXPECT_EQ(s.refused_bad_mac + s.refused_unknown_key + s.refused_no_key + s.refused_malformed +
                s.refused_unauthenticated,
            0);
}

// A new coordinator incarnation: the shard has the new key and still takes
// the previous one; a key two incarnations old is refused (retry).
TEST_P(UcxHandshakeTest, ThePreviousIncarnationsKeyIsAcceptedAnOlderOneIsNot) {
  auto server = Server(Keyring({Key(1, 1), Key(2, 2)}));
  auto previous = Client(Keyring({Key(1, 1)}));
  auto current = Client(Keyring({Key(2, 2)}));
  auto ancient = Client(Keyring({Key(7, 7)}));
  ASSERT_TRUE(server && previous && current && ancient);
  for (DataPlaneClient* c : {previous.get(), current.get()}) {
    absl::StatusOr<PeerId> peer = c->Connect(server->address());
    ASSERT_TRUE(peer.ok()) << peer.status();
    EXPECT_TRUE(RoundTrip(*c, *peer).ok());
  }
  absl::StatusOr<PeerId> peer = ancient->Connect(server->address());
  ASSERT_FALSE(peer.ok());
  EXPECT_EQ(peer.status().code(), absl::StatusCode::kUnavailable) << peer.status();
  EXPECT_NE(peer.status().message().find("unknown_key"), std::string::npos) << peer.status();
  EXPECT_TRUE(AwaitStats(*server, [](const DataPlaneServerStats& s) {
    return s.refused_unknown_key == 1 && s.handshakes_accepted == 2;
  }));
}

// A process that knows the key id (it is not secret) but not the key: its
// hello's MAC is wrong. Refused, counted, and the server serves members on.
TEST_P(UcxHandshakeTest, ForgedHelloIsRefusedAndCountedAndMembersAreStillServed) {
  auto keys = Keyring({Key(21, 0x11)});
  auto server = Server(keys);
  auto forger = Client(Keyring({Key(21, 0x12)}));
  auto member = Client(keys);
  ASSERT_TRUE(server && forger && member);
  absl::StatusOr<PeerId> forged = forger->Connect(server->address());
  ASSERT_FALSE(forged.ok());
  EXPECT_EQ(forged.status().code(), absl::StatusCode::kPermissionDenied) << forged.status();
  EXPECT_TRUE(
      AwaitStats(*server, [](const DataPlaneServerStats& s) { return s.refused_bad_mac == 1; }));
  absl::StatusOr<PeerId> peer = member->Connect(server->address());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_TRUE(RoundTrip(*member, *peer).ok());
  EXPECT_EQ(echo_.calls.load(), 1);
}

TEST_P(UcxHandshakeTest, AClientWithoutAKeyIsRefusedByAMember) {
  auto server = Server(Keyring({Key(31, 3)}));
  auto outsider = Client(nullptr);
  ASSERT_TRUE(server && outsider);
  absl::StatusOr<PeerId> peer = outsider->Connect(server->address());
  ASSERT_FALSE(peer.ok());
  EXPECT_EQ(peer.status().code(), absl::StatusCode::kUnavailable) << peer.status();
  EXPECT_TRUE(AwaitStats(*server,
                         [](const DataPlaneServerStats& s) { return s.refused_unknown_key == 1; }));
  EXPECT_EQ(echo_.calls.load(), 0);
}

// A server that is not a member (no key, or not this one) cannot pose as a
// shard: the client refuses it before sending anything.
TEST_P(UcxHandshakeTest, AServerWithoutTheKeyCannotPoseAsAMember) {
  auto impostor = Server(nullptr);
  auto member = Client(Keyring({Key(41, 4)}));
  ASSERT_TRUE(impostor && member);
  absl::StatusOr<PeerId> peer = member->Connect(impostor->address());
  ASSERT_FALSE(peer.ok());
  EXPECT_EQ(peer.status().code(), absl::StatusCode::kPermissionDenied) << peer.status();
  EXPECT_NE(peer.status().message().find("did not prove"), std::string::npos) << peer.status();
  EXPECT_EQ(echo_.calls.load(), 0);
}

// Before registering, neither end has a key: nothing connects yet, and
// both say why; once the key is installed the same objects connect.
TEST_P(UcxHandshakeTest, NoKeyYetIsUnavailableUntilTheKeyIsInstalled) {
  auto server_keys = std::make_shared<DataPlaneKeyring>();
  auto client_keys = std::make_shared<DataPlaneKeyring>();
  auto server = Server(server_keys);
  auto keyed_client = Client(Keyring({Key(51, 5)}));
  auto client = Client(client_keys);
  ASSERT_TRUE(server && keyed_client && client);
  absl::StatusOr<PeerId> peer = client->Connect(server->address());
  ASSERT_FALSE(peer.ok());
  EXPECT_EQ(peer.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(peer.status().message().find("no data-plane key yet"), std::string::npos)
      << peer.status();
  peer = keyed_client->Connect(server->address());
  ASSERT_FALSE(peer.ok());
  EXPECT_EQ(peer.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(
      AwaitStats(*server, [](const DataPlaneServerStats& s) { return s.refused_no_key == 1; }));
  server_keys->Install(Key(51, 5));
  client_keys->Install(Key(51, 5));
  peer = client->Connect(server->address());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_TRUE(RoundTrip(*client, *peer).ok());
}

// A raw UCX endpoint (the data plane's own worker, as a non-member process
// would use UCX) that skips or forges the handshake: its requests never
// reach the handler and each is counted; garbage in place of a hello and a
// proof out of turn are refused as malformed.
TEST_P(UcxHandshakeTest, RawEndpointCannotInjectRequestsOrSkipTheHandshake) {
  using namespace ucx_internal;
  auto server = Server(Keyring({Key(61, 6)}));
  ASSERT_TRUE(server);
  absl::StatusOr<SocketAddress> address = ParseHostPort(server->address());
  ASSERT_TRUE(address.ok());
  absl::StatusOr<std::unique_ptr<UcxWorker>> worker = UcxWorker::Create(Options(nullptr));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Start();
  // Each phase on its own endpoint: the server closes a connection it refuses.
  struct Phase {
    unsigned id;
    UcxAmHeader header;
    std::vector<std::byte> data;
  };
  const std::vector<Phase> phases = {
      {kAmRequest, UcxAmHeader{1, 1}, Bytes("injected request")},
      {kAmHello, UcxAmHeader{5, 0}, Bytes("not a hello at all")},
      {kAmProof, UcxAmHeader{5, 1}, EncodeProof(HandshakeProof{})},
  };
  std::vector<ucp_ep_h> eps;
  for (const Phase& phase : phases) {
    absl::Notification sent;
    (*worker)->Post([&] {
      absl::StatusOr<ucp_ep_h> ep = (*worker)->CreateEp(
          &*address, nullptr, [](void*, ucp_ep_h, ucs_status_t) {}, nullptr);
      if (!ep.ok()) {
        sent.Notify();
        return;
      }
      eps.push_back(*ep);
      (*worker)->SendAm(*ep, phase.id, phase.header, phase.data, /*control=*/true,
                        [&](ucs_status_t) { sent.Notify(); });
    });
    ASSERT_TRUE(sent.WaitForNotificationWithTimeout(absl::Seconds(10)));
  }
  EXPECT_TRUE(AwaitStats(*server,
                         [](const DataPlaneServerStats& s) {
                           return s.refused_unauthenticated == 1 && s.refused_malformed == 2;
                         }))
      << server->stats().refused_unauthenticated << " " << server->stats().refused_malformed;
  EXPECT_EQ(echo_.calls.load(), 0);
  EXPECT_EQ(server->stats().handshakes_accepted, 0);
  (*worker)->Stop({[&] {
    for (ucp_ep_h ep : eps) (*worker)->CloseEp(ep);
  }});
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxHandshakeTest, testing::Values("tcp", "sm"),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace dsv2::transport
