#include "tools/dsv2/process_group.h"

#include <poll.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dsv2 {
namespace {

sigset_t GroupSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGCHLD);
  return set;
}

// Polls wake at least this often, so a lost SIGCHLD only delays a reap.
constexpr int kMaxPollMs = 500;

}  // namespace

absl::StatusOr<std::unique_ptr<ProcessGroup>> ProcessGroup::Create() {
  const sigset_t set = GroupSignals();
  if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) {
    return absl::InternalError("cannot block SIGINT/SIGTERM/SIGCHLD");
  }
  const int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (fd < 0) return absl::InternalError(absl::StrCat("signalfd: ", std::strerror(errno)));
  return std::unique_ptr<ProcessGroup>(new ProcessGroup(fd));
}

ProcessGroup::~ProcessGroup() {
  KillAll();
  close(signal_fd_);
}

absl::StatusOr<Child*> ProcessGroup::Start(const ChildSpec& spec) {
  process::ChildOptions o;
  o.argv = spec.argv;
  o.inherit_environment = false;
  o.env = spec.env;
  o.stderr_path = spec.stderr_path;
  o.stdin_from_dev_null = true;
  // Own process group: a terminal's Ctrl-C reaches only `dsv2 up`, which
  // stops the children in order.
  o.new_process_group = true;
  o.death_signal = SIGKILL;
  absl::StatusOr<std::unique_ptr<process::ChildProcess>> p = process::ChildProcess::Start(o);
  if (!p.ok()) return p.status();
  auto child = std::make_unique<Child>();
  child->name = spec.name;
  child->pid = (*p)->pid();
  child->process = *std::move(p);
  children_.push_back(std::move(child));
  return children_.back().get();
}

bool ProcessGroup::ReadPipe(Child& child) {
  child.process->ReadAvailable();
  if (child.ready_line) {  // later lines are not ours to read
    child.process->DiscardBuffered();
    return false;
  }
  child.ready_line = child.process->TakeLine();
  if (child.ready_line) child.process->DiscardBuffered();
  return child.ready_line.has_value();
}

void ProcessGroup::Reap(std::vector<Child*>* exited) {
  for (const auto& c : children_) {
    if (c->exit_status) continue;
    if (std::optional<int> status = c->process->TryWait()) {
      c->exit_status = status;
      exited->push_back(c.get());
    }
  }
}

ProcessGroup::Events ProcessGroup::Poll(absl::Time deadline) {
  Events ev;
  while (true) {
    std::vector<pollfd> fds = {{signal_fd_, POLLIN, 0}};
    std::vector<Child*> readers;
    for (const auto& c : children_) {
      if (c->process->stdout_fd() < 0) continue;
      fds.push_back({c->process->stdout_fd(), POLLIN, 0});
      readers.push_back(c.get());
    }
    const int64_t left_ms =
        std::clamp<int64_t>(absl::ToInt64Milliseconds(deadline - absl::Now()), 0, kMaxPollMs);
    const int n = poll(fds.data(), fds.size(), static_cast<int>(left_ms));
    if (n > 0 && fds[0].revents != 0) {
      signalfd_siginfo info;
      while (read(signal_fd_, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
        if (info.ssi_signo == SIGINT || info.ssi_signo == SIGTERM) {
          ev.termination_signal = static_cast<int>(info.ssi_signo);
        }
      }
    }
    for (size_t i = 0; n > 0 && i < readers.size(); ++i) {
      if (fds[i + 1].revents != 0 && ReadPipe(*readers[i])) ev.ready.push_back(readers[i]);
    }
    Reap(&ev.exited);
    if (ev.termination_signal != 0 || !ev.exited.empty() || !ev.ready.empty() ||
        absl::Now() >= deadline) {
      return ev;
    }
  }
}

int ProcessGroup::Stop(Child& child, absl::Duration grace, std::vector<Child*>* others_exited) {
  if (child.exit_status) return *child.exit_status;
  (void)child.process->Signal(SIGTERM);
  const absl::Time deadline = absl::Now() + grace;
  while (!child.exit_status) {
    const Events ev = Poll(deadline);
    for (Child* c : ev.exited) {
      if (c != &child && others_exited != nullptr) others_exited->push_back(c);
    }
    if (child.exit_status) break;
    if (ev.termination_signal != 0 || absl::Now() >= deadline) {
      child.exit_status = child.process->Kill();
    }
  }
  return *child.exit_status;
}

void ProcessGroup::KillAll() {
  // Every SIGKILL first, then the reaps: the children die in parallel.
  for (const auto& c : children_) {
    if (!c->exit_status) (void)c->process->Signal(SIGKILL);
  }
  for (const auto& c : children_) {
    if (!c->exit_status) c->exit_status = c->process->Kill();
  }
}

}  // namespace dsv2
