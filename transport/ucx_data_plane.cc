// UCX active-message data plane (transport/ucx_data_plane.h).
//
// Active messages (every AM header is one UcxAmHeader; the AM data is the
// channel's message, opaque here):
//
//   kAmHello     client -> server  {ticket = connect token, client_id = 0}
//                                  data: the client's UCX worker address
//   kAmHelloAck  server -> client  {ticket = connect token, client_id}
//                                  no data
//   kAmRequest   client -> server  {ticket, client_id}  data: request message
//   kAmReply     server -> client  {ticket, client_id}  data: reply message
//   kAmRefused   server -> client  {ticket, client_id}  no data: the server
//                                  is shutting down and drops this request
//   kAmGoodbye   server -> client  {ticket = connect token, client_id}
//                                  no data: the server is shutting down
//   kAmBye       client -> server  {ticket = connect token, client_id}
//                                  no data: the client disconnects (or is
//                                  destroyed); the server closes its
//                                  endpoint to it
//
// The refusal and goodbye let clients fail their tickets as soon as a
// server shuts down gracefully; over shared memory UCX would otherwise only
// notice a dead peer process (keepalive), never a closed worker in a live
// one. The bye likewise lets a server release its endpoint to a client that
// is gone from a live process.
//
// Why a hello and a server-side endpoint instead of the reply endpoint UCX
// hands the AM callback (UCP_AM_SEND_FLAG_REPLY): in UCX 1.13 that endpoint
// is internal to the server's worker (not "used" by the application), and
// when its peer fails UCX destroys it without telling the application
// (ucp_ep_set_failed -> ucp_ep_disconnected; UCX PR #6722 was never merged).
// A server that held it across the handler call would send a late reply on
// freed memory whenever an attention node died mid-request. So each client
// introduces itself once per server (Connect): the server creates its own
// endpoint to the client's worker address, with an error handler, and
// replies on it; the client id in every request names that endpoint. The
// handshake also makes Connect fail fast (Unavailable) for an unreachable
// server, which a bare ucp_ep_create to a worker address would not.
//
// Threads and ownership (see UcxWorker): every ucp_* call on a worker is made
// by its progress thread, except set-up before the thread starts and
// ucp_worker_destroy after it has been joined. Other threads hand work to it
// through UcxWorker::Post. Locks: a client's mu_ and a server's queue_mu_ may
// be taken on the progress thread (inside UCX callbacks); no thread ever
// calls into UCX or waits for the progress thread while holding them, except
// UcxWorker::Post, whose own mutex is innermost.
#include "transport/ucx_data_plane.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace dsv2::transport {
namespace {

enum AmId : unsigned {
  kAmHello = 1,
  kAmHelloAck = 2,
  kAmRequest = 3,
  kAmReply = 4,
  kAmRefused = 5,
  kAmGoodbye = 6,
  kAmBye = 7,
};

// The AM header of every message (ucp_am_send_nbx's header argument).
struct UcxAmHeader {
  uint64_t ticket = 0;     // request/reply: the client's ticket; hello/ack: connect token
  uint64_t client_id = 0;  // the server's id for the client (0 in a hello)
};
static_assert(sizeof(UcxAmHeader) == 16);
static_assert(offsetof(UcxAmHeader, ticket) == 0);
static_assert(offsetof(UcxAmHeader, client_id) == 8);

// address() = kAddressTag + ucp_worker_get_address bytes. The tag lets
// Connect reject strings that did not come from address(): UCX parses a
// worker address without knowing its length, so garbage must not reach it.
constexpr char kAddressTag[] = "dsv2ucx1";
constexpr size_t kAddressTagBytes = sizeof(kAddressTag) - 1;
// Zero bytes appended to a copied worker address before UCX unpacks it, so a
// truncated address reads zeros (an empty list) rather than past the buffer.
constexpr size_t kAddressPadBytes = 4096;
// The progress thread wakes at least this often even when idle: UCX runs its
// keepalive (dead-peer detection on shared memory) from ucp_worker_progress.
constexpr int kIdleWakeMs = 100;
// UCX keepalive interval unless configured otherwise (UCX syntax).
constexpr char kDefaultKeepalive[] = "1s";
// How long each shutdown phase keeps progressing so that sends, endpoint
// closes and cancelled operations can complete (bounded: a dead peer must
// not hold shutdown up).
constexpr absl::Duration kDrainTimeout = absl::Milliseconds(500);

absl::Status UcsError(const std::string& what, ucs_status_t status) {
  return absl::UnavailableError(absl::StrCat(what, ": ", ucs_status_string(status)));
}

// Whether UCX may pick a shared-memory transport: otherwise setting a
// shared-memory option only earns a UCX warning ("invalid configuration").
bool MayUseSharedMemory(const UcxOptions& options) {
  std::string tls = options.transports;
  if (tls.empty()) {
    const char* env = std::getenv("UCX_TLS");
    if (env == nullptr) return true;
    tls = env;
  }
  if (!tls.empty() && tls[0] == '^') return true;  // "all but ..."
  for (const char* name : {"all", "sm", "shm", "mm", "posix", "sysv"}) {
    for (size_t pos = 0; (pos = tls.find(name, pos)) != std::string::npos; pos += 1) {
      const size_t end = pos + std::strlen(name);
      const bool starts = pos == 0 || tls[pos - 1] == ',';
      const bool ends = end == tls.size() || tls[end] == ',';
      if (starts && ends) return true;
    }
  }
  return false;
}

bool ReadAmHeader(const void* header, size_t header_length, UcxAmHeader* out) {
  if (header == nullptr || header_length != sizeof(UcxAmHeader)) return false;
  std::memcpy(out, header, sizeof(UcxAmHeader));
  return true;
}

std::vector<std::byte> CopyBytes(const void* data, size_t length) {
  std::vector<std::byte> out(length);
  if (length != 0) std::memcpy(out.data(), data, length);
  return out;
}

// A worker address copied with kAddressPadBytes zeros after it.
std::vector<uint8_t> PaddedAddress(const std::string& raw) {
  std::vector<uint8_t> out(raw.size() + kAddressPadBytes, 0);
  std::memcpy(out.data(), raw.data(), raw.size());
  return out;
}

// One UCX context + worker and the progress thread that owns them.
//
// Thread-safety: Post, Start and Stop may be called from any thread (Start
// and Stop once each, by the owner). SetAmHandler and WorkerAddress only
// before Start. SendAm, RecvAmData, CreateEp and CloseEp only on the progress
// thread (from a posted command or a UCX callback).
class UcxWorker {
 public:
  using Command = std::function<void()>;
  // Called once with the final status of a send or close.
  using SendDone = std::function<void(ucs_status_t)>;
  // Called once with the final status and the received bytes.
  using RecvDone = std::function<void(ucs_status_t, std::vector<std::byte>)>;

  static absl::StatusOr<std::unique_ptr<UcxWorker>> Create(const UcxOptions& options);
  ~UcxWorker();

  absl::Status SetAmHandler(unsigned id, ucp_am_recv_callback_t callback, void* arg);
  absl::StatusOr<std::string> WorkerAddress();
  void Start();
  // Queues `command` for the progress thread (FIFO). Commands posted after
  // Stop's are discarded.
  void Post(Command command);
  // Stops the progress loop after every command posted before, then runs
  // each of `phases` in turn on the progress thread, after each progressing
  // until the operations in flight complete (at most kDrainTimeout per
  // phase), and joins the thread. The destructor destroys the worker.
  void Stop(std::vector<Command> phases);

  // Requests and replies go eagerly below options.rendezvous_threshold and
  // by rendezvous from it on; control messages (`control`) always eagerly.
  void SendAm(ucp_ep_h ep, unsigned id, UcxAmHeader header, std::vector<std::byte> data,
              bool control, SendDone done);
  void RecvAmData(void* desc, size_t length, RecvDone done);
  absl::StatusOr<ucp_ep_h> CreateEp(const std::string& raw_address, ucp_err_handler_cb_t on_error,
                                    void* arg);
  void CloseEp(ucp_ep_h ep);

 private:
  // A UCX operation in flight; owned by ops_ until its callback runs.
  struct Op {
    UcxWorker* worker = nullptr;
    UcxAmHeader header;           // must outlive the send (UCX may pack it late)
    std::vector<std::byte> data;  // send source or receive destination
    SendDone send_done;
    RecvDone recv_done;
  };

  explicit UcxWorker(const UcxOptions& options) : options_(options) {}
  void Loop();
  bool RunCommands();  // whether there were any
  void Drain();
  std::unique_ptr<Op> TakeOp(Op* op);
  void DestroyUcx();
  static void OnSendDone(void* request, ucs_status_t status, void* user_data);
  static void OnRecvDone(void* request, ucs_status_t status, size_t length, void* user_data);

  // Constant after Create.
  const UcxOptions options_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int worker_fd_ = -1;  // ucp_worker_get_efd; owned by UCX
  int event_fd_ = -1;   // signalled by Post
  int epoll_fd_ = -1;   // {worker_fd_, event_fd_}
  std::thread thread_;

  absl::Mutex mu_;
  std::vector<Command> commands_ ABSL_GUARDED_BY(mu_);
  // True while commands_ may be non-empty; lets the spin loop notice work
  // without taking mu_, and Post skip the eventfd write when already set.
  std::atomic<bool> commands_pending_{false};

  // Progress thread only (and the Stop caller after the join).
  bool stop_ = false;
  std::vector<Command> stop_phases_;
  std::unordered_map<Op*, std::unique_ptr<Op>> ops_;
};

absl::StatusOr<std::unique_ptr<UcxWorker>> UcxWorker::Create(const UcxOptions& options) {
  std::unique_ptr<UcxWorker> w(new UcxWorker(options));
  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) return UcsError("ucp_config_read", s);
  absl::Status config_status;
  // Every endpoint uses UCP_ERR_HANDLING_MODE_PEER, which UCX 1.13 grants
  // its shared-memory transports (posix, sysv) only when they are told to
  // expose error handling; otherwise "sm" alone finds no usable transport
  // ("no peer failure handler"). Both attach the peer's shared-memory file,
  // the case in which UCX considers this safe, and keepalive then detects a
  // dead peer process. ("MM_ERROR_HANDLING" is the field's name inside each
  // shared-memory transport's UCT table; it reaches both.) An explicit
  // UCX_{POSIX,SYSV}_ERROR_HANDLING in the environment wins.
  if (std::getenv("UCX_POSIX_ERROR_HANDLING") == nullptr &&
      std::getenv("UCX_SYSV_ERROR_HANDLING") == nullptr && MayUseSharedMemory(options)) {
    ucp_config_modify(config, "MM_ERROR_HANDLING", "y");
  }
  // UCX's keepalive (20 s by default) is how a killed peer is noticed over
  // shared memory; a data plane wants to know within about a second.
  // UCX_KEEPALIVE_INTERVAL in the environment or options.config wins.
  if (std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) {
    ucp_config_modify(config, "KEEPALIVE_INTERVAL", kDefaultKeepalive);
  }
  if (!options.transports.empty()) {
    s = ucp_config_modify(config, "TLS", options.transports.c_str());
    if (s != UCS_OK) {
      config_status = absl::InvalidArgumentError(absl::StrCat(
          "UCX transports \"", options.transports, "\" rejected: ", ucs_status_string(s)));
    }
  }
  for (const auto& [name, value] : options.config) {
    if (!config_status.ok()) break;
    s = ucp_config_modify(config, name.c_str(), value.c_str());
    if (s != UCS_OK) {
      config_status = absl::InvalidArgumentError(
          absl::StrCat("UCX config ", name, "=", value, " rejected: ", ucs_status_string(s)));
    }
  }
  if (!config_status.ok()) {
    ucp_config_release(config);
    return config_status;
  }
  ucp_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  s = ucp_init(&params, config, &w->context_);
  ucp_config_release(config);
  if (s != UCS_OK) {
    w->context_ = nullptr;
    return UcsError(absl::StrCat("ucp_init (transports \"", options.transports, "\")"), s);
  }
  ucp_worker_params_t worker_params;
  std::memset(&worker_params, 0, sizeof(worker_params));
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;  // only the progress thread uses it
  s = ucp_worker_create(w->context_, &worker_params, &w->worker_);
  if (s != UCS_OK) {
    w->worker_ = nullptr;
    return UcsError(absl::StrCat("ucp_worker_create (transports \"", options.transports, "\")"), s);
  }
  s = ucp_worker_get_efd(w->worker_, &w->worker_fd_);
  if (s != UCS_OK) return UcsError("ucp_worker_get_efd", s);
  w->event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  w->epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (w->event_fd_ < 0 || w->epoll_fd_ < 0) {
    return absl::UnavailableError(absl::StrCat("eventfd/epoll_create1: ", std::strerror(errno)));
  }
  for (int fd : {w->worker_fd_, w->event_fd_}) {
    epoll_event ev;
    std::memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(w->epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      return absl::UnavailableError(absl::StrCat("epoll_ctl: ", std::strerror(errno)));
    }
  }
  return w;
}

UcxWorker::~UcxWorker() {
  // Stop() joins the thread; a worker that was never started (failed
  // set-up) is destroyed here.
  if (thread_.joinable()) Stop({});
  DestroyUcx();
}

void UcxWorker::DestroyUcx() {
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  worker_ = nullptr;
  // Operations whose callbacks never ran (a peer that stopped responding
  // while the drain timed out) are freed now that UCX cannot touch them.
  ops_.clear();
  if (context_ != nullptr) ucp_cleanup(context_);
  context_ = nullptr;
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (event_fd_ >= 0) close(event_fd_);
  epoll_fd_ = event_fd_ = -1;
}

absl::Status UcxWorker::SetAmHandler(unsigned id, ucp_am_recv_callback_t callback, void* arg) {
  ucp_am_handler_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                     UCP_AM_HANDLER_PARAM_FIELD_ARG;
  param.id = id;
  param.cb = callback;
  param.arg = arg;
  ucs_status_t s = ucp_worker_set_am_recv_handler(worker_, &param);
  if (s != UCS_OK) return UcsError("ucp_worker_set_am_recv_handler", s);
  return absl::OkStatus();
}

absl::StatusOr<std::string> UcxWorker::WorkerAddress() {
  ucp_address_t* address = nullptr;
  size_t length = 0;
  ucs_status_t s = ucp_worker_get_address(worker_, &address, &length);
  if (s != UCS_OK) return UcsError("ucp_worker_get_address", s);
  std::string out(reinterpret_cast<const char*>(address), length);
  ucp_worker_release_address(worker_, address);
  return out;
}

void UcxWorker::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void UcxWorker::Post(Command command) {
  {
    absl::MutexLock lock(&mu_);
    commands_.push_back(std::move(command));
  }
  if (!commands_pending_.exchange(true, std::memory_order_acq_rel)) {
    const uint64_t one = 1;
    // An eventfd write only fails when the counter would overflow, and then
    // it is already readable.
    [[maybe_unused]] ssize_t n = write(event_fd_, &one, sizeof(one));
  }
}

void UcxWorker::Stop(std::vector<Command> phases) {
  if (!thread_.joinable()) return;
  Post([this, phases = std::move(phases)] {
    stop_phases_ = phases;
    stop_ = true;
  });
  thread_.join();
}

bool UcxWorker::RunCommands() {
  commands_pending_.store(false, std::memory_order_release);
  std::vector<Command> batch;
  {
    absl::MutexLock lock(&mu_);
    batch.swap(commands_);
  }
  for (Command& command : batch) {
    if (stop_) break;  // posted after Stop's command: discarded
    command();
  }
  return !batch.empty();
}

void UcxWorker::Loop() {
  while (!stop_) {
    // Commands usually start sends whose replies follow soon: activity.
    bool active = RunCommands();
    if (stop_) break;
    while (ucp_worker_progress(worker_) != 0) active = true;
    if (active && options_.spin > absl::ZeroDuration()) {
      // Brief busy progress after activity: the next message of a burst
      // usually follows within microseconds, cheaper than an epoll round.
      absl::Time spin_until = absl::Now() + options_.spin;
      while (!commands_pending_.load(std::memory_order_acquire) && absl::Now() < spin_until) {
        if (ucp_worker_progress(worker_) != 0) spin_until = absl::Now() + options_.spin;
      }
    }
    if (commands_pending_.load(std::memory_order_acquire)) continue;
    const ucs_status_t armed = ucp_worker_arm(worker_);
    if (armed == UCS_ERR_BUSY) continue;  // events arrived since the last progress
    epoll_event events[2];
    // If arming failed for another reason, poll instead of sleeping long.
    epoll_wait(epoll_fd_, events, 2, armed == UCS_OK ? kIdleWakeMs : 1);
    uint64_t count = 0;
    [[maybe_unused]] ssize_t n = read(event_fd_, &count, sizeof(count));
  }
  for (Command& phase : stop_phases_) {
    phase();
    Drain();
  }
}

void UcxWorker::Drain() {
  const absl::Time deadline = absl::Now() + kDrainTimeout;
  while (!ops_.empty() && absl::Now() < deadline) {
    if (ucp_worker_progress(worker_) != 0) continue;
    if (ucp_worker_arm(worker_) == UCS_ERR_BUSY) continue;
    epoll_event events[2];
    epoll_wait(epoll_fd_, events, 2, 10);
  }
}

std::unique_ptr<UcxWorker::Op> UcxWorker::TakeOp(Op* op) {
  auto it = ops_.find(op);
  std::unique_ptr<Op> owned = std::move(it->second);
  ops_.erase(it);
  return owned;
}

void UcxWorker::OnSendDone(void* request, ucs_status_t status, void* user_data) {
  Op* op = static_cast<Op*>(user_data);
  std::unique_ptr<Op> owned = op->worker->TakeOp(op);
  ucp_request_free(request);
  if (owned->send_done) owned->send_done(status);
}

void UcxWorker::OnRecvDone(void* request, ucs_status_t status, size_t length, void* user_data) {
  Op* op = static_cast<Op*>(user_data);
  std::unique_ptr<Op> owned = op->worker->TakeOp(op);
  ucp_request_free(request);
  if (status == UCS_OK && length != owned->data.size()) status = UCS_ERR_MESSAGE_TRUNCATED;
  owned->recv_done(status, std::move(owned->data));
}

void UcxWorker::SendAm(ucp_ep_h ep, unsigned id, UcxAmHeader header, std::vector<std::byte> data,
                       bool control, SendDone done) {
  auto op = std::make_unique<Op>();
  op->worker = this;
  op->header = header;
  op->data = std::move(data);
  op->send_done = std::move(done);
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = control || op->data.size() < options_.rendezvous_threshold ? UCP_AM_SEND_FLAG_EAGER
                                                                           : UCP_AM_SEND_FLAG_RNDV;
  param.cb.send = &UcxWorker::OnSendDone;
  param.user_data = op.get();
  ucs_status_ptr_t request = ucp_am_send_nbx(ep, id, &op->header, sizeof(UcxAmHeader),
                                             op->data.data(), op->data.size(), &param);
  if (UCS_PTR_IS_PTR(request)) {
    Op* raw = op.get();
    ops_.emplace(raw, std::move(op));
    return;
  }
  // Completed (NULL) or failed at once; UCX will not call back.
  if (op->send_done) op->send_done(UCS_PTR_STATUS(request));
}

void UcxWorker::RecvAmData(void* desc, size_t length, RecvDone done) {
  auto op = std::make_unique<Op>();
  op->worker = this;
  op->data.resize(length);
  op->recv_done = std::move(done);
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.recv_am = &UcxWorker::OnRecvDone;
  param.user_data = op.get();
  ucs_status_ptr_t request = ucp_am_recv_data_nbx(worker_, desc, op->data.data(), length, &param);
  if (UCS_PTR_IS_PTR(request)) {
    Op* raw = op.get();
    ops_.emplace(raw, std::move(op));
    return;
  }
  op->recv_done(UCS_PTR_STATUS(request), std::move(op->data));
}

absl::StatusOr<ucp_ep_h> UcxWorker::CreateEp(const std::string& raw_address,
                                             ucp_err_handler_cb_t on_error, void* arg) {
  std::vector<uint8_t> address = PaddedAddress(raw_address);
  ucp_ep_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(address.data());
  // PEER: UCX reports a failed peer through on_error (and keepalive detects
  // dead peers) instead of hanging or aborting.
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = on_error;
  params.err_handler.arg = arg;
  ucp_ep_h ep = nullptr;
  ucs_status_t s = ucp_ep_create(worker_, &params, &ep);
  if (s != UCS_OK) return UcsError("ucp_ep_create", s);
  return ep;
}

void UcxWorker::CloseEp(ucp_ep_h ep) {
  auto op = std::make_unique<Op>();
  op->worker = this;
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  // FORCE: release at once without waiting for the peer, which may be dead;
  // outstanding sends on the endpoint complete with UCS_ERR_CANCELED.
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  param.cb.send = &UcxWorker::OnSendDone;
  param.user_data = op.get();
  ucs_status_ptr_t request = ucp_ep_close_nbx(ep, &param);
  if (UCS_PTR_IS_PTR(request)) {
    Op* raw = op.get();
    ops_.emplace(raw, std::move(op));
  }
}

// ---------------------------------------------------------------------------
// Client.
//
// Thread-safety: the DataPlaneClient methods may be called from any thread;
// they touch UCX only by posting commands to the progress thread. Connect
// waits for the server's hello ack; Wait waits for a reply; both wait on mu_
// conditions, never on the progress thread directly.
class UcxClient final : public DataPlaneClient {
 public:
  static absl::StatusOr<std::unique_ptr<DataPlaneClient>> Create(const UcxOptions& options);
  ~UcxClient() override;

  absl::StatusOr<PeerId> Connect(const std::string& address) override;
  void Disconnect(PeerId peer) override;
  absl::StatusOr<uint64_t> Send(PeerId peer, std::vector<std::byte> message) override;
  absl::StatusOr<std::vector<std::byte>> Wait(uint64_t ticket, absl::Time deadline) override;
  void Forget(uint64_t ticket) override;

 private:
  struct Peer {
    enum class State { kConnecting, kConnected, kFailed };
    // Constant after construction.
    UcxClient* client = nullptr;
    PeerId id = 0;
    std::string address;  // address() string, tag included (the cache key)
    std::string raw;      // the worker address inside it
    // Guarded by the client's mu_.
    State state = State::kConnecting;
    absl::Status failure;    // when kFailed
    uint64_t client_id = 0;  // the server's id for us, from the hello ack
    // Progress thread only.
    ucp_ep_h ep = nullptr;
    bool ep_closed = false;
    uint64_t acked_client_id = 0;  // client_id once the hello ack arrived
    bool bye_sent = false;
  };
  struct Pending {
    PeerId peer = 0;
    // Guarded by mu_.
    bool done = false;
    absl::Status status;
    std::vector<std::byte> reply;
  };

  explicit UcxClient(const UcxOptions& options) : options_(options) {}

  static ucs_status_t OnHelloAck(void* arg, const void* header, size_t header_length, void* data,
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
  std::string own_address_;  // our raw worker address, sent in hellos

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
       {std::pair{kAmHelloAck, &UcxClient::OnHelloAck}, std::pair{kAmReply, &UcxClient::OnReply},
        std::pair{kAmRefused, &UcxClient::OnRefused},
        std::pair{kAmGoodbye, &UcxClient::OnGoodbye}}) {
    if (absl::Status s = client->worker_->SetAmHandler(id, callback, client.get()); !s.ok()) {
      return s;
    }
  }
  absl::StatusOr<std::string> address = client->worker_->WorkerAddress();
  if (!address.ok()) return address.status();
  client->own_address_ = std::move(*address);
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
  if (address.size() <= kAddressTagBytes ||
      address.compare(0, kAddressTagBytes, kAddressTag) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("UCX address of ", address.size(), " bytes does not start with the tag \"",
                     kAddressTag, "\" that DataPlaneServer::address() writes"));
  }
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
    peer->raw = address.substr(kAddressTagBytes);
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

absl::StatusOr<std::vector<std::byte>> UcxClient::Wait(uint64_t ticket, absl::Time deadline) {
  const absl::Time start = absl::Now();
  absl::MutexLock lock(&mu_);
  auto it = pending_.find(ticket);
  if (it == pending_.end()) return absl::NotFoundError(absl::StrCat("no UCX ticket ", ticket));
  // The entry stays in pending_ (and `pending` valid) while we wait: only
  // this waiter removes it (REQUIRES in data_plane.h: one waiter, no Forget
  // meanwhile).
  Pending* pending = it->second.get();
  if (!mu_.AwaitWithDeadline(absl::Condition(&pending->done), deadline)) {
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
  absl::StatusOr<ucp_ep_h> ep = worker_->CreateEp(peer->raw, &UcxClient::OnEpError, peer.get());
  if (!ep.ok()) {
    absl::MutexLock lock(&mu_);
    FailPeerLocked(peer, ep.status());
    return;
  }
  peer->ep = *ep;
  open_peers_.emplace(peer.get(), peer);
  std::vector<std::byte> hello = CopyBytes(own_address_.data(), own_address_.size());
  UcxAmHeader header;
  header.ticket = peer->id;  // the connect token the ack echoes
  worker_->SendAm(peer->ep, kAmHello, header, std::move(hello), /*control=*/true,
                  [this, peer](ucs_status_t s) {
                    if (s == UCS_OK) return;
                    absl::MutexLock lock(&mu_);
                    FailPeerLocked(peer, UcsError(absl::StrCat("UCX hello to peer ", peer->id), s));
                  });
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

ucs_status_t UcxClient::OnHelloAck(void* arg, const void* header, size_t header_length,
                                   void* /*data*/, size_t /*length*/,
                                   const ucp_am_recv_param_t* /*param*/) {
  auto* self = static_cast<UcxClient*>(arg);
  UcxAmHeader h;
  if (!ReadAmHeader(header, header_length, &h)) return UCS_OK;
  absl::MutexLock lock(&self->mu_);
  auto it = self->peers_.find(h.ticket);
  if (it != self->peers_.end() && it->second->state == Peer::State::kConnecting) {
    it->second->client_id = h.client_id;
    it->second->acked_client_id = h.client_id;
    it->second->state = Peer::State::kConnected;
  }
  return UCS_OK;
}

ucs_status_t UcxClient::OnReply(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxClient*>(arg);
  UcxAmHeader h;
  if (!ReadAmHeader(header, header_length, &h)) return UCS_OK;
  const uint64_t ticket = h.ticket;
  if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
    {
      absl::MutexLock lock(&self->mu_);
      auto it = self->pending_.find(ticket);
      // Returning UCS_OK without receiving drops the data (the sender's
      // send completes normally).
      if (it == self->pending_.end() || it->second->done) return UCS_OK;
    }
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
                                  const ucp_am_recv_param_t* /*param*/) {
  auto* self = static_cast<UcxClient*>(arg);
  UcxAmHeader h;
  if (!ReadAmHeader(header, header_length, &h)) return UCS_OK;
  self->Complete(h.ticket,
                 absl::UnavailableError(
                     absl::StrCat("UCX server dropped ticket ", h.ticket, ": it is shutting down or the request is over its size limit")),
                 {});
  return UCS_OK;
}

ucs_status_t UcxClient::OnGoodbye(void* arg, const void* header, size_t header_length,
                                  void* /*data*/, size_t /*length*/,
                                  const ucp_am_recv_param_t* /*param*/) {
  auto* self = static_cast<UcxClient*>(arg);
  UcxAmHeader h;
  if (!ReadAmHeader(header, header_length, &h)) return UCS_OK;
  absl::MutexLock lock(&self->mu_);
  auto it = self->peers_.find(h.ticket);
  if (it != self->peers_.end() && it->second->client_id == h.client_id) {
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

// ---------------------------------------------------------------------------
// Server.
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
  // A client that said hello: the server's own endpoint to it.
  struct ClientConn {
    UcxServer* server = nullptr;
    uint64_t id = 0;
    std::string raw;     // the client's worker address
    uint64_t token = 0;  // the client's latest connect token (its PeerId for us)
    ucp_ep_h ep = nullptr;
    bool failed = false;
  };
  struct Inbound {
    uint64_t client_id = 0;
    uint64_t ticket = 0;
    std::vector<std::byte> message;
  };

  UcxServer(const UcxOptions& options, RequestHandler handler)
      : options_(options), handler_(std::move(handler)) {}

  static ucs_status_t OnHello(void* arg, const void* header, size_t header_length, void* data,
                              size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnRequest(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnBye(void* arg, const void* header, size_t header_length, void* data,
                            size_t length, const ucp_am_recv_param_t* param);
  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);

  // Progress thread.
  void HandleHello(uint64_t token, std::string raw);
  void SendReply(uint64_t client_id, uint64_t ticket, std::vector<std::byte> reply);
  // Tells the client that its request `ticket` will not be answered.
  void SendRefusal(uint64_t client_id, uint64_t ticket);
  void SendGoodbyes();
  void CloseConn(uint64_t client_id);

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

  // Progress thread only.
  uint64_t next_client_id_ = 1;
  std::unordered_map<uint64_t, std::shared_ptr<ClientConn>> conns_;
  std::unordered_map<std::string, uint64_t> conn_by_address_;  // live conns only
};

absl::StatusOr<std::unique_ptr<DataPlaneServer>> UcxServer::Create(const UcxOptions& options,
                                                                   RequestHandler handler) {
  std::unique_ptr<UcxServer> server(new UcxServer(options, std::move(handler)));
  absl::StatusOr<std::unique_ptr<UcxWorker>> worker = UcxWorker::Create(options);
  if (!worker.ok()) return worker.status();
  server->worker_ = std::move(*worker);
  for (auto [id, callback] :
       {std::pair{kAmHello, &UcxServer::OnHello}, std::pair{kAmRequest, &UcxServer::OnRequest},
        std::pair{kAmBye, &UcxServer::OnBye}}) {
    if (absl::Status s = server->worker_->SetAmHandler(id, callback, server.get()); !s.ok()) {
      return s;
    }
  }
  absl::StatusOr<std::string> address = server->worker_->WorkerAddress();
  if (!address.ok()) return address.status();
  server->address_ = absl::StrCat(kAddressTag, *address);
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
                   while (!conns_.empty()) CloseConn(conns_.begin()->first);
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

ucs_status_t UcxServer::OnHello(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxServer*>(arg);
  UcxAmHeader h;
  if (self->stopping_.load() || !ReadAmHeader(header, header_length, &h) ||
      (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) || length == 0) {
    return UCS_OK;  // a hello is always small and eager; drop anything else
  }
  // Endpoint creation is deferred out of the UCX callback.
  self->worker_->Post([self, token = h.ticket,
                       raw = std::string(static_cast<const char*>(data), length)]() mutable {
    self->HandleHello(token, std::move(raw));
  });
  return UCS_OK;
}

ucs_status_t UcxServer::OnRequest(void* arg, const void* header, size_t header_length, void* data,
                                  size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxServer*>(arg);
  const bool rendezvous = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  UcxAmHeader h;
  if (!ReadAmHeader(header, header_length, &h)) return rendezvous ? UCS_ERR_INVALID_PARAM : UCS_OK;
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
                              size_t /*length*/, const ucp_am_recv_param_t* /*param*/) {
  auto* self = static_cast<UcxServer*>(arg);
  UcxAmHeader h;
  if (!ReadAmHeader(header, header_length, &h)) return UCS_OK;
  self->worker_->Post([self, h] {
    auto it = self->conns_.find(h.client_id);
    // Only the client's latest connection says bye for it.
    if (it != self->conns_.end() && it->second->token == h.ticket) self->CloseConn(h.client_id);
  });
  return UCS_OK;
}

void UcxServer::HandleHello(uint64_t token, std::string raw) {
  if (stopping_.load()) return;
  std::shared_ptr<ClientConn> conn;
  if (auto it = conn_by_address_.find(raw); it != conn_by_address_.end()) {
    conn = conns_.at(it->second);
    if (conn->failed) {
      // Its close is posted already; a fresh endpoint serves the reconnect.
      CloseConn(conn->id);
      conn = nullptr;
    } else {
      conn->token = token;
    }
  }
  if (conn == nullptr) {
    conn = std::make_shared<ClientConn>();
    conn->server = this;
    conn->id = next_client_id_++;
    conn->raw = raw;
    conn->token = token;
    absl::StatusOr<ucp_ep_h> ep = worker_->CreateEp(raw, &UcxServer::OnEpError, conn.get());
    // Without an endpoint there is no way to answer; the client's Connect
    // times out.
    if (!ep.ok()) return;
    conn->ep = *ep;
    conns_.emplace(conn->id, conn);
    conn_by_address_.emplace(std::move(raw), conn->id);
  }
  UcxAmHeader ack;
  ack.ticket = token;
  ack.client_id = conn->id;
  worker_->SendAm(conn->ep, kAmHelloAck, ack, {}, /*control=*/true, [](ucs_status_t) {});
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

void UcxServer::CloseConn(uint64_t client_id) {
  auto it = conns_.find(client_id);
  if (it == conns_.end()) return;
  std::shared_ptr<ClientConn> conn = it->second;
  worker_->CloseEp(conn->ep);
  conns_.erase(it);
  if (auto a = conn_by_address_.find(conn->raw);
      a != conn_by_address_.end() && a->second == conn->id) {
    conn_by_address_.erase(a);
  }
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

absl::StatusOr<std::unique_ptr<DataPlaneClient>> CreateUcxClient(const UcxOptions& options) {
  return UcxClient::Create(options);
}

absl::StatusOr<std::unique_ptr<DataPlaneServer>> CreateUcxServer(const UcxOptions& options,
                                                                 RequestHandler handler) {
  return UcxServer::Create(options, std::move(handler));
}

}  // namespace dsv2::transport
