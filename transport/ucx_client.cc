// The UCX data-plane client (CreateUcxClient in transport/ucx_data_plane.h);
// the active-message protocol it speaks is described in
// transport/ucx_data_plane_internal.h.
#include <ucp/api/ucp.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "transport/handshake.h"
#include "transport/ucx_data_plane.h"
#include "transport/ucx_data_plane_internal.h"

namespace dsv2::transport {
namespace ucx_internal {
namespace {

// The client.
//
// Thread-safety: the DataPlaneClient methods may be called from any thread;
// they touch UCX only by posting commands to the progress thread. Connect
// waits for the server's welcome; Wait waits for a reply; both wait on mu_
// conditions, never on the progress thread directly.
class UcxClient final : public DataPlaneClient {
 public:
  static absl::StatusOr<std::unique_ptr<DataPlaneClient>> Create(const UcxOptions& options);
  ~UcxClient() override;

  absl::StatusOr<PeerId> Connect(const std::string& address) override;
  void Disconnect(PeerId peer) override;
  absl::StatusOr<uint64_t> Send(PeerId peer, std::vector<std::byte> message) override;
  absl::StatusOr<std::vector<std::byte>> Wait(uint64_t ticket, absl::Time deadline) override {
    return WaitFor(ticket, deadline, /*keep_on_timeout=*/false);
  }
  absl::StatusOr<std::vector<std::byte>> Poll(uint64_t ticket, absl::Time until) override {
    return WaitFor(ticket, until, /*keep_on_timeout=*/true);
  }
  void Forget(uint64_t ticket) override;

 private:
  absl::StatusOr<std::vector<std::byte>> WaitFor(uint64_t ticket, absl::Time deadline,
                                                 bool keep_on_timeout);
  struct Peer {
    enum class State { kConnecting, kConnected, kFailed };
    // Constant after construction.
    UcxClient* client = nullptr;
    PeerId id = 0;
    std::string address;   // the server's address(), "host:port" (the cache key)
    SocketAddress server;  // `address` resolved
    // Guarded by the client's mu_.
    State state = State::kConnecting;
    absl::Status failure;    // when kFailed
    uint64_t client_id = 0;  // the server's id for us, from its challenge
    // Progress thread only.
    ucp_ep_h ep = nullptr;
    bool ep_closed = false;
    uint64_t acked_client_id = 0;  // client_id once the challenge arrived
    bool bye_sent = false;
    std::optional<DataPlaneKey> key;  // what the hello was made with (options_.keys)
    HandshakeNonce client_nonce{};
  };
  struct Pending {
    PeerId peer = 0;
    // Guarded by mu_.
    bool done = false;
    absl::Status status;
    std::vector<std::byte> reply;
  };

  explicit UcxClient(const UcxOptions& options) : options_(options) {}

  static ucs_status_t OnChallenge(void* arg, const void* header, size_t header_length, void* data,
                                  size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnWelcome(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnReply(void* arg, const void* header, size_t header_length, void* data,
                              size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnRefused(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnGoodbye(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param);
  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);

  // Progress thread.
  void StartConnect(const std::shared_ptr<Peer>& peer);
  // The handshake peer named by connect token `token` that `ep` belongs to
  // and that is still connecting; null otherwise.
  std::shared_ptr<Peer> ConnectingPeerLocked(uint64_t token, ucp_ep_h ep)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `ep` is the endpoint of peer `id` (a message that names the
  // peer came from it, not from anyone else).
  bool CameFromLocked(PeerId id, ucp_ep_h ep) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartSend(const std::shared_ptr<Peer>& peer, uint64_t ticket, uint64_t client_id,
                 std::vector<std::byte> message);
  void ClosePeerEp(const std::shared_ptr<Peer>& peer);
  // Says bye to the server if the handshake completed, then closes the
  // endpoint (once the bye is out, or failed).
  void SayByeAndClose(const std::shared_ptr<Peer>& peer);

  void Complete(uint64_t ticket, absl::Status status, std::vector<std::byte> reply)
      ABSL_LOCKS_EXCLUDED(mu_);
  void CompleteLocked(uint64_t ticket, absl::Status status, std::vector<std::byte> reply)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks `peer` failed, fails its tickets, forgets its address and posts
  // the close of its endpoint (after a bye when `say_bye`: we leave, the
  // server is presumably alive). Idempotent.
  void FailPeerLocked(const std::shared_ptr<Peer>& peer, absl::Status status, bool say_bye = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after Create.
  const UcxOptions options_;
  std::unique_ptr<UcxWorker> worker_;

  absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  PeerId next_peer_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
  std::unordered_map<PeerId, std::shared_ptr<Peer>> peers_ ABSL_GUARDED_BY(mu_);
  // Peers that are connecting or connected (not failed), by address().
  std::unordered_map<std::string, std::shared_ptr<Peer>> by_address_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, std::unique_ptr<Pending>> pending_ ABSL_GUARDED_BY(mu_);

  // Progress thread only: peers with an open endpoint. Keeps each Peer alive
  // while UCX may pass it to OnEpError (until ucp_ep_close_nbx).
  std::unordered_map<Peer*, std::shared_ptr<Peer>> open_peers_;
};

absl::StatusOr<std::unique_ptr<DataPlaneClient>> UcxClient::Create(const UcxOptions& options) {
  std::unique_ptr<UcxClient> client(new UcxClient(options));
  absl::StatusOr<std::unique_ptr<UcxWorker>> worker = UcxWorker::Create(options);
  if (!worker.ok()) return worker.status();
  client->worker_ = std::move(*worker);
  for (auto [id, callback] :
       {std::pair{kAmChallenge, &UcxClient::OnChallenge},
        std::pair{kAmWelcome, &UcxClient::OnWelcome}, std::pair{kAmReply, &UcxClient::OnReply},
        std::pair{kAmRefused, &UcxClient::OnRefused},
        std::pair{kAmGoodbye, &UcxClient::OnGoodbye}}) {
    if (absl::Status s = client->worker_->SetAmHandler(id, callback, client.get()); !s.ok()) {
      return s;
    }
  }
  client->worker_->Start();
  return std::unique_ptr<DataPlaneClient>(std::move(client));
}

UcxClient::~UcxClient() {
  {
    absl::MutexLock lock(&mu_);
    shut_down_ = true;
    for (auto& [ticket, pending] : pending_) {
      if (!pending->done) {
        pending->done = true;
        pending->status = absl::UnavailableError("the UCX client was shut down");
      }
    }
    for (auto& [id, peer] : peers_) {
      if (peer->state != Peer::State::kFailed) {
        peer->state = Peer::State::kFailed;
        peer->failure = absl::UnavailableError("the UCX client was shut down");
      }
    }
    by_address_.clear();
  }
  if (worker_ == nullptr) return;  // Create failed before the worker existed
  // Bye to every server that answered our hello (so it can release its
  // endpoint to us), let the byes go out, then close every endpoint.
  worker_->Stop({[this] {
                   std::vector<std::shared_ptr<Peer>> peers;
                   for (auto& [raw, peer] : open_peers_) peers.push_back(peer);
                   for (auto& peer : peers) SayByeAndClose(peer);
                 },
                 [this] {
                   while (!open_peers_.empty()) ClosePeerEp(open_peers_.begin()->second);
                 }});
  // Destroys the UCX worker while this object (which its callbacks use) is
  // still whole.
  worker_.reset();
}

absl::StatusOr<PeerId> UcxClient::Connect(const std::string& address) {
  // Parsed and resolved before anything reaches UCX (and outside mu_: a
  // name lookup may block).
  absl::StatusOr<SocketAddress> server = ParseHostPort(address);
  if (!server.ok()) return server.status();
  absl::MutexLock lock(&mu_);
  if (shut_down_) return absl::FailedPreconditionError("the UCX client was shut down");
  std::shared_ptr<Peer> peer;
  if (auto it = by_address_.find(address); it != by_address_.end()) {
    peer = it->second;
  } else {
    peer = std::make_shared<Peer>();
    peer->client = this;
    peer->id = next_peer_id_++;
    peer->address = address;
    peer->server = *server;
    peers_.emplace(peer->id, peer);
    by_address_.emplace(address, peer);
    worker_->Post([this, peer] { StartConnect(peer); });
  }
  const absl::Time deadline = absl::Now() + options_.connect_timeout;
  auto not_connecting = [](Peer* p) { return p->state != Peer::State::kConnecting; };
  if (!mu_.AwaitWithDeadline(absl::Condition(+not_connecting, peer.get()), deadline)) {
    FailPeerLocked(peer, absl::UnavailableError(absl::StrCat(
                             "UCX peer did not answer the connection handshake within ",
                             absl::FormatDuration(options_.connect_timeout))));
  }
  if (peer->state == Peer::State::kFailed) {
    peers_.erase(peer->id);  // the caller never learns this id
    return peer->failure;
  }
  return peer->id;
}

void UcxClient::Disconnect(PeerId id) {
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(id);
  if (it == peers_.end()) return;
  std::shared_ptr<Peer> peer = std::move(it->second);
  peers_.erase(it);
  FailPeerLocked(peer, absl::UnavailableError(absl::StrCat("UCX peer ", id, " was disconnected")),
                 /*say_bye=*/true);
}

absl::StatusOr<uint64_t> UcxClient::Send(PeerId id, std::vector<std::byte> message) {
  uint64_t ticket = 0;
  uint64_t client_id = 0;
  std::shared_ptr<Peer> peer;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return absl::FailedPreconditionError("the UCX client was shut down");
    auto it = peers_.find(id);
    if (it == peers_.end()) return absl::NotFoundError(absl::StrCat("no UCX peer ", id));
    peer = it->second;
    if (peer->state == Peer::State::kFailed) return peer->failure;
    if (peer->state != Peer::State::kConnected) {
      return absl::FailedPreconditionError(absl::StrCat("UCX peer ", id, " is still connecting"));
    }
    ticket = next_ticket_++;
    auto pending = std::make_unique<Pending>();
    pending->peer = id;
    pending_.emplace(ticket, std::move(pending));
    client_id = peer->client_id;
  }
  worker_->Post(
      [this, peer = std::move(peer), ticket, client_id, message = std::move(message)]() mutable {
        StartSend(peer, ticket, client_id, std::move(message));
      });
  return ticket;
}

absl::StatusOr<std::vector<std::byte>> UcxClient::WaitFor(uint64_t ticket, absl::Time deadline,
                                                          bool keep_on_timeout) {
  const absl::Time start = absl::Now();
  absl::MutexLock lock(&mu_);
  auto it = pending_.find(ticket);
  if (it == pending_.end()) return absl::NotFoundError(absl::StrCat("no UCX ticket ", ticket));
  // The entry stays in pending_ (and `pending` valid) while we wait: only
  // this waiter removes it (REQUIRES in data_plane.h: one waiter, no Forget
  // meanwhile).
  Pending* pending = it->second.get();
  if (!mu_.AwaitWithDeadline(absl::Condition(&pending->done), deadline)) {
    if (keep_on_timeout) {
      return absl::DeadlineExceededError(absl::StrCat("no reply to ticket ", ticket, " yet"));
    }
    const PeerId peer = pending->peer;
    pending_.erase(ticket);
    return absl::UnavailableError(absl::StrCat("no reply to ticket ", ticket, " from UCX peer ",
                                               peer, " within ",
                                               absl::FormatDuration(absl::Now() - start)));
  }
  absl::Status status = std::move(pending->status);
  std::vector<std::byte> reply = std::move(pending->reply);
  pending_.erase(ticket);
  if (!status.ok()) return status;
  return reply;
}

void UcxClient::Forget(uint64_t ticket) {
  absl::MutexLock lock(&mu_);
  pending_.erase(ticket);
}

void UcxClient::Complete(uint64_t ticket, absl::Status status, std::vector<std::byte> reply) {
  absl::MutexLock lock(&mu_);
  CompleteLocked(ticket, std::move(status), std::move(reply));
}

void UcxClient::CompleteLocked(uint64_t ticket, absl::Status status, std::vector<std::byte> reply) {
  auto it = pending_.find(ticket);
  if (it == pending_.end() || it->second->done) return;  // forgotten, timed out or failed
  it->second->done = true;
  it->second->status = std::move(status);
  it->second->reply = std::move(reply);
}

void UcxClient::FailPeerLocked(const std::shared_ptr<Peer>& peer, absl::Status status,
                               bool say_bye) {
  if (peer->state == Peer::State::kFailed) return;
  peer->state = Peer::State::kFailed;
  peer->failure = status;
  if (auto it = by_address_.find(peer->address); it != by_address_.end() && it->second == peer) {
    by_address_.erase(it);
  }
  for (auto& [ticket, pending] : pending_) {
    if (pending->peer == peer->id && !pending->done) {
      pending->done = true;
      pending->status = status;
    }
  }
  worker_->Post([this, peer, say_bye] {
    if (say_bye) {
      SayByeAndClose(peer);
    } else {
      ClosePeerEp(peer);
    }
  });
}

void UcxClient::StartConnect(const std::shared_ptr<Peer>& peer) {
  {
    absl::MutexLock lock(&mu_);
    if (peer->state != Peer::State::kConnecting) return;  // timed out or disconnected already
  }
  HandshakeHello hello;
  hello.client_nonce = peer->client_nonce = RandomNonce();
  if (options_.keys != nullptr) {
    peer->key = options_.keys->current();
    if (!peer->key.has_value()) {
      absl::MutexLock lock(&mu_);
      FailPeerLocked(peer, absl::UnavailableError(
                               "no data-plane key yet (this member has not registered with the "
                               "coordinator)"));
      return;
    }
    hello.key_id = peer->key->id;
    hello.mac = HelloMac(*peer->key, hello.client_nonce);
  }
  absl::StatusOr<ucp_ep_h> ep =
      worker_->CreateEp(&peer->server, nullptr, &UcxClient::OnEpError, peer.get());
  if (!ep.ok()) {
    absl::MutexLock lock(&mu_);
    FailPeerLocked(peer, ep.status());
    return;
  }
  peer->ep = *ep;
  open_peers_.emplace(peer.get(), peer);
  UcxAmHeader header;
  header.ticket = peer->id;  // the connect token every handshake message echoes
  worker_->SendAm(peer->ep, kAmHello, header, EncodeHello(hello), /*control=*/true,
                  [this, peer](ucs_status_t s) {
                    if (s == UCS_OK) return;
                    absl::MutexLock lock(&mu_);
                    FailPeerLocked(peer, UcsError(absl::StrCat("UCX hello to peer ", peer->id), s));
                  });
}

std::shared_ptr<UcxClient::Peer> UcxClient::ConnectingPeerLocked(uint64_t token, ucp_ep_h ep) {
  if (!CameFromLocked(token, ep)) return nullptr;
  const std::shared_ptr<Peer>& peer = peers_.at(token);
  return peer->state == Peer::State::kConnecting ? peer : nullptr;
}

bool UcxClient::CameFromLocked(PeerId id, ucp_ep_h ep) const {
  auto it = peers_.find(id);
  return ep != nullptr && it != peers_.end() && it->second->ep == ep;
}

void UcxClient::StartSend(const std::shared_ptr<Peer>& peer, uint64_t ticket, uint64_t client_id,
                          std::vector<std::byte> message) {
  if (peer->ep == nullptr || peer->ep_closed) {
    Complete(ticket, absl::UnavailableError(absl::StrCat("UCX peer ", peer->id, " is closed")), {});
    return;
  }
  UcxAmHeader header;
  header.ticket = ticket;
  header.client_id = client_id;
  const PeerId peer_id = peer->id;
  worker_->SendAm(
      peer->ep, kAmRequest, header, std::move(message), /*control=*/false,
      [this, ticket, peer_id](ucs_status_t s) {
        if (s == UCS_OK) return;
        Complete(ticket,
                 UcsError(absl::StrCat("sending ticket ", ticket, " to UCX peer ", peer_id), s),
                 {});
      });
}

void UcxClient::SayByeAndClose(const std::shared_ptr<Peer>& peer) {
  if (peer->ep == nullptr || peer->ep_closed || peer->acked_client_id == 0 || peer->bye_sent) {
    ClosePeerEp(peer);
    return;
  }
  peer->bye_sent = true;
  UcxAmHeader header;
  header.ticket = peer->id;
  header.client_id = peer->acked_client_id;
  worker_->SendAm(peer->ep, kAmBye, header, {}, /*control=*/true, [this, peer](ucs_status_t) {
    // Not from inside a UCX callback: the close is a command.
    worker_->Post([this, peer] { ClosePeerEp(peer); });
  });
}

void UcxClient::ClosePeerEp(const std::shared_ptr<Peer>& peer) {
  if (peer->ep != nullptr && !peer->ep_closed) {
    peer->ep_closed = true;
    worker_->CloseEp(peer->ep);
  }
  open_peers_.erase(peer.get());
}

ucs_status_t UcxClient::OnChallenge(void* arg, const void* header, size_t header_length, void* data,
                                    size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxClient*>(arg);
  std::optional<HandshakeMessage> m =
      ReadHandshakeMessage(header, header_length, data, length, param);
  if (!m) return UCS_OK;
  const UcxAmHeader& h = m->header;
  absl::MutexLock lock(&self->mu_);
  std::shared_ptr<Peer> peer = self->ConnectingPeerLocked(h.ticket, m->ep);
  if (peer == nullptr || peer->acked_client_id != 0) return UCS_OK;
  absl::StatusOr<HandshakeChallenge> challenge = ParseChallenge(m->data);
  if (!challenge.ok()) {
    self->FailPeerLocked(peer, absl::UnavailableError(absl::StrCat("UCX peer ", peer->address, ": ",
                                                                   challenge.status().message())));
    return UCS_OK;
  }
  switch (challenge->status) {
    case HandshakeStatus::kOk:
      break;
    case HandshakeStatus::kBadMac:
      self->FailPeerLocked(peer, absl::PermissionDeniedError(absl::StrCat(
                                     "the data-plane server at ", peer->address,
                                     " refused our hello: our key is not the cluster's")));
      return UCS_OK;
    default:
      // It has no key yet or another incarnation's: it registers again soon.
      self->FailPeerLocked(
          peer, absl::UnavailableError(absl::StrCat(
                    "the data-plane server at ", peer->address, " refused our hello (",
                    HandshakeStatusName(challenge->status), "; key id ",
                    peer->key.has_value() ? peer->key->id : 0, "): retry after it registers")));
      return UCS_OK;
  }
  HandshakeProof proof;
  if (peer->key.has_value()) {
    if (!MacEquals(challenge->mac, ChallengeMac(*peer->key, peer->client_nonce,
                                                challenge->server_nonce, h.client_id))) {
      self->FailPeerLocked(peer, absl::PermissionDeniedError(absl::StrCat(
                                     "the data-plane server at ", peer->address,
                                     " did not prove that it is a member of this cluster")));
      return UCS_OK;
    }
    proof.mac = ProofMac(*peer->key, peer->client_nonce, challenge->server_nonce, h.client_id);
  }
  peer->client_id = h.client_id;
  peer->acked_client_id = h.client_id;
  // Sent from a command, not from inside UCX's callback.
  self->worker_->Post([self, peer, h, bytes = EncodeProof(proof)]() mutable {
    if (peer->ep == nullptr || peer->ep_closed) return;
    self->worker_->SendAm(
        peer->ep, kAmProof, h, std::move(bytes), /*control=*/true, [self, peer](ucs_status_t s) {
          if (s == UCS_OK) return;
          absl::MutexLock lock(&self->mu_);
          self->FailPeerLocked(peer, UcsError(absl::StrCat("UCX proof to peer ", peer->id), s));
        });
  });
  return UCS_OK;
}

ucs_status_t UcxClient::OnWelcome(void* arg, const void* header, size_t header_length, void* data,
                                  size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxClient*>(arg);
  std::optional<HandshakeMessage> m =
      ReadHandshakeMessage(header, header_length, data, length, param);
  if (!m) return UCS_OK;
  const UcxAmHeader& h = m->header;
  absl::MutexLock lock(&self->mu_);
  std::shared_ptr<Peer> peer = self->ConnectingPeerLocked(h.ticket, m->ep);
  if (peer == nullptr || peer->acked_client_id == 0 || h.client_id != peer->acked_client_id) {
    return UCS_OK;
  }
  absl::StatusOr<HandshakeWelcome> welcome = ParseWelcome(m->data);
  if (!welcome.ok()) {
    self->FailPeerLocked(peer, absl::UnavailableError(absl::StrCat("UCX peer ", peer->address, ": ",
                                                                   welcome.status().message())));
  } else if (welcome->status != HandshakeStatus::kOk) {
    self->FailPeerLocked(
        peer, absl::PermissionDeniedError(absl::StrCat("the data-plane server at ", peer->address,
                                                       " refused our proof (",
                                                       HandshakeStatusName(welcome->status), ")")));
  } else {
    peer->state = Peer::State::kConnected;
  }
  return UCS_OK;
}

ucs_status_t UcxClient::OnReply(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxClient*>(arg);
  UcxAmHeader h;
  if (!ReadAmHeader(header, header_length, &h)) return UCS_OK;
  const uint64_t ticket = h.ticket;
  {
    absl::MutexLock lock(&self->mu_);
    auto it = self->pending_.find(ticket);
    // Returning UCS_OK without receiving drops the data (the sender's send
    // completes normally). A reply counts only from the peer the ticket
    // was sent to.
    if (it == self->pending_.end() || it->second->done ||
        !self->CameFromLocked(it->second->peer, ReplyEp(param))) {
      return UCS_OK;
    }
  }
  if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
    self->worker_->RecvAmData(
        data, length, [self, ticket](ucs_status_t s, std::vector<std::byte> bytes) {
          if (s == UCS_OK) {
            self->Complete(ticket, absl::OkStatus(), std::move(bytes));
          } else {
            self->Complete(ticket,
                           UcsError(absl::StrCat("receiving the reply to ticket ", ticket), s), {});
          }
        });
    return UCS_OK;
  }
  // Eager: `data` is valid only during this callback.
  self->Complete(ticket, absl::OkStatus(), CopyBytes(data, length));
  return UCS_OK;
}

ucs_status_t UcxClient::OnRefused(void* arg, const void* header, size_t header_length,
                                  void* /*data*/, size_t /*length*/,
                                  const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxClient*>(arg);
  UcxAmHeader h;
  if (!ReadAmHeader(header, header_length, &h)) return UCS_OK;
  absl::MutexLock lock(&self->mu_);
  auto it = self->pending_.find(h.ticket);
  if (it == self->pending_.end() || !self->CameFromLocked(it->second->peer, ReplyEp(param))) {
    return UCS_OK;
  }
  self->CompleteLocked(h.ticket,
                       absl::UnavailableError(absl::StrCat(
                           "UCX server dropped ticket ", h.ticket,
                           ": it is shutting down or the request is over its size limit")),
                       {});
  return UCS_OK;
}

ucs_status_t UcxClient::OnGoodbye(void* arg, const void* header, size_t header_length,
                                  void* /*data*/, size_t /*length*/,
                                  const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxClient*>(arg);
  UcxAmHeader h;
  if (!ReadAmHeader(header, header_length, &h)) return UCS_OK;
  absl::MutexLock lock(&self->mu_);
  auto it = self->peers_.find(h.ticket);
  if (it != self->peers_.end() && it->second->client_id == h.client_id &&
      self->CameFromLocked(h.ticket, ReplyEp(param))) {
    self->FailPeerLocked(it->second,
                         absl::UnavailableError(absl::StrCat("UCX peer ", h.ticket, " shut down")));
  }
  return UCS_OK;
}

void UcxClient::OnEpError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  // `arg` is a Peer that open_peers_ keeps alive until its endpoint is
  // closed; after ucp_ep_close_nbx UCX no longer calls this.
  Peer* raw = static_cast<Peer*>(arg);
  UcxClient* self = raw->client;
  auto it = self->open_peers_.find(raw);
  if (it == self->open_peers_.end()) return;
  std::shared_ptr<Peer> peer = it->second;
  absl::MutexLock lock(&self->mu_);
  // Posts the close: UCX wants a failed endpoint closed, but not from inside
  // its own error callback.
  self->FailPeerLocked(peer, UcsError(absl::StrCat("UCX peer ", peer->id, " failed"), status));
}

}  // namespace
}  // namespace ucx_internal

absl::StatusOr<std::unique_ptr<DataPlaneClient>> CreateUcxClient(const UcxOptions& options) {
  return ucx_internal::UcxClient::Create(options);
}

}  // namespace dsv2::transport
