#include "tools/dsv2/process_group.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
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

std::string DescribeExitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exited with status ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    const char* name = strsignal(sig);
    return absl::StrCat("killed by signal ", sig, " (", name != nullptr ? name : "?", ")");
  }
  return absl::StrCat("ended with wait status ", wait_status);
}

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
  for (const auto& c : children_) {
    if (c->out_fd >= 0) close(c->out_fd);
  }
  close(signal_fd_);
}

absl::StatusOr<Child*> ProcessGroup::Start(const ChildSpec& spec) {
  if (spec.argv.empty()) return absl::InvalidArgumentError("empty argv");
  // Everything the child needs is prepared before fork: between fork and
  // exec it may only make async-signal-safe calls (gRPC threads may exist).
  int err_fd = -1;
  if (!spec.stderr_path.empty()) {
    err_fd = open(spec.stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (err_fd < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot open ", spec.stderr_path, ": ", std::strerror(errno)));
    }
  }
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    if (err_fd >= 0) close(err_fd);
    if (null_fd >= 0) close(null_fd);
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  std::vector<char*> args;
  for (const std::string& a : spec.argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (const std::string& e : spec.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const std::string exec_error = absl::StrCat("dsv2 up: cannot execute ", spec.argv[0], "\n");
  const sigset_t set = GroupSignals();
  const pid_t parent = getpid();

  const pid_t pid = fork();
  if (pid == 0) {
    // Own process group: a terminal's Ctrl-C reaches only `dsv2 up`, which
    // stops the children in order.
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    sigprocmask(SIG_UNBLOCK, &set, nullptr);
    dup2(fds[1], STDOUT_FILENO);
    if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    execve(args[0], args.data(), envp.data());
    const ssize_t ignored = write(STDERR_FILENO, exec_error.data(), exec_error.size());
    (void)ignored;
    _exit(127);
  }
  const int fork_errno = errno;
  close(fds[1]);
  if (err_fd >= 0) close(err_fd);
  if (null_fd >= 0) close(null_fd);
  if (pid < 0) {
    close(fds[0]);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(fork_errno)));
  }
  fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
  auto child = std::make_unique<Child>();
  child->name = spec.name;
  child->pid = pid;
  child->out_fd = fds[0];
  children_.push_back(std::move(child));
  return children_.back().get();
}

bool ProcessGroup::ReadPipe(Child& child) {
  bool completed = false;
  char buf[4096];
  while (child.out_fd >= 0) {
    const ssize_t n = read(child.out_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n <= 0) {  // EOF or error: the child closed stdout (or exited)
      close(child.out_fd);
      child.out_fd = -1;
      break;
    }
    if (child.ready_line) continue;  // later lines are not ours to read
    child.buffer.append(buf, static_cast<size_t>(n));
    const size_t nl = child.buffer.find('\n');
    if (nl != std::string::npos) {
      child.ready_line = child.buffer.substr(0, nl);
      child.buffer.clear();
      completed = true;
    }
  }
  return completed;
}

void ProcessGroup::Reap(std::vector<Child*>* exited) {
  for (const auto& c : children_) {
    if (c->exit_status) continue;
    int status = 0;
    if (waitpid(c->pid, &status, WNOHANG) == c->pid) {
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
      if (c->out_fd < 0) continue;
      fds.push_back({c->out_fd, POLLIN, 0});
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
  kill(child.pid, SIGTERM);
  const absl::Time deadline = absl::Now() + grace;
  while (!child.exit_status) {
    const Events ev = Poll(deadline);
    for (Child* c : ev.exited) {
      if (c != &child && others_exited != nullptr) others_exited->push_back(c);
    }
    if (child.exit_status) break;
    if (ev.termination_signal != 0 || absl::Now() >= deadline) {
      kill(child.pid, SIGKILL);
      int status = 0;
      while (waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
      }
      child.exit_status = status;
    }
  }
  return *child.exit_status;
}

void ProcessGroup::KillAll() {
  for (const auto& c : children_) {
    if (!c->exit_status) kill(c->pid, SIGKILL);
  }
  for (const auto& c : children_) {
    if (c->exit_status) continue;
    int status = 0;
    while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR) {
    }
    c->exit_status = status;
  }
}

}  // namespace dsv2
