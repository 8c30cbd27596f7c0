#include "attention_service/data_plane_expert_backend.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "transport/wire.h"

namespace dsv2 {
namespace {

uint16_t ToWireDType(DType d) {
  return static_cast<uint16_t>(d == DType::kBF16 ? transport::WireDType::kBf16
                                                 : transport::WireDType::kF32);
}

}  // namespace

// One dispatch in flight: the layer's input (kept for re-sends), the plan
// it was last sent with, and one ticket per shard part.
struct DataPlaneExpertBackend::Pending {
  router::ExpertDispatch dispatch;
  DispatchContext context;
  absl::Time sent;
  absl::Time deadline;
  std::shared_ptr<const PlacementState> state;
  router::DispatchPlan plan;
  std::vector<uint64_t> tickets;       // per plan.shards entry; 0 = done
  std::vector<uint64_t> request_ids;   // per plan.shards entry
  std::vector<std::byte> outputs;      // assignments x hidden x dtype size
  // Per dispatch assignment: its output row arrived. A re-send plans only
  // the others (the rows of the shards that failed, went silent or were on
  // another placement version).
  std::vector<uint8_t> answered;
  int attempts = 0;
};

namespace {

// A silent shard's reply is waited for in slices this long; between slices
// the backend looks for a newer placement without that shard.
constexpr absl::Duration kSilenceSlice = absl::Milliseconds(20);

}  // namespace

DataPlaneExpertBackend::DataPlaneExpertBackend(transport::DataPlaneClient& client,
                                               RemoteExpertsOptions options)
    : client_(client), options_(options) {
  reconnect_thread_ = std::thread([this] { ReconnectLoop(); });
}

DataPlaneExpertBackend::~DataPlaneExpertBackend() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  reconnect_thread_.join();
  for (auto& [ticket, p] : pending_) {
    for (uint64_t t : p->tickets) {
      if (t != 0) client_.Forget(t);
    }
  }
}

void DataPlaneExpertBackend::ReconnectLoop() {
  while (true) {
    ReconnectRequest request;
    {
      absl::MutexLock lock(&mu_);
      const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !reconnects_.empty();
      };
      mu_.Await(absl::Condition(&ready, &decltype(ready)::operator()));
      if (stopping_) return;
      request = std::move(reconnects_.front());
      reconnects_.pop_front();
    }
    Reconnect(request);
  }
}

void DataPlaneExpertBackend::Reconnect(const ReconnectRequest& request) {
  const std::string& address = request.target.address;
  const auto still_failed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = connections_.find(address);
    return it != connections_.end() && it->second.peer == request.failed &&
           it->second.node_id == request.target.node_id;
  };
  {
    absl::MutexLock lock(&mu_);
    if (!still_failed()) return;  // replaced meanwhile
  }
  // Outside every lock: may block up to the client's connect timeout. The
  // same peer while the client still holds the connection alive.
  absl::StatusOr<transport::PeerId> peer = client_.Connect(address);
  if (!peer.ok() || *peer == request.failed) return;  // asked again if still needed
  absl::MutexLock connecting(&connect_mu_);
  bool swapped = false;
  {
    absl::MutexLock lock(&mu_);
    if (still_failed()) {
      connections_[address].peer = *peer;
      ++connections_changed_;
      ++stats_.reconnects;
      swapped = true;
    } else if (auto it = connections_.find(address);
               it != connections_.end() && it->second.peer == *peer) {
      return;  // a placement connected the same peer meanwhile
    }
  }
  // The failed peer once swapped; else ours, which nothing records.
  client_.Disconnect(swapped ? request.failed : *peer);
}

absl::StatusOr<transport::PeerId> DataPlaneExpertBackend::ConnectTo(const ShardTarget& target) {
  absl::MutexLock connecting(&connect_mu_);
  std::optional<Connection> had;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = connections_.find(target.address); it != connections_.end()) had = it->second;
  }
  if (had.has_value() && had->node_id != target.node_id) {
    // Another membership at this address: whatever the old connection
    // carries is lost (its tickets fail now and are re-sent).
    client_.Disconnect(had->peer);
    absl::MutexLock lock(&mu_);
    connections_.erase(target.address);
  }
  // The same peer while the client's connection to the address is alive; a
  // new one after it failed.
  absl::StatusOr<transport::PeerId> peer = client_.Connect(target.address);
  if (!peer.ok()) return peer.status();
  const bool replaced = had.has_value() && had->peer != *peer;
  if (replaced && had->node_id == target.node_id) client_.Disconnect(had->peer);  // the failed one
  absl::MutexLock lock(&mu_);
  connections_[target.address] = Connection{target.node_id, *peer};
  if (replaced) {
    ++stats_.reconnects;
    ++connections_changed_;
  }
  return *peer;
}

transport::PeerId DataPlaneExpertBackend::PeerAt(const std::string& address) const {
  absl::MutexLock lock(&mu_);
  auto it = connections_.find(address);
  return it == connections_.end() ? 0 : it->second.peer;
}

absl::Status DataPlaneExpertBackend::SetPlacement(const router::Placement& placement,
                                                  const std::vector<ShardTarget>& shards) {
  if (shards.size() < static_cast<size_t>(placement.num_shards)) {
    return absl::InvalidArgumentError(absl::StrCat("placement has ", placement.num_shards,
                                                   " shards but ", shards.size(),
                                                   " data-plane addresses"));
  }
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status st = router::CheckPlacementVersionJump(
            placement_ != nullptr ? placement_->placement.version : 0, placement.version);
        !st.ok()) {
      return st;
    }
    if (placement_ != nullptr && placement.version < placement_->placement.version) {
      return absl::FailedPreconditionError(
          absl::StrCat("placement version ", placement.version, " is older than the current ",
                       placement_->placement.version));
    }
    if (placement_ != nullptr && placement.version == placement_->placement.version) {
      return absl::OkStatus();
    }
  }
  auto state = std::make_shared<PlacementState>();
  state->placement = placement;
  state->shards.resize(placement.num_shards);
  for (int32_t s = 0; s < placement.num_shards; ++s) {
    if (placement.ExpertsOf(s).empty()) continue;  // not used by this table
    if (shards[s].address.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("shard ", s, " has no data-plane address"));
    }
    // Outside mu_: accessors stay responsive while connecting.
    absl::StatusOr<transport::PeerId> peer = ConnectTo(shards[s]);
    if (!peer.ok()) {
      return absl::UnavailableError(
          absl::StrCat("cannot reach expert shard ", s, ": ", peer.status().message()));
    }
    state->shards[s] = shards[s];
  }
  // Connections to addresses this placement does not name are dropped
  // (a dispatch still planned over an older one re-plans over this one).
  std::vector<transport::PeerId> dropped;
  {
    absl::MutexLock connecting(&connect_mu_);
    absl::MutexLock lock(&mu_);
    if (placement_ != nullptr && placement.version <= placement_->placement.version) {
      return placement.version == placement_->placement.version
                 ? absl::OkStatus()
                 : absl::FailedPreconditionError("a newer placement arrived meanwhile");
    }
    absl::flat_hash_set<std::string> named;
    for (const ShardTarget& t : state->shards) {
      if (!t.address.empty()) named.insert(t.address);
    }
    for (auto it = connections_.begin(); it != connections_.end();) {
      if (named.contains(it->first)) {
        ++it;
        continue;
      }
      dropped.push_back(it->second.peer);
      connections_.erase(it++);
    }
    placement_ = std::move(state);
  }
  for (transport::PeerId peer : dropped) client_.Disconnect(peer);
  return absl::OkStatus();
}

std::shared_ptr<const DataPlaneExpertBackend::PlacementState>
DataPlaneExpertBackend::placement() const {
  absl::MutexLock lock(&mu_);
  return placement_;
}

uint64_t DataPlaneExpertBackend::placement_version() const {
  absl::MutexLock lock(&mu_);
  return placement_ ? placement_->placement.version : 0;
}

bool DataPlaneExpertBackend::NewerPlacementWithout(uint64_t planned, int32_t shard) const {
  absl::MutexLock lock(&mu_);
  if (placement_ == nullptr || placement_->placement.version <= planned) return false;
  const router::Placement& pl = placement_->placement;
  if (shard >= pl.num_shards) return true;
  for (const std::vector<int32_t>& replicas : pl.replicas) {
    if (std::find(replicas.begin(), replicas.end(), shard) != replicas.end()) return false;
  }
  return true;
}

bool DataPlaneExpertBackend::ready() const {
  absl::MutexLock lock(&mu_);
  return placement_ != nullptr && placement_->placement.complete();
}

RemoteExpertsStats DataPlaneExpertBackend::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

absl::Status DataPlaneExpertBackend::SendParts(Pending& p) {
  for (uint64_t t : p.tickets) {
    if (t != 0) client_.Forget(t);
  }
  p.state = placement();
  if (p.state == nullptr) {
    return absl::UnavailableError("no expert placement yet");
  }
  const router::ExpertDispatch& d = p.dispatch;
  if (p.answered.empty()) {
    p.answered.assign(d.assignments.size(), 0);
    DSV2_ASSIGN_OR_RETURN(
        p.plan, router::Plan(d.assignments, d.num_rows, p.state->placement, p.context.replica_key));
  } else {
    // A re-send: only what is still unanswered, mapped back to the
    // dispatch's assignment indices.
    std::vector<router::Assignment> todo;
    std::vector<int32_t> index;
    for (size_t i = 0; i < d.assignments.size(); ++i) {
      if (p.answered[i]) continue;
      todo.push_back(d.assignments[i]);
      index.push_back(static_cast<int32_t>(i));
    }
    DSV2_ASSIGN_OR_RETURN(
        p.plan, router::Plan(todo, d.num_rows, p.state->placement, p.context.replica_key));
    for (router::ShardDispatch& part : p.plan.shards) {
      for (int32_t& s : part.source) s = index[s];
    }
  }
  p.tickets.assign(p.plan.shards.size(), 0);
  p.request_ids.assign(p.plan.shards.size(), 0);
  ++p.attempts;
  const size_t row_bytes = static_cast<size_t>(d.hidden) * DTypeSize(d.dtype);
  int64_t bytes = 0;
  std::vector<transport::WireAssignment> wa;
  std::vector<std::byte> rows;
  for (size_t i = 0; i < p.plan.shards.size(); ++i) {
    const router::ShardDispatch& part = p.plan.shards[i];
    transport::WireHeader h;
    h.request_id = next_request_id_++;
    h.layer = static_cast<uint32_t>(d.layer);
    h.micro_batch = static_cast<uint16_t>(p.context.micro_batch);
    h.dtype = ToWireDType(d.dtype);
    h.num_rows = static_cast<uint32_t>(part.rows.size());
    h.hidden = static_cast<uint32_t>(d.hidden);
    h.num_assignments = static_cast<uint32_t>(part.assignments.size());
    h.placement_version = p.plan.placement_version;
    wa.resize(part.assignments.size());
    for (size_t a = 0; a < wa.size(); ++a) {
      wa[a] = {part.assignments[a].row, part.assignments[a].expert};
    }
    rows.resize(part.rows.size() * row_bytes);
    for (size_t r = 0; r < part.rows.size(); ++r) {
      std::memcpy(rows.data() + r * row_bytes,
                  d.activations.data() + static_cast<size_t>(part.rows[r]) * row_bytes, row_bytes);
    }
    std::vector<std::byte> message = transport::EncodeRequest(h, wa, rows);
    bytes += static_cast<int64_t>(message.size());
    p.request_ids[i] = h.request_id;
    // Looked up at each send: a reconnect (ConnectTo) replaces the peer of
    // an address for every placement version.
    const transport::PeerId peer = PeerAt(p.state->shards[part.shard].address);
    absl::StatusOr<uint64_t> t = peer != 0 ? client_.Send(peer, std::move(message))
                                           : absl::UnavailableError("not connected");
    // A peer already known dead: leave the part unsent; Wait re-plans.
    p.tickets[i] = t.ok() ? *t : 0;
    if (!t.ok()) p.request_ids[i] = 0;
  }
  absl::MutexLock lock(&mu_);
  stats_.shard_requests += static_cast<int64_t>(p.plan.shards.size());
  stats_.request_bytes += bytes;
  for (const router::ShardDispatch& part : p.plan.shards) {
    stats_.resent_assignments += p.attempts > 1 ? static_cast<int64_t>(part.source.size()) : 0;
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> DataPlaneExpertBackend::Send(router::ExpertDispatch dispatch,
                                                      const DispatchContext& context) {
  auto p = std::make_unique<Pending>();
  p->dispatch = std::move(dispatch);
  p->context = context;
  p->sent = absl::Now();
  p->deadline = p->sent + options_.dispatch_timeout;
  p->outputs.resize(p->dispatch.assignments.size() * static_cast<size_t>(p->dispatch.hidden) *
                    DTypeSize(p->dispatch.dtype));
  {
    absl::MutexLock lock(&mu_);
    ++stats_.dispatches;
    for (const router::Assignment& a : p->dispatch.assignments) {
      if (a.expert < 0) continue;
      if (static_cast<size_t>(a.expert) >= stats_.expert_assignments.size()) {
        stats_.expert_assignments.resize(static_cast<size_t>(a.expert) + 1, 0);
      }
      ++stats_.expert_assignments[a.expert];
    }
  }
  DSV2_RETURN_IF_ERROR(SendParts(*p));
  const uint64_t ticket = next_ticket_++;
  pending_[ticket] = std::move(p);
  return ticket;
}

void DataPlaneExpertBackend::Forget(uint64_t ticket) {
  auto it = pending_.find(ticket);
  if (it == pending_.end()) return;
  for (uint64_t t : it->second->tickets) {
    if (t != 0) client_.Forget(t);
  }
  pending_.erase(it);
}

absl::StatusOr<router::ExpertReply> DataPlaneExpertBackend::Wait(uint64_t ticket) {
  auto it = pending_.find(ticket);
  if (it == pending_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown expert dispatch ticket ", ticket));
  }
  std::unique_ptr<Pending> p = std::move(it->second);
  pending_.erase(it);
  const router::ExpertDispatch& d = p->dispatch;
  const size_t row_bytes = static_cast<size_t>(d.hidden) * DTypeSize(d.dtype);
  const auto fail = [&](absl::Status st) -> absl::Status {
    for (uint64_t t : p->tickets) {
      if (t != 0) client_.Forget(t);
    }
    absl::MutexLock lock(&mu_);
    ++stats_.failures;
    return st;
  };
  absl::Duration backoff = absl::Milliseconds(2);
  while (true) {
    std::vector<int32_t> failed_shards;  // silent, dead or unsent
    bool stale = false;
    for (size_t i = 0; i < p->plan.shards.size(); ++i) {
      if (p->request_ids[i] == 0 && p->tickets[i] == 0) {
        failed_shards.push_back(p->plan.shards[i].shard);
        continue;
      }
      if (p->tickets[i] == 0) continue;  // done
      // Waited in slices: a newer placement without this shard (the
      // coordinator removed it: dead, hung or partitioned) is used at once
      // instead of waiting out the deadline.
      absl::StatusOr<std::vector<std::byte>> bytes;
      while (true) {
        bytes = client_.Poll(p->tickets[i], std::min(p->deadline, absl::Now() + kSilenceSlice));
        if (bytes.ok() || !absl::IsDeadlineExceeded(bytes.status())) break;
        if (absl::Now() >= p->deadline ||
            NewerPlacementWithout(p->plan.placement_version, p->plan.shards[i].shard)) {
          client_.Forget(p->tickets[i]);
          bytes = absl::UnavailableError("silent");
          break;
        }
      }
      p->tickets[i] = 0;
      if (!bytes.ok()) {
        p->request_ids[i] = 0;
        failed_shards.push_back(p->plan.shards[i].shard);
        continue;
      }
      {
        absl::MutexLock lock(&mu_);
        stats_.reply_bytes += static_cast<int64_t>(bytes->size());
      }
      const router::ShardDispatch& part = p->plan.shards[i];
      absl::StatusOr<transport::ReplyView> reply = transport::ParseReply(*bytes);
      if (!reply.ok()) {
        return fail(absl::InternalError(absl::StrCat("expert shard ", part.shard,
                                                     " sent a malformed reply: ",
                                                     reply.status().message())));
      }
      const auto status = static_cast<transport::WireStatus>(reply->header.status);
      if (status == transport::WireStatus::kPlacementMismatch) {
        stale = true;
        p->request_ids[i] = 0;
        continue;
      }
      if (status != transport::WireStatus::kOk) {
        return fail(absl::InternalError(absl::StrCat("expert shard ", part.shard,
                                                     " rejected layer ", d.layer,
                                                     " dispatch: ", std::string(reply->error))));
      }
      if (reply->header.request_id != p->request_ids[i] ||
          reply->header.num_assignments != part.assignments.size() ||
          reply->outputs.size() != part.assignments.size() * row_bytes) {
        return fail(absl::InternalError(absl::StrCat(
            "expert shard ", part.shard, " replied with ", reply->outputs.size(), " bytes for ",
            part.assignments.size(), " assignments of request ", p->request_ids[i])));
      }
      for (size_t a = 0; a < part.source.size(); ++a) {
        std::memcpy(p->outputs.data() + static_cast<size_t>(part.source[a]) * row_bytes,
                    reply->outputs.data() + a * row_bytes, row_bytes);
        p->answered[part.source[a]] = 1;
      }
    }
    if (failed_shards.empty() && !stale) break;

    // Re-plan: wait for a newer placement (a dead shard: the coordinator
    // removes it) or back off (a stale version on one side), within the
    // dispatch's deadline. A failed shard that no newer placement removes
    // within kReconnectAfter is alive to the coordinator: its connection
    // is made again and the rows go to it.
    const uint64_t planned = p->plan.placement_version;
    bool newer = false, reconnected = false;
    {
      absl::MutexLock lock(&mu_);
      const uint64_t changes = connections_changed_;
      const absl::Time until =
          std::min(p->deadline, absl::Now() + (failed_shards.empty() ? backoff : kReconnectAfter));
      const auto has_newer = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return placement_ != nullptr && placement_->placement.version > planned;
      };
      const auto woken = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return has_newer() || (!failed_shards.empty() && connections_changed_ != changes);
      };
      mu_.AwaitWithDeadline(absl::Condition(&woken, &decltype(woken)::operator()), until);
      newer = has_newer();
      reconnected = connections_changed_ != changes;
    }
    if (!newer && !reconnected && absl::Now() >= p->deadline) {
      std::vector<std::string> names;
      for (int32_t s : failed_shards) names.push_back(absl::StrCat(s));
      return fail(absl::UnavailableError(absl::StrCat(
          "layer ", d.layer, " experts unreachable within ",
          absl::FormatDuration(options_.dispatch_timeout),
          failed_shards.empty() ? std::string(" (placement version mismatch)")
                                : absl::StrCat(" (shards ", absl::StrJoin(names, ","),
                                               " failed or silent)"))));
    }
    if (!newer && !reconnected && !failed_shards.empty()) {
      // Alive to the coordinator (no placement removed it): the reconnect
      // thread makes its connection again, if it is still the one that
      // failed under the same node id; the next round is woken by it.
      std::sort(failed_shards.begin(), failed_shards.end());
      failed_shards.erase(std::unique(failed_shards.begin(), failed_shards.end()),
                          failed_shards.end());
      absl::MutexLock lock(&mu_);
      for (int32_t s : failed_shards) {
        const ShardTarget& target = p->state->shards[s];
        auto it = connections_.find(target.address);
        if (it == connections_.end() || it->second.node_id != target.node_id) continue;
        const bool queued = std::any_of(
            reconnects_.begin(), reconnects_.end(),
            [&](const ReconnectRequest& r) { return r.target.address == target.address; });
        if (!queued) reconnects_.push_back(ReconnectRequest{target, it->second.peer});
      }
    }
    backoff = std::min(backoff * 2, absl::Milliseconds(100));
    {
      absl::MutexLock lock(&mu_);
      ++stats_.resends;
    }
    // Only the unanswered assignments are re-planned and re-sent.
    if (absl::Status st = SendParts(*p); !st.ok()) return fail(st);
  }
  router::ExpertReply out;
  out.dtype = d.dtype;
  out.hidden = d.hidden;
  out.outputs = std::move(p->outputs);
  if (options_.on_dispatch_done) {
    options_.on_dispatch_done(absl::ToDoubleSeconds(absl::Now() - p->sent));
  }
  return out;
}

}  // namespace dsv2
