#include "attention_service/engine.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace dsv2 {

std::vector<SequenceEvent> RequestStream::Next(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const auto has_events = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !events_.empty(); };
  mu_.AwaitWithTimeout(absl::Condition(&has_events, &decltype(has_events)::operator()), timeout);
  std::vector<SequenceEvent> out(std::make_move_iterator(events_.begin()),
                                 std::make_move_iterator(events_.end()));
  events_.clear();
  return out;
}

void RequestStream::Push(SequenceEvent event) {
  absl::MutexLock lock(&mu_);
  events_.push_back(std::move(event));
}

struct AttentionEngine::Command {
  enum class Kind { kAdd, kCancel, kFailAll } kind = Kind::kAdd;
  GenerationRequest request;  // kAdd
  uint64_t id = 0;            // kCancel
  std::shared_ptr<RequestStream> stream;
  absl::Status result;  // kAdd: the admission result; kFailAll: the error to end with
  bool found = false;
  absl::Notification done;
};

AttentionEngine::AttentionEngine(Scheduler& scheduler, const LatentCache& cache,
                                 std::function<void(const SchedulerStats&)> on_step)
    : scheduler_(scheduler), cache_(cache), on_step_(std::move(on_step)) {
  stats_.cache_capacity_tokens = cache.capacity_tokens();
  stats_.cache_free_tokens = cache.free_blocks() * kLatentBlockTokens;
  thread_ = std::thread([this] { Run(); });
}

AttentionEngine::~AttentionEngine() { Shutdown(); }

absl::StatusOr<std::shared_ptr<RequestStream>> AttentionEngine::Submit(GenerationRequest request) {
  auto c = std::make_shared<Command>();
  c->kind = Command::Kind::kAdd;
  c->request = std::move(request);
  c->stream = std::make_shared<RequestStream>();
  {
    absl::MutexLock lock(&mu_);
    if (draining_ || stop_) return absl::UnavailableError("attention node is draining");
    inbox_.push_back(c);
  }
  c->done.WaitForNotification();
  if (!c->result.ok()) return c->result;
  return c->stream;
}

bool AttentionEngine::Cancel(uint64_t id) {
  auto c = std::make_shared<Command>();
  c->kind = Command::Kind::kCancel;
  c->id = id;
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return false;
    inbox_.push_back(c);
  }
  c->done.WaitForNotification();
  return c->found;
}

namespace {

absl::Status ShuttingDown() { return absl::UnavailableError("attention node is shutting down"); }

}  // namespace

void AttentionEngine::StopAdmittingAndFailAllLocked(absl::Status error) {
  draining_ = true;
  stats_.draining = true;
  auto cmd = std::make_shared<Command>();
  cmd->kind = Command::Kind::kFailAll;
  cmd->result = std::move(error);
  inbox_.push_back(std::move(cmd));
}

bool AttentionEngine::Drain(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  stats_.draining = true;
  const auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return (idle_ && inbox_.empty()) || stop_;
  };
  if (mu_.AwaitWithTimeout(absl::Condition(&idle, &decltype(idle)::operator()), timeout)) {
    return true;
  }
  StopAdmittingAndFailAllLocked(ShuttingDown());
  return false;
}

void AttentionEngine::HandOff() {
  absl::MutexLock lock(&mu_);
  StopAdmittingAndFailAllLocked(absl::AbortedError(
      "attention node is leaving: the request is handed back to be resumed on another node"));
}

void AttentionEngine::Shutdown() {
  Drain(absl::ZeroDuration());
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

EngineStats AttentionEngine::stats() const {
  absl::MutexLock lock(&mu_);
  EngineStats s = stats_;
  s.pending_commands = static_cast<int64_t>(inbox_.size());
  return s;
}

void AttentionEngine::Deliver(std::vector<SequenceEvent>& events) {
  absl::MutexLock lock(&mu_);
  for (SequenceEvent& e : events) {
    auto it = streams_.find(e.id);
    if (it == streams_.end()) continue;
    const bool last = e.finish != FinishReason::kNone || !e.error.ok();
    std::shared_ptr<RequestStream> stream = it->second;
    if (last) streams_.erase(it);
    stream->Push(std::move(e));
  }
  events.clear();
}

void AttentionEngine::Run() {
  std::vector<SequenceEvent> events;
  while (true) {
    std::deque<std::shared_ptr<Command>> commands;
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      const bool have_work = !scheduler_.idle();
      idle_ = !have_work;
      if (!have_work) {
        const auto wake = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
          return !inbox_.empty() || stop_;
        };
        mu_.Await(absl::Condition(&wake, &decltype(wake)::operator()));
      }
      commands.swap(inbox_);
      // Commands may add work: not idle until the next check says so, so a
      // Drain cannot see "idle" while a just-added request runs.
      if (!commands.empty()) idle_ = false;
      stop = stop_;
    }
    for (const std::shared_ptr<Command>& c : commands) {
      switch (c->kind) {
        case Command::Kind::kAdd: {
          const uint64_t id = c->request.id;
          c->result = scheduler_.Add(std::move(c->request));
          if (c->result.ok()) {
            absl::MutexLock lock(&mu_);
            streams_[id] = c->stream;
          }
          break;
        }
        case Command::Kind::kCancel: {
          c->found = scheduler_.Cancel(c->id);
          absl::MutexLock lock(&mu_);
          // The stream ends too: its reader must not wait for events that
          // will never come.
          if (auto it = streams_.find(c->id); it != streams_.end()) {
            SequenceEvent e;
            e.id = c->id;
            e.error = absl::CancelledError(absl::StrCat("request ", c->id, " was cancelled"));
            it->second->Push(std::move(e));
            streams_.erase(it);
          }
          break;
        }
        case Command::Kind::kFailAll:
          scheduler_.FailAll(c->result, &events);
          break;
      }
      c->done.Notify();
    }
    commands.clear();
    if (stop) {
      scheduler_.FailAll(ShuttingDown(), &events);
      Deliver(events);
      break;
    }
    const int64_t steps_before = scheduler_.stats().steps_total;
    scheduler_.Step(&events);
    Deliver(events);
    if (on_step_ && scheduler_.stats().steps_total != steps_before) on_step_(scheduler_.stats());
    absl::MutexLock lock(&mu_);
    stats_.scheduler = scheduler_.stats();
    stats_.cache_free_tokens = cache_.free_blocks() * kLatentBlockTokens;
  }
  absl::MutexLock lock(&mu_);
  stats_.scheduler = scheduler_.stats();
  idle_ = true;
}

}  // namespace dsv2
