// In-process data plane (transport/in_process_data_plane.h).
//
// A server is a ServerCore in a process-wide registry under "inproc:<n>";
// a client's Send queues (message, its ClientCore, ticket) on the core, and
// the core's handler thread delivers each reply to the ClientCore, where
// Wait picks it up. Cores are shared_ptrs so that neither side's lifetime
// depends on the other's: a reply for a destroyed client, or a Send to a
// shut-down server, finds a closed core and is dropped or refused.
//
// Locks: a ServerCore's mu_ and a ClientCore's mu_ are never held together
// (the handler thread releases the server lock before delivering), and the
// registry lock is innermost.
#include "transport/in_process_data_plane.h"

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace dsv2::transport {
namespace {

constexpr char kAddressPrefix[] = "inproc:";

// The client's side: pending tickets. Safe for concurrent use.
class ClientCore {
 public:
  // Records the outcome of `ticket` unless it was forgotten or already done.
  void Complete(uint64_t ticket, absl::Status status, std::vector<std::byte> reply)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(ticket);
    if (it == pending_.end() || it->second->done) return;
    it->second->done = true;
    it->second->status = std::move(status);
    it->second->reply = std::move(reply);
  }

  struct Pending {
    uint64_t peer = 0;
    bool done = false;
    absl::Status status;
    std::vector<std::byte> reply;
  };

  absl::Mutex mu_;
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Pending>> pending_ ABSL_GUARDED_BY(mu_);
};

// A registered server: its request queue and handler thread.
class ServerCore {
 public:
  ServerCore(std::string address, RequestHandler handler)
      : address_(std::move(address)), handler_(std::move(handler)) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~ServerCore() { Shutdown(); }

  const std::string& address() const { return address_; }

  // False when the server has shut down (the request is not queued).
  bool Enqueue(std::vector<std::byte> message, std::shared_ptr<ClientCore> client, uint64_t ticket)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (stopped_) return false;
    queue_.push_back(Item{std::move(message), std::move(client), ticket});
    ++stats_.requests_eager;
    return true;
  }

  DataPlaneServerStats stats() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return stats_;
  }

  // Fails the queued requests with Unavailable, lets the one in the handler
  // finish (its reply is delivered) and joins the handler thread.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_) {
    std::deque<Item> dropped;
    {
      absl::MutexLock lock(&mu_);
      if (stopped_) return;
      stopped_ = true;
      dropped.swap(queue_);
    }
    for (Item& item : dropped) {
      item.client->Complete(item.ticket,
                            absl::UnavailableError(absl::StrCat("in-process server ", address_,
                                                                " shut down before replying")),
                            {});
    }
    thread_.join();
  }

 private:
  struct Item {
    std::vector<std::byte> message;
    std::shared_ptr<ClientCore> client;
    uint64_t ticket = 0;
  };

  void Loop() {
    for (;;) {
      Item item;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopped_ || !queue_.empty(); };
        mu_.Await(absl::Condition(&ready));
        if (queue_.empty()) return;  // stopped
        item = std::move(queue_.front());
        queue_.pop_front();
      }
      std::vector<std::byte> reply = handler_(item.message);
      {
        absl::MutexLock lock(&mu_);
        ++stats_.replies_sent;
      }
      item.client->Complete(item.ticket, absl::OkStatus(), std::move(reply));
    }
  }

  // Constant after construction.
  const std::string address_;
  const RequestHandler handler_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  DataPlaneServerStats stats_ ABSL_GUARDED_BY(mu_);
};

// Process-wide: address -> live server core.
class Registry {
 public:
  static Registry& Get() {
    static Registry* registry = new Registry();  // never destroyed: used until exit
    return *registry;
  }

  std::string NextAddress() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return absl::StrCat(kAddressPrefix, next_id_++);
  }
  void Register(const std::shared_ptr<ServerCore>& core) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    servers_[core->address()] = core;
  }
  // Only while `core` is the one registered at its address.
  void Unregister(const std::shared_ptr<ServerCore>& core) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = servers_.find(core->address());
    if (it != servers_.end() && it->second.lock() == core) servers_.erase(it);
  }
  std::shared_ptr<ServerCore> Find(const std::string& address) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = servers_.find(address);
    return it == servers_.end() ? nullptr : it->second.lock();
  }

 private:
  absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, std::weak_ptr<ServerCore>> servers_ ABSL_GUARDED_BY(mu_);
};

class InProcessServer final : public DataPlaneServer {
 public:
  InProcessServer(std::string address, RequestHandler handler)
      : core_(std::make_shared<ServerCore>(std::move(address), std::move(handler))) {
    Registry::Get().Register(core_);
  }
  ~InProcessServer() override { Shutdown(); }

  std::string address() const override { return core_->address(); }
  DataPlaneServerStats stats() const override { return core_->stats(); }
  void Shutdown() override {
    Registry::Get().Unregister(core_);
    core_->Shutdown();
  }

 private:
  const std::shared_ptr<ServerCore> core_;
};

// Thread-safety: safe for concurrent use (one waiter per ticket).
class InProcessClient final : public DataPlaneClient {
 public:
  ~InProcessClient() override {
    // A reply may still arrive from a server's handler thread: it finds the
    // ClientCore (kept alive by its queue item) and is dropped with it.
    absl::MutexLock lock(&core_->mu_);
    core_->pending_.clear();
  }

  absl::StatusOr<PeerId> Connect(const std::string& address) override {
    uint64_t n = 0;
    if (address.rfind(kAddressPrefix, 0) != 0 ||
        !absl::SimpleAtoi(address.substr(sizeof(kAddressPrefix) - 1), &n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", address, "\" is not an in-process address (inproc:<n>)"));
    }
    std::shared_ptr<ServerCore> server = Registry::Get().Find(address);
    if (server == nullptr) {
      return absl::UnavailableError(absl::StrCat("no in-process server at ", address));
    }
    absl::MutexLock lock(&mu_);
    if (auto it = by_address_.find(address); it != by_address_.end()) {
      // The cached peer is reused while its server is the registered one.
      if (auto p = peers_.find(it->second); p != peers_.end() && p->second.server == server) {
        return it->second;
      }
    }
    const PeerId id = next_peer_id_++;
    peers_[id] = Peer{address, server};
    by_address_[address] = id;
    return id;
  }

  void Disconnect(PeerId peer) override {
    {
      absl::MutexLock lock(&mu_);
      auto it = peers_.find(peer);
      if (it == peers_.end()) return;
      if (auto a = by_address_.find(it->second.address);
          a != by_address_.end() && a->second == peer) {
        by_address_.erase(a);
      }
      peers_.erase(it);
    }
    absl::MutexLock lock(&core_->mu_);
    for (auto& [ticket, pending] : core_->pending_) {
      if (pending->peer == peer && !pending->done) {
        pending->done = true;
        pending->status =
            absl::UnavailableError(absl::StrCat("in-process peer ", peer, " was disconnected"));
      }
    }
  }

  absl::StatusOr<uint64_t> Send(PeerId peer, std::vector<std::byte> message) override {
    std::shared_ptr<ServerCore> server;
    {
      absl::MutexLock lock(&mu_);
      auto it = peers_.find(peer);
      if (it == peers_.end()) return absl::NotFoundError(absl::StrCat("no in-process peer ", peer));
      server = it->second.server;
    }
    uint64_t ticket = 0;
    {
      absl::MutexLock lock(&core_->mu_);
      ticket = core_->next_ticket_++;
      auto pending = std::make_unique<ClientCore::Pending>();
      pending->peer = peer;
      core_->pending_.emplace(ticket, std::move(pending));
    }
    if (!server->Enqueue(std::move(message), core_, ticket)) {
      absl::MutexLock lock(&core_->mu_);
      core_->pending_.erase(ticket);
      return absl::UnavailableError(
          absl::StrCat("in-process server ", server->address(), " has shut down"));
    }
    return ticket;
  }

  absl::StatusOr<std::vector<std::byte>> Wait(uint64_t ticket, absl::Time deadline) override {
    return WaitFor(ticket, deadline, /*keep_on_timeout=*/false);
  }
  absl::StatusOr<std::vector<std::byte>> Poll(uint64_t ticket, absl::Time until) override {
    return WaitFor(ticket, until, /*keep_on_timeout=*/true);
  }

  void Forget(uint64_t ticket) override {
    absl::MutexLock lock(&core_->mu_);
    core_->pending_.erase(ticket);
  }

 private:
  absl::StatusOr<std::vector<std::byte>> WaitFor(uint64_t ticket, absl::Time deadline,
                                                 bool keep_on_timeout) {
    const absl::Time start = absl::Now();
    absl::MutexLock lock(&core_->mu_);
    auto it = core_->pending_.find(ticket);
    if (it == core_->pending_.end()) {
      return absl::NotFoundError(absl::StrCat("no in-process ticket ", ticket));
    }
    // Stays valid while we wait: only this waiter erases the entry.
    ClientCore::Pending* pending = it->second.get();
    if (!core_->mu_.AwaitWithDeadline(absl::Condition(&pending->done), deadline)) {
      if (keep_on_timeout) {
        return absl::DeadlineExceededError(absl::StrCat("no reply to ticket ", ticket, " yet"));
      }
      core_->pending_.erase(ticket);
      return absl::UnavailableError(absl::StrCat("no reply to ticket ", ticket, " within ",
                                                 absl::FormatDuration(absl::Now() - start)));
    }
    absl::Status status = std::move(pending->status);
    std::vector<std::byte> reply = std::move(pending->reply);
    core_->pending_.erase(ticket);
    if (!status.ok()) return status;
    return reply;
  }

  struct Peer {
    std::string address;
    std::shared_ptr<ServerCore> server;
  };

  const std::shared_ptr<ClientCore> core_ = std::make_shared<ClientCore>();

  absl::Mutex mu_;  // never held together with core_->mu_
  PeerId next_peer_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::unordered_map<PeerId, Peer> peers_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, PeerId> by_address_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<DataPlaneClient> CreateInProcessClient() {
  return std::make_unique<InProcessClient>();
}

std::unique_ptr<DataPlaneServer> CreateInProcessServer(RequestHandler handler) {
  return std::make_unique<InProcessServer>(Registry::Get().NextAddress(), std::move(handler));
}

std::unique_ptr<DataPlaneServer> CreateInProcessServerAt(const std::string& address,
                                                         RequestHandler handler) {
  return std::make_unique<InProcessServer>(address, std::move(handler));
}

}  // namespace dsv2::transport
