// UcxWorker (transport/ucx_data_plane_internal.h): one UCX context + worker
// and the progress thread that owns them, shared by the UCX client and server.
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
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
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "transport/ucx_data_plane_internal.h"

namespace dsv2::transport::ucx_internal {
namespace {

// The progress thread wakes at least this often even when idle: UCX runs its
// keepalive (dead-peer detection on shared memory) from ucp_worker_progress.
constexpr int kIdleWakeMs = 100;
// UCX keepalive interval unless configured otherwise (UCX syntax).
constexpr char kDefaultKeepalive[] = "1s";
// How long each shutdown phase keeps progressing so that sends, endpoint
// closes and cancelled operations can complete (bounded: a dead peer must
// not hold shutdown up).
constexpr absl::Duration kDrainTimeout = absl::Milliseconds(500);

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

// The transports for client-server connections: UCX connects them through
// a socket (its connection manager) and wires the data lanes up over tcp,
// so a list that names shared memory only ("sm") gets tcp added; the active
// messages still go over shared memory when both ends share a host.
std::string WithWireupTransport(const std::string& tls) {
  if (tls.empty() || tls[0] == '^') return tls;
  for (size_t pos = 0; (pos = tls.find("tcp", pos)) != std::string::npos; ++pos) {
    const bool starts = pos == 0 || tls[pos - 1] == ',';
    const bool ends = pos + 3 == tls.size() || tls[pos + 3] == ',';
    if (starts && ends) return tls;
  }
  return tls + ",tcp";
}

}  // namespace

std::string InterfaceOf(const std::string& host) {
  in_addr v4;
  in6_addr v6;
  const bool is_v4 = inet_pton(AF_INET, host.c_str(), &v4) == 1;
  const bool is_v6 = !is_v4 && inet_pton(AF_INET6, host.c_str(), &v6) == 1;
  if (!is_v4 && !is_v6) return "";
  if (is_v4 && v4.s_addr == htonl(INADDR_ANY)) return "";
  if (is_v6 && IN6_IS_ADDR_UNSPECIFIED(&v6)) return "";
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string name;
  for (ifaddrs* a = list; a != nullptr && name.empty(); a = a->ifa_next) {
    if (a->ifa_addr == nullptr) continue;
    if (is_v4 && a->ifa_addr->sa_family == AF_INET &&
        reinterpret_cast<const sockaddr_in*>(a->ifa_addr)->sin_addr.s_addr == v4.s_addr) {
      name = a->ifa_name;
    } else if (is_v6 && a->ifa_addr->sa_family == AF_INET6 &&
               std::memcmp(&reinterpret_cast<const sockaddr_in6*>(a->ifa_addr)->sin6_addr, &v6,
                           sizeof(v6)) == 0) {
      name = a->ifa_name;
    }
  }
  freeifaddrs(list);
  return name;
}

absl::StatusOr<SocketAddress> ParseHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("data-plane address \"", address, "\" is not host:port"));
  }
  std::string host = address.substr(0, colon);
  const std::string port_text = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = 0;
  for (char c : port_text) {
    if (c < '0' || c > '9' || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("data-plane address \"", address, "\": bad port"));
    }
    port = port * 10 + (c - '0');
  }
  if (port < 1 || port > 65535 || host.empty() ||
      host.find_first_of(" \t\r\n/") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("data-plane address \"", address, "\" is not host:port"));
  }
  return Resolve(host, port);
}

absl::StatusOr<SocketAddress> Resolve(const std::string& host, int port) {
  const std::string port_text = absl::StrCat(port);
  addrinfo hints;
  std::memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(host.c_str(), port_text.c_str(), &hints, &found);
  if (rc != 0 || found == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve data-plane host \"", host, "\": ", gai_strerror(rc)));
  }
  SocketAddress out;
  std::memcpy(&out.storage, found->ai_addr, found->ai_addrlen);
  out.length = found->ai_addrlen;
  freeaddrinfo(found);
  return out;
}

absl::Status UcsError(const std::string& what, ucs_status_t status) {
  return absl::UnavailableError(absl::StrCat(what, ": ", ucs_status_string(status)));
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

std::optional<HandshakeMessage> ReadHandshakeMessage(const void* header, size_t header_length,
                                                     const void* data, size_t length,
                                                     const ucp_am_recv_param_t* param) {
  HandshakeMessage m;
  m.ep = ReplyEp(param);
  if (m.ep == nullptr || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) ||
      !ReadAmHeader(header, header_length, &m.header)) {
    return std::nullopt;
  }
  m.data = CopyBytes(data, length);
  return m;
}

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
  const std::string transports = WithWireupTransport(options.transports);
  if (!transports.empty()) {
    s = ucp_config_modify(config, "TLS", transports.c_str());
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
  if (listener_ != nullptr) ucp_listener_destroy(listener_);
  listener_ = nullptr;
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

absl::StatusOr<int> UcxWorker::Listen(const std::string& host, int port,
                                      ucp_listener_conn_callback_t on_connection, void* arg) {
  DSV2_ASSIGN_OR_RETURN(SocketAddress bind, Resolve(host, port));
  ucp_listener_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  params.sockaddr.addr = reinterpret_cast<const sockaddr*>(&bind.storage);
  params.sockaddr.addrlen = bind.length;
  params.conn_handler.cb = on_connection;
  params.conn_handler.arg = arg;
  ucs_status_t s = ucp_listener_create(worker_, &params, &listener_);
  if (s != UCS_OK) {
    listener_ = nullptr;
    return UcsError(absl::StrCat("ucp_listener_create on ", host, ":", port), s);
  }
  ucp_listener_attr_t attr;
  std::memset(&attr, 0, sizeof(attr));
  attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  s = ucp_listener_query(listener_, &attr);
  if (s != UCS_OK) return UcsError("ucp_listener_query", s);
  return attr.sockaddr.ss_family == AF_INET
             ? ntohs(reinterpret_cast<const sockaddr_in*>(&attr.sockaddr)->sin_port)
             : ntohs(reinterpret_cast<const sockaddr_in6*>(&attr.sockaddr)->sin6_port);
}

void UcxWorker::Reject(ucp_conn_request_h request) {
  if (listener_ != nullptr) ucp_listener_reject(listener_, request);
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
  // The receiver checks which endpoint each message came on
  // (ucx_data_plane_internal.h).
  param.flags |= UCP_AM_SEND_FLAG_REPLY;
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

absl::StatusOr<ucp_ep_h> UcxWorker::CreateEp(const SocketAddress* server,
                                             ucp_conn_request_h request,
                                             ucp_err_handler_cb_t on_error, void* arg) {
  ucp_ep_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  if (server != nullptr) {
    params.field_mask |= UCP_EP_PARAM_FIELD_SOCK_ADDR | UCP_EP_PARAM_FIELD_FLAGS;
    params.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    params.sockaddr.addr = reinterpret_cast<const sockaddr*>(&server->storage);
    params.sockaddr.addrlen = server->length;
  } else {
    params.field_mask |= UCP_EP_PARAM_FIELD_CONN_REQUEST;
    params.conn_request = request;
  }
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

void UcxWorker::CloseEp(ucp_ep_h ep, bool flush) {
  auto op = std::make_unique<Op>();
  op->worker = this;
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  // FORCE: release at once without waiting for the peer, which may be dead;
  // outstanding sends on the endpoint complete with UCS_ERR_CANCELED.
  // With client-server endpoints a close also disconnects through UCX's
  // connection manager, which can overtake data still on the way: a
  // graceful close flushes first.
  param.flags = flush ? 0 : UCP_EP_CLOSE_FLAG_FORCE;
  param.cb.send = &UcxWorker::OnSendDone;
  param.user_data = op.get();
  ucs_status_ptr_t request = ucp_ep_close_nbx(ep, &param);
  if (UCS_PTR_IS_PTR(request)) {
    Op* raw = op.get();
    ops_.emplace(raw, std::move(op));
  }
}

}  // namespace dsv2::transport::ucx_internal
