// The UCX data-plane server (CreateUcxServer in transport/ucx_data_plane.h);
// the active-message protocol it speaks is described in
// transport/ucx_data_plane_internal.h.
#include <ucp/api/ucp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "spdlog/spdlog.h"
#include "transport/handshake.h"
#include "transport/ucx_data_plane.h"
#include "transport/ucx_data_plane_internal.h"

namespace dsv2::transport {
namespace ucx_internal {
namespace {

// The server.
//
// Threads: the progress thread receives requests (copying eager ones,
// fetching rendezvous ones with ucp_am_recv_data_nbx) and queues them; the
// handler thread runs the RequestHandler one request at a time and posts
// each reply to the progress thread, which sends it on the server's
// endpoint to that client. Shutdown may be called from any thread.
class UcxServer final : public DataPlaneServer {
 public:
  static absl::StatusOr<std::unique_ptr<DataPlaneServer>> Create(const UcxOptions& options,
                                                                 RequestHandler handler);
  ~UcxServer() override { Shutdown(); }

  std::string address() const override { return address_; }
  DataPlaneServerStats stats() const override;
  void Shutdown() override;

 private:
  // An accepted connection: the server's own endpoint to that client.
  struct ClientConn {
    // kAccepted -> (hello) kChallenged -> (proof) kAuthenticated; a refusal
    // closes the connection instead.
    enum class State { kAccepted, kChallenged, kAuthenticated };
    UcxServer* server = nullptr;
    uint64_t id = 0;
    uint64_t token = 0;  // the client's connect token from its hello (its PeerId for us)
    ucp_ep_h ep = nullptr;
    bool failed = false;
    State state = State::kAccepted;
    std::optional<DataPlaneKey> key;  // the hello's key (with options_.keys)
    HandshakeNonce client_nonce{};
    HandshakeNonce server_nonce{};
  };
  struct Inbound {
    uint64_t client_id = 0;
    uint64_t ticket = 0;
    std::vector<std::byte> message;
  };

  UcxServer(const UcxOptions& options, RequestHandler handler)
      : options_(options), handler_(std::move(handler)) {}

  static void OnConnection(ucp_conn_request_h request, void* arg);
  static ucs_status_t OnHello(void* arg, const void* header, size_t header_length, void* data,
                              size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnProof(void* arg, const void* header, size_t header_length, void* data,
                              size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnRequest(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnBye(void* arg, const void* header, size_t header_length, void* data,
                            size_t length, const ucp_am_recv_param_t* param);
  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);

  // Progress thread.
  void Accept(ucp_conn_request_h request);
  void HandleHello(const HandshakeMessage& hello);
  void HandleProof(const HandshakeMessage& proof);
  // The connection whose endpoint `ep` is; null when none (closed since).
  ClientConn* ConnOf(ucp_ep_h ep);
  // Counts a refused handshake or request and closes the connection (after
  // sending what was queued on it: the refusal).
  void Refuse(ClientConn& conn, HandshakeStatus reason, const std::string& what);
  void RefuseMalformed(ClientConn& conn, const std::string& what);
  void SendReply(uint64_t client_id, uint64_t ticket, std::vector<std::byte> reply);
  // Tells the client that its request `ticket` will not be answered.
  void SendRefusal(uint64_t client_id, uint64_t ticket);
  void SendGoodbyes();
  void CloseConn(uint64_t client_id, bool flush = false);

  void Enqueue(Inbound inbound) ABSL_LOCKS_EXCLUDED(queue_mu_);
  void HandlerLoop();

  // Constant after Create.
  const UcxOptions options_;
  const RequestHandler handler_;
  std::unique_ptr<UcxWorker> worker_;
  std::string address_;
  std::thread handler_thread_;

  absl::Mutex shutdown_mu_;  // serialises Shutdown calls
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;

  absl::Mutex queue_mu_;
  std::deque<Inbound> queue_ ABSL_GUARDED_BY(queue_mu_);
  bool handler_stop_ ABSL_GUARDED_BY(queue_mu_) = false;

  // Set by Shutdown; the progress thread then drops new requests.
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> requests_eager_{0};
  std::atomic<int64_t> requests_rendezvous_{0};
  std::atomic<int64_t> replies_sent_{0};
  std::atomic<int64_t> reply_send_errors_{0};
  std::atomic<int64_t> handshakes_accepted_{0};
  std::atomic<int64_t> refused_malformed_{0};
  std::atomic<int64_t> refused_unknown_key_{0};
  std::atomic<int64_t> refused_no_key_{0};
  std::atomic<int64_t> refused_bad_mac_{0};
  std::atomic<int64_t> refused_unauthenticated_{0};

  // Progress thread only.
  uint64_t next_client_id_ = 1;
  std::unordered_map<uint64_t, std::shared_ptr<ClientConn>> conns_;
  std::unordered_map<ucp_ep_h, uint64_t> conn_by_ep_;
};

absl::StatusOr<std::unique_ptr<DataPlaneServer>> UcxServer::Create(const UcxOptions& options,
                                                                   RequestHandler handler) {
  std::unique_ptr<UcxServer> server(new UcxServer(options, std::move(handler)));
  // UCX's tcp transport listens on every network device it uses: keep it
  // to the one that holds listen_host, so that --host 127.0.0.1 stays on
  // loopback (UCX_NET_DEVICES in the environment or options.config wins).
  UcxOptions worker_options = options;
  bool devices_set = std::getenv("UCX_NET_DEVICES") != nullptr;
  for (const auto& [name, value] : options.config) devices_set |= name == "NET_DEVICES";
  if (const std::string device = InterfaceOf(options.listen_host);
      !devices_set && !device.empty()) {
    worker_options.config.emplace_back("NET_DEVICES", device);
  }
  absl::StatusOr<std::unique_ptr<UcxWorker>> worker = UcxWorker::Create(worker_options);
  if (!worker.ok()) return worker.status();
  server->worker_ = std::move(*worker);
  for (auto [id, callback] :
       {std::pair{kAmHello, &UcxServer::OnHello}, std::pair{kAmProof, &UcxServer::OnProof},
        std::pair{kAmRequest, &UcxServer::OnRequest}, std::pair{kAmBye, &UcxServer::OnBye}}) {
    if (absl::Status s = server->worker_->SetAmHandler(id, callback, server.get()); !s.ok()) {
      return s;
    }
  }
  absl::StatusOr<int> port = server->worker_->Listen(options.listen_host, options.listen_port,
                                                     &UcxServer::OnConnection, server.get());
  if (!port.ok()) return port.status();
  std::string host = options.advertise_host.empty() ? options.listen_host : options.advertise_host;
  if (host.find(':') != std::string::npos && host.front() != '[')
    host = absl::StrCat("[", host, "]");
  server->address_ = absl::StrCat(host, ":", *port);
  server->handler_thread_ = std::thread([s = server.get()] { s->HandlerLoop(); });
  server->worker_->Start();
  return std::unique_ptr<DataPlaneServer>(std::move(server));
}

DataPlaneServerStats UcxServer::stats() const {
  DataPlaneServerStats stats;
  stats.requests_eager = requests_eager_.load();
  stats.requests_rendezvous = requests_rendezvous_.load();
  stats.replies_sent = replies_sent_.load();
  stats.reply_send_errors = reply_send_errors_.load();
  stats.handshakes_accepted = handshakes_accepted_.load();
  stats.refused_malformed = refused_malformed_.load();
  stats.refused_unknown_key = refused_unknown_key_.load();
  stats.refused_no_key = refused_no_key_.load();
  stats.refused_bad_mac = refused_bad_mac_.load();
  stats.refused_unauthenticated = refused_unauthenticated_.load();
  return stats;
}

void UcxServer::Shutdown() {
  absl::MutexLock shutdown_lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  stopping_.store(true);
  std::deque<Inbound> dropped;
  {
    absl::MutexLock lock(&queue_mu_);
    handler_stop_ = true;
    dropped.swap(queue_);
  }
  if (worker_ == nullptr) return;  // Create failed before the worker (and handler) existed
  if (!dropped.empty()) {
    // Refused now, while the handler may still be busy, so their clients
    // need not wait for it.
    worker_->Post([this, dropped = std::move(dropped)] {
      for (const Inbound& inbound : dropped) SendRefusal(inbound.client_id, inbound.ticket);
    });
  }
  if (handler_thread_.joinable()) handler_thread_.join();
  // The reply of the request that was in the handler was posted before
  // Stop, so it goes out first; the phases then let the replies in flight
  // complete, say goodbye, and close every endpoint.
  worker_->Stop({[] {}, [this] { SendGoodbyes(); },
                 [this] {
                   while (!conns_.empty()) CloseConn(conns_.begin()->first, /*flush=*/true);
                 }});
  worker_.reset();
}

void UcxServer::Enqueue(Inbound inbound) {
  absl::MutexLock lock(&queue_mu_);
  if (handler_stop_) return;
  queue_.push_back(std::move(inbound));
}

void UcxServer::HandlerLoop() {
  for (;;) {
    Inbound inbound;
    {
      absl::MutexLock lock(&queue_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
        return handler_stop_ || !queue_.empty();
      };
      queue_mu_.Await(absl::Condition(&ready));
      if (handler_stop_) return;
      inbound = std::move(queue_.front());
      queue_.pop_front();
    }
    std::vector<std::byte> reply = handler_(inbound.message);
    worker_->Post(
        [this, client_id = inbound.client_id, ticket = inbound.ticket,
         reply = std::move(reply)]() mutable { SendReply(client_id, ticket, std::move(reply)); });
  }
}

void UcxServer::OnConnection(ucp_conn_request_h request, void* arg) {
  auto* self = static_cast<UcxServer*>(arg);
  // Endpoint creation is deferred out of the UCX callback.
  self->worker_->Post([self, request] { self->Accept(request); });
}

void UcxServer::Accept(ucp_conn_request_h request) {
  if (stopping_.load()) {
    worker_->Reject(request);
    return;
  }
  auto conn = std::make_shared<ClientConn>();
  conn->server = this;
  conn->id = next_client_id_++;
  absl::StatusOr<ucp_ep_h> ep =
      worker_->CreateEp(nullptr, request, &UcxServer::OnEpError, conn.get());
  // Without an endpoint there is no way to answer; the client's Connect
  // fails or times out.
  if (!ep.ok()) return;
  conn->ep = *ep;
  conns_.emplace(conn->id, conn);
  conn_by_ep_.emplace(conn->ep, conn->id);
}

ucs_status_t UcxServer::OnHello(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxServer*>(arg);
  // Anything but a hello as we send them is not our protocol: dropped (its
  // connection, if any, is refused when it sends a request).
  std::optional<HandshakeMessage> m =
      ReadHandshakeMessage(header, header_length, data, length, param);
  if (self->stopping_.load() || !m) return UCS_OK;
  self->worker_->Post([self, m = *std::move(m)] { self->HandleHello(m); });
  return UCS_OK;
}

ucs_status_t UcxServer::OnProof(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxServer*>(arg);
  std::optional<HandshakeMessage> m =
      ReadHandshakeMessage(header, header_length, data, length, param);
  if (self->stopping_.load() || !m) return UCS_OK;
  self->worker_->Post([self, m = *std::move(m)] { self->HandleProof(m); });
  return UCS_OK;
}

ucs_status_t UcxServer::OnRequest(void* arg, const void* header, size_t header_length, void* data,
                                  size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxServer*>(arg);
  const bool rendezvous = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  UcxAmHeader h;
  if (!ReadAmHeader(header, header_length, &h)) return rendezvous ? UCS_ERR_INVALID_PARAM : UCS_OK;
  // Only from the authenticated connection the request names. This runs on
  // the progress thread, which owns conns_.
  const ucp_ep_h ep = ReplyEp(param);
  ClientConn* conn = self->ConnOf(ep);
  if (conn == nullptr || conn->id != h.client_id ||
      conn->state != ClientConn::State::kAuthenticated) {
    if (ep == nullptr) {
      self->refused_unauthenticated_.fetch_add(1);  // not our protocol: no connection to close
    } else if (conn != nullptr && !conn->failed) {
      self->refused_unauthenticated_.fetch_add(1);
      spdlog::warn("data plane: closed connection {}: a request before the handshake completed",
                   conn->id);
      // Not from inside the callback: the close is a command.
      self->worker_->Post([self, id = conn->id] { self->CloseConn(id); });
    }
    return rendezvous ? UCS_ERR_CANCELED : UCS_OK;  // the data is dropped
  }
  if (self->stopping_.load() || length > self->options_.max_request_bytes) {
    // A rendezvous sender learns of the refusal from its send's status.
    if (rendezvous) return UCS_ERR_CANCELED;
    self->worker_->Post([self, h] { self->SendRefusal(h.client_id, h.ticket); });
    return UCS_OK;
  }
  if (rendezvous) {
    self->requests_rendezvous_.fetch_add(1);
    self->worker_->RecvAmData(data, length,
                              [self, h](ucs_status_t s, std::vector<std::byte> bytes) {
                                // A failed fetch means the client's endpoint failed; it learns
                                // that from its own endpoint.
                                if (s != UCS_OK) return;
                                self->Enqueue(Inbound{h.client_id, h.ticket, std::move(bytes)});
                              });
    return UCS_OK;
  }
  // Eager: `data` is valid only during this callback; the copy lands in a
  // std::vector, aligned for the wire structs.
  self->requests_eager_.fetch_add(1);
  self->Enqueue(Inbound{h.client_id, h.ticket, CopyBytes(data, length)});
  return UCS_OK;
}

ucs_status_t UcxServer::OnBye(void* arg, const void* header, size_t header_length, void* /*data*/,
                              size_t /*length*/, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxServer*>(arg);
  UcxAmHeader h;
  if (!ReadAmHeader(header, header_length, &h)) return UCS_OK;
  self->worker_->Post([self, h, ep = ReplyEp(param)] {
    ClientConn* conn = self->ConnOf(ep);
    // Only the connection itself says bye for it.
    if (conn != nullptr && conn->id == h.client_id && conn->token == h.ticket) {
      self->CloseConn(h.client_id);
    }
  });
  return UCS_OK;
}

UcxServer::ClientConn* UcxServer::ConnOf(ucp_ep_h ep) {
  if (ep == nullptr) return nullptr;
  auto it = conn_by_ep_.find(ep);
  if (it == conn_by_ep_.end()) return nullptr;
  return conns_.at(it->second).get();
}

void UcxServer::Refuse(ClientConn& conn, HandshakeStatus reason, const std::string& what) {
  switch (reason) {
    case HandshakeStatus::kUnknownKey:
      refused_unknown_key_.fetch_add(1);
      break;
    case HandshakeStatus::kNoKey:
      refused_no_key_.fetch_add(1);
      break;
    case HandshakeStatus::kBadMac:
      refused_bad_mac_.fetch_add(1);
      break;
    case HandshakeStatus::kOk:
      break;  // not a refusal: never passed here
  }
  spdlog::warn("data plane: refused connection {}: {} ({})", conn.id, what,
               HandshakeStatusName(reason));
  CloseConn(conn.id, /*flush=*/true);
}

void UcxServer::RefuseMalformed(ClientConn& conn, const std::string& what) {
  refused_malformed_.fetch_add(1);
  spdlog::warn("data plane: refused connection {}: {}", conn.id, what);
  CloseConn(conn.id);
}

void UcxServer::HandleHello(const HandshakeMessage& m) {
  if (stopping_.load()) return;
  const uint64_t token = m.header.ticket;
  ClientConn* conn = ConnOf(m.ep);
  if (conn == nullptr || conn->failed) return;  // not a connection we accepted (or closed since)
  if (conn->state != ClientConn::State::kAccepted) {
    RefuseMalformed(*conn, "a second hello");
    return;
  }
  absl::StatusOr<HandshakeHello> hello = ParseHello(m.data);
  if (!hello.ok()) {
    RefuseMalformed(*conn, std::string(hello.status().message()));
    return;
  }
  conn->token = token;
  conn->client_nonce = hello->client_nonce;
  conn->server_nonce = RandomNonce();
  HandshakeChallenge challenge;
  challenge.server_nonce = conn->server_nonce;
  if (options_.keys != nullptr) {
    conn->key = options_.keys->Find(hello->key_id);
    if (!options_.keys->current().has_value()) {
      challenge.status = HandshakeStatus::kNoKey;
    } else if (!conn->key.has_value()) {
      challenge.status = HandshakeStatus::kUnknownKey;
    } else if (!MacEquals(hello->mac, HelloMac(*conn->key, hello->client_nonce))) {
      challenge.status = HandshakeStatus::kBadMac;
    } else {
      challenge.mac = ChallengeMac(*conn->key, conn->client_nonce, conn->server_nonce, conn->id);
    }
  }
  UcxAmHeader ack;
  ack.ticket = token;
  ack.client_id = conn->id;
  worker_->SendAm(conn->ep, kAmChallenge, ack, EncodeChallenge(challenge), /*control=*/true,
                  [](ucs_status_t) {});
  if (challenge.status != HandshakeStatus::kOk) {
    Refuse(*conn, challenge.status, absl::StrCat("hello under key id ", hello->key_id));
    return;
  }
  conn->state = ClientConn::State::kChallenged;
}

void UcxServer::HandleProof(const HandshakeMessage& m) {
  if (stopping_.load()) return;
  const UcxAmHeader& header = m.header;
  ClientConn* conn = ConnOf(m.ep);
  if (conn == nullptr || conn->failed) return;
  if (conn->state != ClientConn::State::kChallenged || header.client_id != conn->id ||
      header.ticket != conn->token) {
    RefuseMalformed(*conn, "a proof out of turn");
    return;
  }
  absl::StatusOr<HandshakeProof> proof = ParseProof(m.data);
  if (!proof.ok()) {
    RefuseMalformed(*conn, std::string(proof.status().message()));
    return;
  }
  HandshakeWelcome welcome;
  if (conn->key.has_value() && !MacEquals(proof->mac, ProofMac(*conn->key, conn->client_nonce,
                                                               conn->server_nonce, conn->id))) {
    welcome.status = HandshakeStatus::kBadMac;
  }
  worker_->SendAm(conn->ep, kAmWelcome, header, EncodeWelcome(welcome), /*control=*/true,
                  [](ucs_status_t) {});
  if (welcome.status != HandshakeStatus::kOk) {
    Refuse(*conn, welcome.status, "a proof that does not match the challenge");
    return;
  }
  conn->state = ClientConn::State::kAuthenticated;
  handshakes_accepted_.fetch_add(1);
}

void UcxServer::SendReply(uint64_t client_id, uint64_t ticket, std::vector<std::byte> reply) {
  auto it = conns_.find(client_id);
  if (it == conns_.end() || it->second->failed) {
    reply_send_errors_.fetch_add(1);
    return;
  }
  UcxAmHeader header;
  header.ticket = ticket;
  header.client_id = client_id;
  worker_->SendAm(
      it->second->ep, kAmReply, header, std::move(reply), /*control=*/false,
      [this](ucs_status_t s) { (s == UCS_OK ? replies_sent_ : reply_send_errors_).fetch_add(1); });
}

void UcxServer::SendRefusal(uint64_t client_id, uint64_t ticket) {
  auto it = conns_.find(client_id);
  if (it == conns_.end() || it->second->failed) return;
  UcxAmHeader header;
  header.ticket = ticket;
  header.client_id = client_id;
  worker_->SendAm(it->second->ep, kAmRefused, header, {}, /*control=*/true, [](ucs_status_t) {});
}

void UcxServer::SendGoodbyes() {
  for (auto& [id, conn] : conns_) {
    if (conn->failed) continue;
    UcxAmHeader header;
    header.ticket = conn->token;
    header.client_id = id;
    worker_->SendAm(conn->ep, kAmGoodbye, header, {}, /*control=*/true, [](ucs_status_t) {});
  }
}

void UcxServer::CloseConn(uint64_t client_id, bool flush) {
  auto it = conns_.find(client_id);
  if (it == conns_.end()) return;
  std::shared_ptr<ClientConn> conn = it->second;
  worker_->CloseEp(conn->ep, flush && !conn->failed);
  conns_.erase(it);
  conn_by_ep_.erase(conn->ep);
}

void UcxServer::OnEpError(void* arg, ucp_ep_h /*ep*/, ucs_status_t /*status*/) {
  // `arg` is a ClientConn that conns_ keeps alive until its endpoint is
  // closed; after ucp_ep_close_nbx UCX no longer calls this.
  auto* conn = static_cast<ClientConn*>(arg);
  conn->failed = true;  // replies to it now count as reply_send_errors
  UcxServer* self = conn->server;
  const uint64_t id = conn->id;
  self->worker_->Post([self, id] { self->CloseConn(id); });
}

}  // namespace
}  // namespace ucx_internal

absl::StatusOr<std::unique_ptr<DataPlaneServer>> CreateUcxServer(const UcxOptions& options,
                                                                 RequestHandler handler) {
  return ucx_internal::UcxServer::Create(options, std::move(handler));
}

}  // namespace dsv2::transport
