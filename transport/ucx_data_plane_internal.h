// Private to the UCX data plane (transport/ucx_data_plane.h): the active-
// message protocol shared by ucx_client.cc and ucx_server.cc, and UcxWorker
// (ucx_worker.cc), the UCX context + worker + progress thread each of them owns.
// Nothing outside transport/ includes this header.
//
// Active messages (every AM header is one UcxAmHeader; the AM data is the
// channel's message, opaque here):
//
//   kAmHello     client -> server  {ticket = connect token, client_id = 0}
//                                  data: HandshakeHello (transport/handshake.h)
//   kAmChallenge server -> client  {ticket = connect token, client_id}
//                                  data: HandshakeChallenge
//   kAmProof     client -> server  {ticket = connect token, client_id}
//                                  data: HandshakeProof
//   kAmWelcome   server -> client  {ticket = connect token, client_id}
//                                  data: HandshakeWelcome; the client sends
//                                  requests only after an OK welcome
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
// Every message is sent with UCP_AM_SEND_FLAG_REPLY, so the receiver learns
// the endpoint it came on: a server takes requests only from the endpoint of
// the authenticated connection their client_id names, and a client takes
// challenges, welcomes, replies, refusals and goodbyes only from the
// endpoint of the peer they name. A process that is not a member therefore
// cannot inject a request or a reply with guessed ids. A server refuses a
// handshake (a challenge or welcome with a non-OK status) and then closes
// the endpoint.
//
// The refusal and goodbye let clients fail their tickets as soon as a
// server shuts down gracefully; over shared memory UCX would otherwise only
// notice a dead peer process (keepalive), never a closed worker in a live
// one. The bye likewise lets a server release its endpoint to a client that
// is gone from a live process.
//
// Connections (UCX client-server mode): a server listens on host:port
// (ucp_listener_create; address() is "host:port"); a client's Connect
// resolves that and creates its endpoint with the socket address; the
// server accepts the connection request with its own endpoint (an error
// handler on it, so a dead client is noticed), then the client's hello,
// sent with UCP_AM_SEND_FLAG_REPLY, arrives with that endpoint as reply_ep,
// which names the connection: the ack carries the client id every request
// names, and replies go out on the server's endpoint. No UCX worker address
// ever crosses the network (UCX aborts on a malformed one), and the
// listener binds only the address it is given. The handshake also makes
// Connect fail fast (Unavailable) for an unreachable server.
//
// Threads and ownership (see UcxWorker): every ucp_* call on a worker is made
// by its progress thread, except set-up before the thread starts and
// ucp_worker_destroy after it has been joined. Other threads hand work to it
// through UcxWorker::Post. Locks: a client's mu_ and a server's queue_mu_ may
// be taken on the progress thread (inside UCX callbacks); no thread ever
// calls into UCX or waits for the progress thread while holding them, except
// UcxWorker::Post, whose own mutex is innermost.
#ifndef DSV2_TRANSPORT_UCX_DATA_PLANE_INTERNAL_H_
#define DSV2_TRANSPORT_UCX_DATA_PLANE_INTERNAL_H_

#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "transport/ucx_data_plane.h"

namespace dsv2::transport::ucx_internal {

enum AmId : unsigned {
  kAmHello = 1,
  kAmChallenge = 2,
  kAmRequest = 3,
  kAmReply = 4,
  kAmRefused = 5,
  kAmGoodbye = 6,
  kAmBye = 7,
  kAmProof = 8,
  kAmWelcome = 9,
};

// The AM header of every message (ucp_am_send_nbx's header argument).
struct UcxAmHeader {
  uint64_t ticket = 0;     // request/reply: the client's ticket; handshake: connect token
  uint64_t client_id = 0;  // the server's id for the client (0 in a hello)
};
static_assert(sizeof(UcxAmHeader) == 16);
static_assert(offsetof(UcxAmHeader, ticket) == 0);
static_assert(offsetof(UcxAmHeader, client_id) == 8);

// A resolved "host:port" (IPv4, IPv6 in brackets, or a name).
struct SocketAddress {
  sockaddr_storage storage;
  socklen_t length = 0;
};
// InvalidArgument unless `address` is host:port with a port in [1, 65535];
// Unavailable when the host does not resolve. A data-plane address from the
// network is only ever parsed here: no UCX worker address crosses it (UCX
// aborts the process on a malformed one).
absl::StatusOr<SocketAddress> ParseHostPort(const std::string& address);
// `host` (a name or an IP address, no brackets) and `port` (0 = any, for a
// listener) as a socket address; Unavailable when the host does not resolve.
absl::StatusOr<SocketAddress> Resolve(const std::string& host, int port);

// The network interface that holds IP address `host` ("lo" for 127.0.0.1);
// "" for a wildcard (0.0.0.0, ::), a name, or an address no interface has.
std::string InterfaceOf(const std::string& host);

// Unavailable with `what` and UCX's text for `status`.
absl::Status UcsError(const std::string& what, ucs_status_t status);

// Copies an AM header into `out`; false when it is missing or of the wrong
// size (a peer that does not speak this protocol).
bool ReadAmHeader(const void* header, size_t header_length, UcxAmHeader* out);
// The endpoint a message came on (UCP_AM_SEND_FLAG_REPLY); null when the
// sender did not name one (not our protocol).
inline ucp_ep_h ReplyEp(const ucp_am_recv_param_t* param) {
  return (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : nullptr;
}

std::vector<std::byte> CopyBytes(const void* data, size_t length);

// A handshake message (hello, challenge, proof, welcome) as it arrived:
// always eager, and naming the endpoint it came on.
struct HandshakeMessage {
  UcxAmHeader header;
  ucp_ep_h ep = nullptr;
  std::vector<std::byte> data;  // copied: UCX's eager data lives only during the callback
};
// None when the message is not one (no or a wrong-sized header, sent by
// rendezvous, or without its endpoint: not our protocol).
std::optional<HandshakeMessage> ReadHandshakeMessage(const void* header, size_t header_length,
                                                     const void* data, size_t length,
                                                     const ucp_am_recv_param_t* param);

// One UCX context + worker and the progress thread that owns them.
//
// Thread-safety: Post, Start and Stop may be called from any thread (Start
// and Stop once each, by the owner). SetAmHandler and Listen only
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
  // Servers, before Start: listens on host:port (0 = any free port) with
  // ucp_listener_create; `on_connection` runs on the progress thread for
  // each client. Returns the bound port.
  absl::StatusOr<int> Listen(const std::string& host, int port,
                             ucp_listener_conn_callback_t on_connection, void* arg);
  // Refuses a connection request (server shutting down).
  void Reject(ucp_conn_request_h request);
  void Start();
  // Queues `command` for the progress thread (FIFO). Commands posted after
  // Stop's are discarded.
  void Post(Command command);
  // Stops the progress loop after every command posted before, then runs
  // each of `phases` in turn on the progress thread, after each progressing
  // until the operations in flight complete (at most kDrainTimeout per
  // phase, ucx_worker.cc), and joins the thread. The destructor destroys the
  // worker.
  void Stop(std::vector<Command> phases);

  // Requests and replies go eagerly below options.rendezvous_threshold and
  // by rendezvous from it on; control messages (`control`) always eagerly.
  // Every message carries UCP_AM_SEND_FLAG_REPLY: the receiver's callback
  // gets its own endpoint to us (param->reply_ep), which names the
  // connection the message came on.
  void SendAm(ucp_ep_h ep, unsigned id, UcxAmHeader header, std::vector<std::byte> data,
              bool control, SendDone done);
  void RecvAmData(void* desc, size_t length, RecvDone done);
  // A client endpoint to `server` (client-server mode through UCX's
  // connection manager), or, with server == nullptr, a server endpoint for
  // an accepted connection `request`. Errors go to `on_error` with `arg`.
  absl::StatusOr<ucp_ep_h> CreateEp(const SocketAddress* server, ucp_conn_request_h request,
                                    ucp_err_handler_cb_t on_error, void* arg);
  // `flush`: deliver what was sent on it first (a graceful shutdown; the
  // Stop phase bounds the wait); else close at once (a peer that may be dead).
  void CloseEp(ucp_ep_h ep, bool flush = false);

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
  ucp_listener_h listener_ = nullptr;  // servers
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

}  // namespace dsv2::transport::ucx_internal

#endif  // DSV2_TRANSPORT_UCX_DATA_PLANE_INTERNAL_H_
