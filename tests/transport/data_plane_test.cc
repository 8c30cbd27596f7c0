// Data-plane channel tests: the same behaviours over the in-process
// implementation and UCX (tcp and shared memory), plus UCX specifics (eager
// vs rendezvous, a peer process killed mid-request).
#include "transport/data_plane.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "tests/common/wait_for.h"
#include "tools/process/child_process.h"
#include "transport/in_process_data_plane.h"
#include "transport/ucx_data_plane.h"

namespace dsv2::transport {
namespace {

// The reply to a message: every byte XOR 0x5A, then the length (8 bytes),
// so a reply matched to the wrong request shows.
std::vector<std::byte> Transform(std::span<const std::byte> request) {
  std::vector<std::byte> out(request.size() + 8);
  for (size_t i = 0; i < request.size(); ++i) out[i] = request[i] ^ std::byte{0x5A};
  const uint64_t n = request.size();
  std::memcpy(out.data() + request.size(), &n, sizeof(n));
  return out;
}

std::vector<std::byte> RandomMessage(std::mt19937_64& rng, size_t size) {
  std::vector<std::byte> out(size);
  for (auto& b : out) b = static_cast<std::byte>(rng() & 0xFF);
  return out;
}

std::vector<std::byte> Text(const std::string& s) {
  std::vector<std::byte> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

bool StartsWith(std::span<const std::byte> m, const std::string& prefix) {
  return m.size() >= prefix.size() && std::memcmp(m.data(), prefix.data(), prefix.size()) == 0;
}

// A handler that answers with Transform, except that requests starting with
// "block" wait until Release() (and then answer).
class TestHandler {
 public:
  RequestHandler handler() {
    return [this](std::span<const std::byte> request) {
      if (StartsWith(request, "block")) {
        absl::MutexLock lock(&mu_);
        ++blocked_;
        mu_.Await(absl::Condition(&released_));
      }
      return Transform(request);
    };
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    released_ = true;
  }
  // Waits until a request is blocked in the handler.
  bool AwaitBlocked(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto blocked = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return blocked_ > 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&blocked), timeout);
  }

 private:
  absl::Mutex mu_;
  bool released_ ABSL_GUARDED_BY(mu_) = false;
  int blocked_ ABSL_GUARDED_BY(mu_) = 0;
};

// Polls the server's stats until `done` holds.
::testing::AssertionResult AwaitStat(const DataPlaneServer& server,
                                     const std::function<bool(const DataPlaneServerStats&)>& done) {
  return testing_util::WaitFor([&] { return done(server.stats()); }, absl::Seconds(30));
}

struct Backend {
  std::string name;
  // UCX options (ignored in-process).
  std::string transports;
  bool ucx = false;
};

void PrintTo(const Backend& b, std::ostream* os) { *os << b.name; }

UcxOptions TestUcxOptions(const std::string& transports) {
  UcxOptions options;
  options.transports = transports;
  options.rendezvous_threshold = 64 << 10;
  options.connect_timeout = absl::Seconds(3);
  // Notice a dead shared-memory peer within a second instead of 20 s.
  options.config.push_back({"KEEPALIVE_INTERVAL", "200ms"});
  return options;
}

class DataPlaneTest : public testing::TestWithParam<Backend> {
 protected:
  std::unique_ptr<DataPlaneServer> MakeServer(RequestHandler handler) {
    if (!GetParam().ucx) return CreateInProcessServer(std::move(handler));
    absl::StatusOr<std::unique_ptr<DataPlaneServer>> server =
        CreateUcxServer(TestUcxOptions(GetParam().transports), std::move(handler));
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? std::move(*server) : nullptr;
  }
  std::unique_ptr<DataPlaneClient> MakeClient() {
    if (!GetParam().ucx) return CreateInProcessClient();
    absl::StatusOr<std::unique_ptr<DataPlaneClient>> client =
        CreateUcxClient(TestUcxOptions(GetParam().transports));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }
  static absl::Time Deadline() { return absl::Now() + absl::Seconds(10); }
};

TEST_P(DataPlaneTest, OneRoundTrip) {
  TestHandler h;
  auto server = MakeServer(h.handler());
  auto client = MakeClient();
  ASSERT_TRUE(server && client);
  absl::StatusOr<PeerId> peer = client->Connect(server->address());
  ASSERT_TRUE(peer.ok()) << peer.status();
  const std::vector<std::byte> m = Text("hello expert shard");
  absl::StatusOr<uint64_t> ticket = client->Send(*peer, m);
  ASSERT_TRUE(ticket.ok()) << ticket.status();
  absl::StatusOr<std::vector<std::byte>> reply = client->Wait(*ticket, Deadline());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(*reply, Transform(m));
  EXPECT_EQ(server->stats().requests_eager, 1);
}

TEST_P(DataPlaneTest, ManyRandomRequestsInFlightFromFourThreadsMatchTheirReplies) {
  TestHandler h;
  auto server = MakeServer(h.handler());
  auto client = MakeClient();
  ASSERT_TRUE(server && client);
  absl::StatusOr<PeerId> peer = client->Connect(server->address());
  ASSERT_TRUE(peer.ok()) << peer.status();
  constexpr int kThreads = 4;
  constexpr int kPerThread = 50;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(1234 + t);
      std::vector<std::pair<uint64_t, std::vector<std::byte>>> sent;
      for (int i = 0; i < kPerThread; ++i) {
        // Mostly small (eager), some past the 64 KiB rendezvous threshold.
        const size_t size = (rng() % 8 == 0) ? 64 * 1024 + rng() % (192 * 1024) : 1 + rng() % 4096;
        std::vector<std::byte> m = RandomMessage(rng, size);
        absl::StatusOr<uint64_t> ticket = client->Send(*peer, m);
        ASSERT_TRUE(ticket.ok()) << ticket.status();
        sent.emplace_back(*ticket, std::move(m));
      }
      // Collect in an order unlike the sending one.
      std::shuffle(sent.begin(), sent.end(), rng);
      for (auto& [ticket, m] : sent) {
        absl::StatusOr<std::vector<std::byte>> reply = client->Wait(ticket, Deadline());
        ASSERT_TRUE(reply.ok()) << reply.status();
        ASSERT_EQ(*reply, Transform(m));
        ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kThreads * kPerThread);
  const DataPlaneServerStats stats = server->stats();
  EXPECT_EQ(stats.requests_eager + stats.requests_rendezvous, kThreads * kPerThread);
  EXPECT_EQ(stats.reply_send_errors, 0);
}

TEST_P(DataPlaneTest, TwoClientsShareOneServer) {
  TestHandler h;
  auto server = MakeServer(h.handler());
  auto a = MakeClient();
  auto b = MakeClient();
  ASSERT_TRUE(server && a && b);
  absl::StatusOr<PeerId> pa = a->Connect(server->address());
  absl::StatusOr<PeerId> pb = b->Connect(server->address());
  ASSERT_TRUE(pa.ok() && pb.ok());
  const std::vector<std::byte> ma = Text("from a"), mb = Text("from b, longer");
  absl::StatusOr<uint64_t> ta = a->Send(*pa, ma);
  absl::StatusOr<uint64_t> tb = b->Send(*pb, mb);
  ASSERT_TRUE(ta.ok() && tb.ok());
  absl::StatusOr<std::vector<std::byte>> rb = b->Wait(*tb, Deadline());
  absl::StatusOr<std::vector<std::byte>> ra = a->Wait(*ta, Deadline());
  ASSERT_TRUE(ra.ok()) << ra.status();
  ASSERT_TRUE(rb.ok()) << rb.status();
  EXPECT_EQ(*ra, Transform(ma));
  EXPECT_EQ(*rb, Transform(mb));
}

TEST_P(DataPlaneTest, SameAddressGivesSamePeer) {
  TestHandler h;
  auto server = MakeServer(h.handler());
  auto client = MakeClient();
  ASSERT_TRUE(server && client);
  absl::StatusOr<PeerId> p1 = client->Connect(server->address());
  absl::StatusOr<PeerId> p2 = client->Connect(server->address());
  ASSERT_TRUE(p1.ok() && p2.ok());
  EXPECT_EQ(*p1, *p2);
}

TEST_P(DataPlaneTest, UnparsableAddressIsInvalidArgument) {
  auto client = MakeClient();
  ASSERT_TRUE(client);
  for (const std::string address : {"", "garbage", "inproc:x", "dsv2ucx"}) {
    absl::StatusOr<PeerId> peer = client->Connect(address);
    ASSERT_FALSE(peer.ok()) << address;
    EXPECT_EQ(peer.status().code(), absl::StatusCode::kInvalidArgument) << peer.status();
  }
}

TEST_P(DataPlaneTest, UnknownTicketIsNotFound) {
  auto client = MakeClient();
  ASSERT_TRUE(client);
  EXPECT_EQ(client->Wait(12345, Deadline()).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(DataPlaneTest, UnknownPeerIsNotFound) {
  auto client = MakeClient();
  ASSERT_TRUE(client);
  EXPECT_EQ(client->Send(77, Text("x")).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(DataPlaneTest, ForgottenTicketIsNotFoundAndItsReplyIsDropped) {
  TestHandler h;
  auto server = MakeServer(h.handler());
  auto client = MakeClient();
  ASSERT_TRUE(server && client);
  absl::StatusOr<PeerId> peer = client->Connect(server->address());
  ASSERT_TRUE(peer.ok());
  absl::StatusOr<uint64_t> t1 = client->Send(*peer, Text("one"));
  ASSERT_TRUE(t1.ok());
  client->Forget(*t1);
  EXPECT_EQ(client->Wait(*t1, Deadline()).status().code(), absl::StatusCode::kNotFound);
  // The channel still works after the dropped reply.
  absl::StatusOr<uint64_t> t2 = client->Send(*peer, Text("two"));
  ASSERT_TRUE(t2.ok());
  absl::StatusOr<std::vector<std::byte>> reply = client->Wait(*t2, Deadline());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(*reply, Transform(Text("two")));
}

TEST_P(DataPlaneTest, DeadlinePassingIsUnavailable) {
  TestHandler h;
  auto server = MakeServer(h.handler());
  auto client = MakeClient();
  ASSERT_TRUE(server && client);
  absl::StatusOr<PeerId> peer = client->Connect(server->address());
  ASSERT_TRUE(peer.ok());
  absl::StatusOr<uint64_t> ticket = client->Send(*peer, Text("block me"));
  ASSERT_TRUE(ticket.ok());
  ASSERT_TRUE(h.AwaitBlocked(absl::Seconds(10)));
  absl::StatusOr<std::vector<std::byte>> reply =
      client->Wait(*ticket, absl::Now() + absl::Milliseconds(50));
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnavailable) << reply.status();
  // A ticket that timed out is gone.
  EXPECT_EQ(client->Wait(*ticket, Deadline()).status().code(), absl::StatusCode::kNotFound);
  h.Release();
}

TEST_P(DataPlaneTest, DisconnectFailsOutstandingTicketsAndForgetsThePeer) {
  TestHandler h;
  auto server = MakeServer(h.handler());
  auto client = MakeClient();
  ASSERT_TRUE(server && client);
  absl::StatusOr<PeerId> peer = client->Connect(server->address());
  ASSERT_TRUE(peer.ok());
  absl::StatusOr<uint64_t> ticket = client->Send(*peer, Text("block me"));
  ASSERT_TRUE(ticket.ok());
  ASSERT_TRUE(h.AwaitBlocked(absl::Seconds(10)));
  client->Disconnect(*peer);
  EXPECT_EQ(client->Wait(*ticket, Deadline()).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->Send(*peer, Text("x")).status().code(), absl::StatusCode::kNotFound);
  h.Release();
  // Reconnecting gives a new, working peer.
  absl::StatusOr<PeerId> again = client->Connect(server->address());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NE(*again, *peer);
  absl::StatusOr<uint64_t> t2 = client->Send(*again, Text("after"));
  ASSERT_TRUE(t2.ok());
  absl::StatusOr<std::vector<std::byte>> reply = client->Wait(*t2, Deadline());
  ASSERT_TRUE(reply.ok()) << reply.status();
}

TEST_P(DataPlaneTest, ShutdownFailsQueuedRequestsAndFinishesTheOneInTheHandler) {
  TestHandler h;
  auto server = MakeServer(h.handler());
  auto client = MakeClient();
  ASSERT_TRUE(server && client);
  absl::StatusOr<PeerId> peer = client->Connect(server->address());
  ASSERT_TRUE(peer.ok());
  absl::StatusOr<uint64_t> blocked = client->Send(*peer, Text("block me"));
  ASSERT_TRUE(blocked.ok());
  ASSERT_TRUE(h.AwaitBlocked(absl::Seconds(10)));
  absl::StatusOr<uint64_t> queued = client->Send(*peer, Text("queued behind"));
  ASSERT_TRUE(queued.ok());
  // Wait until the server holds the queued request (UCX: received).
  ASSERT_TRUE(
      AwaitStat(*server, [](const DataPlaneServerStats& s) { return s.requests_eager == 2; }));
  // Shutdown waits for the handler, which stays blocked until the queued
  // request has failed: so that request was dropped, not handled.
  std::thread shutdown([&] { server->Shutdown(); });
  const absl::Time deadline = Deadline();
  absl::StatusOr<std::vector<std::byte>> reply = client->Wait(*queued, deadline);
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnavailable) << reply.status();
  EXPECT_EQ(reply.status().message().find("no reply"), std::string::npos) << reply.status();
  h.Release();
  shutdown.join();
  absl::StatusOr<std::vector<std::byte>> first = client->Wait(*blocked, deadline);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, Transform(Text("block me")));
  // Later requests fail (at Send or Wait), through the failure, not the
  // deadline.
  absl::StatusOr<uint64_t> later = client->Send(*peer, Text("too late"));
  if (later.ok()) {
    absl::StatusOr<std::vector<std::byte>> r = client->Wait(*later, deadline);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
    EXPECT_EQ(r.status().message().find("no reply"), std::string::npos) << r.status();
  } else {
    EXPECT_EQ(later.status().code(), absl::StatusCode::kUnavailable) << later.status();
  }
  server->Shutdown();  // idempotent
}

TEST_P(DataPlaneTest, DestroyedServerMakesLaterRequestsUnavailable) {
  TestHandler h;
  auto server = MakeServer(h.handler());
  auto client = MakeClient();
  ASSERT_TRUE(server && client);
  absl::StatusOr<PeerId> peer = client->Connect(server->address());
  ASSERT_TRUE(peer.ok());
  const std::string address = server->address();
  server.reset();
  // Either Send already knows, or the ticket fails before its deadline.
  absl::StatusOr<uint64_t> ticket = client->Send(*peer, Text("anyone there?"));
  if (ticket.ok()) {
    absl::StatusOr<std::vector<std::byte>> reply =
        client->Wait(*ticket, absl::Now() + absl::Seconds(5));
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnavailable) << reply.status();
  } else {
    EXPECT_EQ(ticket.status().code(), absl::StatusCode::kUnavailable) << ticket.status();
  }
}

TEST_P(DataPlaneTest, ConnectToAServerThatIsGoneIsUnavailable) {
  TestHandler h;
  auto server = MakeServer(h.handler());
  auto client = MakeClient();
  ASSERT_TRUE(server && client);
  const std::string address = server->address();
  server.reset();
  absl::StatusOr<PeerId> peer = client->Connect(address);
  ASSERT_FALSE(peer.ok());
  EXPECT_EQ(peer.status().code(), absl::StatusCode::kUnavailable) << peer.status();
}

INSTANTIATE_TEST_SUITE_P(Backends, DataPlaneTest,
                         testing::Values(Backend{"InProcess", "", false},
                                         Backend{"UcxTcp", "tcp", true},
                                         Backend{"UcxSm", "sm", true}),
                         [](const testing::TestParamInfo<Backend>& i) { return i.param.name; });

// ---------------------------------------------------------------------------
// UCX specifics.

class UcxTest : public testing::TestWithParam<std::string> {};

TEST_P(UcxTest, SmallRequestGoesEagerAndLargeOneByRendezvous) {
  TestHandler h;
  UcxOptions options = TestUcxOptions(GetParam());
  options.rendezvous_threshold = 16 << 10;
  absl::StatusOr<std::unique_ptr<DataPlaneServer>> server = CreateUcxServer(options, h.handler());
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<std::unique_ptr<DataPlaneClient>> client = CreateUcxClient(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<PeerId> peer = (*client)->Connect((*server)->address());
  ASSERT_TRUE(peer.ok()) << peer.status();
  std::mt19937_64 rng(7);

  const std::vector<std::byte> small = RandomMessage(rng, 1000);
  absl::StatusOr<uint64_t> t1 = (*client)->Send(*peer, small);
  ASSERT_TRUE(t1.ok());
  absl::StatusOr<std::vector<std::byte>> r1 = (*client)->Wait(*t1, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(*r1, Transform(small));
  EXPECT_EQ((*server)->stats().requests_eager, 1);
  EXPECT_EQ((*server)->stats().requests_rendezvous, 0);

  const std::vector<std::byte> large = RandomMessage(rng, 1 << 20);
  absl::StatusOr<uint64_t> t2 = (*client)->Send(*peer, large);
  ASSERT_TRUE(t2.ok());
  absl::StatusOr<std::vector<std::byte>> r2 = (*client)->Wait(*t2, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_EQ(*r2, Transform(large));
  const DataPlaneServerStats stats = (*server)->stats();
  EXPECT_EQ(stats.requests_eager, 1);
  EXPECT_EQ(stats.requests_rendezvous, 1);
  // A rendezvous reply's send completes on the server after the client has
  // fetched it, so the count may lag the client's Wait a little.
  EXPECT_TRUE(
      AwaitStat(**server, [](const DataPlaneServerStats& s) { return s.replies_sent == 2; }));
}

TEST_P(UcxTest, OversizedRequestIsRefusedAndTheServerCarriesOn) {
  TestHandler h;
  UcxOptions options = TestUcxOptions(GetParam());
  options.rendezvous_threshold = 16 << 10;
  options.max_request_bytes = 64 << 10;
  absl::StatusOr<std::unique_ptr<DataPlaneServer>> server = CreateUcxServer(options, h.handler());
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<std::unique_ptr<DataPlaneClient>> client = CreateUcxClient(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<PeerId> peer = (*client)->Connect((*server)->address());
  ASSERT_TRUE(peer.ok()) << peer.status();
  std::mt19937_64 rng(9);
  // Over the limit by rendezvous: refused, not allocated.
  absl::StatusOr<uint64_t> big = (*client)->Send(*peer, RandomMessage(rng, 1 << 20));
  ASSERT_TRUE(big.ok());
  EXPECT_EQ((*client)->Wait(*big, absl::Now() + absl::Seconds(10)).status().code(),
            absl::StatusCode::kUnavailable);
  // The same peer still serves requests within the limit.
  const std::vector<std::byte> ok = RandomMessage(rng, 32 << 10);
  absl::StatusOr<uint64_t> t = (*client)->Send(*peer, ok);
  ASSERT_TRUE(t.ok());
  absl::StatusOr<std::vector<std::byte>> r = (*client)->Wait(*t, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, Transform(ok));
}

// The data plane is reached by host:port through UCX's listener: the
// listener binds the host it is given, and bytes that are not host:port
// (an old packed worker address, garbage) never reach UCX.
TEST_P(UcxTest, ListenerBindsItsHostAndOnlyHostPortIsAccepted) {
  UcxOptions options = TestUcxOptions(GetParam());
  options.listen_host = "127.0.0.1";
  TestHandler h;
  absl::StatusOr<std::unique_ptr<DataPlaneServer>> server = CreateUcxServer(options, h.handler());
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE((*server)->address().rfind("127.0.0.1:", 0) == 0) << (*server)->address();
  absl::StatusOr<std::unique_ptr<DataPlaneClient>> client = CreateUcxClient(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::string blob = "dsv2ucx1";
  for (int i = 0; i < 300; ++i) blob.push_back(static_cast<char>((i * 37) & 0xFF));
  for (const std::string& bad :
       {blob, std::string("127.0.0.1:0"), std::string("127.0.0.1:70000"), std::string(":80"),
        std::string("127.0.0.1:"), std::string("a b:80")}) {
    absl::StatusOr<PeerId> peer = (*client)->Connect(bad);
    ASSERT_FALSE(peer.ok());
    EXPECT_EQ(peer.status().code(), absl::StatusCode::kInvalidArgument) << peer.status();
  }
  absl::StatusOr<PeerId> peer = (*client)->Connect((*server)->address());
  ASSERT_TRUE(peer.ok()) << peer.status();
  absl::StatusOr<uint64_t> t = (*client)->Send(*peer, {std::byte{7}});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE((*client)->Wait(*t, absl::Now() + absl::Seconds(30)).ok());
}

TEST_P(UcxTest, RejectedConfigValueIsInvalidArgument) {
  UcxOptions options = TestUcxOptions(GetParam());
  options.config.push_back({"KEEPALIVE_INTERVAL", "not a duration"});
  absl::StatusOr<std::unique_ptr<DataPlaneClient>> client = CreateUcxClient(options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument) << client.status();
}

// Cross-process: the server runs in a child process (this test binary
// re-executed as UcxChildServer.Serve, started by the project's launcher),
// which is killed with SIGKILL while a request is in its handler. The
// parent's Wait must fail with Unavailable through UCX's peer-failure path,
// well before the Wait deadline.
constexpr char kChildTransportsEnv[] = "DSV2_UCX_CHILD_TRANSPORTS";
// The child's stdout line with its UCX address (hex), among gtest's lines.
constexpr char kChildAddressPrefix[] = "dsv2-ucx-child-address=";

TEST(UcxChildServer, Serve) {
  const char* transports = std::getenv(kChildTransportsEnv);
  if (transports == nullptr) {
    GTEST_SKIP() << "helper for UcxTest.KilledServerProcess*; runs only in its child process";
  }
  TestHandler h;  // never released: "block" requests stay in the handler
  absl::StatusOr<std::unique_ptr<DataPlaneServer>> server =
      CreateUcxServer(TestUcxOptions(transports), h.handler());
  ASSERT_TRUE(server.ok()) << server.status();
  std::cout << kChildAddressPrefix << absl::BytesToHexString((*server)->address()) << std::endl;
  for (;;) pause();  // until the parent's SIGKILL
}

TEST_P(UcxTest, KilledServerProcessFailsOutstandingWaitWithUnavailable) {
  process::ChildOptions o;
  o.argv = {"/proc/self/exe", "--gtest_filter=UcxChildServer.Serve"};
  // Not the parent's sharding or output settings: the child runs exactly
  // the helper test.
  o.inherit_environment = false;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "GTEST_", 6) != 0) o.env.emplace_back(*e);
  }
  o.env.push_back(absl::StrCat(kChildTransportsEnv, "=", GetParam()));
  // Dies with the test process, whatever happens to the test; the
  // destructor kills and reaps it on every way out of this test.
  absl::StatusOr<std::unique_ptr<process::ChildProcess>> child = process::ChildProcess::Start(o);
  ASSERT_TRUE(child.ok()) << child.status();
  std::string address;
  const absl::Time read_deadline = absl::Now() + absl::Seconds(30);
  while (address.empty()) {
    absl::StatusOr<std::string> line = (*child)->ReadLine(read_deadline);
    ASSERT_TRUE(line.ok()) << "the child server did not report its address: " << line.status();
    if (absl::StartsWith(*line, kChildAddressPrefix)) {
      address = absl::HexStringToBytes(line->substr(std::strlen(kChildAddressPrefix)));
    }
  }

  absl::StatusOr<std::unique_ptr<DataPlaneClient>> client =
      CreateUcxClient(TestUcxOptions(GetParam()));
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<PeerId> peer = (*client)->Connect(address);
  ASSERT_TRUE(peer.ok()) << peer.status();
  std::mt19937_64 rng(11);
  for (size_t bytes : {size_t{100}, size_t{300} << 10}) {
    const std::vector<std::byte> m = RandomMessage(rng, bytes);
    absl::StatusOr<uint64_t> t = (*client)->Send(*peer, m);
    ASSERT_TRUE(t.ok()) << t.status();
    absl::StatusOr<std::vector<std::byte>> r = (*client)->Wait(*t, absl::Now() + absl::Seconds(10));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, Transform(m));
  }
  absl::StatusOr<uint64_t> blocked = (*client)->Send(*peer, Text("block forever"));
  ASSERT_TRUE(blocked.ok());
  // Wherever the request is when the child dies (in flight, queued or in the
  // handler), the Wait must fail.
  const int killed = (*child)->Kill();
  ASSERT_TRUE(WIFSIGNALED(killed) && WTERMSIG(killed) == SIGKILL)
      << process::DescribeExitStatus(killed);

  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  absl::StatusOr<std::vector<std::byte>> reply = (*client)->Wait(*blocked, deadline);
  ASSERT_EQ(reply.status().code(), absl::StatusCode::kUnavailable) << reply.status();
  // Failed through the endpoint error, not by running out the deadline.
  EXPECT_EQ(reply.status().message().find("no reply"), std::string::npos) << reply.status();
  // The peer is now known to have failed.
  EXPECT_EQ((*client)->Send(*peer, Text("x")).status().code(), absl::StatusCode::kUnavailable);
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxTest, testing::Values("tcp", "sm"),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace dsv2::transport
