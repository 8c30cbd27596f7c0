// The data-plane channel between attention nodes and expert shards
// (DESIGN.md sections 2 and 4): a client sends opaque request messages to
// peers and later collects each reply; a server hands every request to one
// handler and sends back what it returns. Messages are the byte strings of
// transport/wire.h, but the channel does not look inside them: replies are
// matched to requests by a ticket the channel carries beside the message.
//
// Two implementations: UCX active messages (transport/ucx_data_plane.h) for
// the cluster and an in-process one (transport/in_process_data_plane.h) for
// tests. Many requests may be in flight, to one peer or several.
//
// Thread-safety: every method of DataPlaneClient may be called from any
// thread; each ticket is waited on by one thread, exactly once (or dropped
// with Forget). The server calls its handler on one handler thread it owns,
// one request at a time, never on the network progress thread.
#ifndef DSV2_TRANSPORT_DATA_PLANE_H_
#define DSV2_TRANSPORT_DATA_PLANE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dsv2::transport {

// A connected peer, valid until Disconnect; ids are never reused.
using PeerId = uint64_t;

class DataPlaneClient {
 public:
  virtual ~DataPlaneClient() = default;

  // Connects to the server whose address() returned `address` (the same
  // address twice gives the same peer while it is connected).
  // InvalidArgument for an address that cannot be parsed, Unavailable when
  // the peer cannot be reached.
  virtual absl::StatusOr<PeerId> Connect(const std::string& address) = 0;
  // Drops the peer: its outstanding tickets fail with Unavailable.
  virtual void Disconnect(PeerId peer) = 0;

  // Starts sending `message` to `peer`; never blocks on the network.
  // Returns the ticket that Wait takes. NotFound for an unknown peer,
  // Unavailable for a peer already known to have failed.
  virtual absl::StatusOr<uint64_t> Send(PeerId peer, std::vector<std::byte> message) = 0;

  // The reply to `ticket`. Unavailable when `deadline` passes first or the
  // peer failed (the endpoint reported an error or was disconnected).
  // NotFound for an unknown ticket.
  virtual absl::StatusOr<std::vector<std::byte>> Wait(uint64_t ticket, absl::Time deadline) = 0;
  // Like Wait, except that when `until` passes first it returns
  // DeadlineExceeded and keeps the ticket (Poll or Wait on it again, or
  // Forget it): the caller waits in slices and looks for news in between.
  virtual absl::StatusOr<std::vector<std::byte>> Poll(uint64_t ticket, absl::Time until) = 0;
  // Abandons a ticket that will not be waited on (a late reply is dropped).
  virtual void Forget(uint64_t ticket) = 0;
};

// Called on the server's handler thread for each request; returns the reply
// message (never empty).
using RequestHandler = std::function<std::vector<std::byte>(std::span<const std::byte> request)>;

struct DataPlaneServerStats {
  int64_t requests_eager = 0;       // requests whose data arrived eagerly
  int64_t requests_rendezvous = 0;  // requests fetched by rendezvous
  int64_t replies_sent = 0;
  int64_t reply_send_errors = 0;    // replies that could not be delivered
  // Connection handshakes (transport/handshake.h; the UCX server only).
  int64_t handshakes_accepted = 0;
  // Refused, by reason; each also closes the connection and is logged.
  int64_t refused_malformed = 0;        // a hello or proof that does not parse, or out of turn
  int64_t refused_unknown_key = 0;      // key id neither current nor previous
  int64_t refused_no_key = 0;           // the server has no key yet (not registered)
  int64_t refused_bad_mac = 0;          // a hello or proof whose MAC is wrong: not a member
  int64_t refused_unauthenticated = 0;  // a request before the handshake completed
};

class DataPlaneServer {
 public:
  virtual ~DataPlaneServer() = default;
  // What clients pass to Connect (UCX: a tag and the worker address bytes;
  // binary, opaque to callers).
  virtual std::string address() const = 0;
  virtual DataPlaneServerStats stats() const = 0;
  // Stops receiving, finishes the request in the handler, joins threads.
  // Idempotent; the destructor calls it.
  virtual void Shutdown() = 0;
};

}  // namespace dsv2::transport

#endif  // DSV2_TRANSPORT_DATA_PLANE_H_
