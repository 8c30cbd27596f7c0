#include "tools/process/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

extern char** environ;

namespace dsv2::process {
namespace {

// What the child reports through the close-on-exec pipe when it cannot
// reach execve's success: the step that failed and its errno.
enum class Step : int { kStdin = 1, kStdout, kStderr, kExec };
struct ExecReport {
  Step step;
  int error;
};

const char* StepName(Step s) {
  switch (s) {
    case Step::kStdin:
      return "redirect stdin";
    case Step::kStdout:
      return "redirect stdout";
    case Step::kStderr:
      return "redirect stderr";
    case Step::kExec:
      break;
  }
  return "execute";
}

// Async-signal-safe: the child's side after fork.
[[noreturn]] void ReportAndExit(int report_fd, Step step, int error) {
  const ExecReport r{step, error};
  const ssize_t ignored = write(report_fd, &r, sizeof r);
  (void)ignored;
  _exit(127);
}

// dup2 that also clears close-on-exec when `fd` already is `target` (dup2
// then does nothing). Async-signal-safe.
bool Redirect(int fd, int target) {
  if (fd == target) return fcntl(target, F_SETFD, 0) == 0;
  return dup2(fd, target) == target;
}

void CloseIfOpen(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

absl::string_view VariableName(absl::string_view entry) { return entry.substr(0, entry.find('=')); }

// The child's environment, built before fork.
std::vector<std::string> Environment(const ChildOptions& o) {
  std::vector<std::string> env;
  if (o.inherit_environment) {
    absl::flat_hash_set<absl::string_view> replaced;
    for (const std::string& e : o.env) replaced.insert(VariableName(e));
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
      if (!replaced.contains(VariableName(*e))) env.emplace_back(*e);
    }
  }
  env.insert(env.end(), o.env.begin(), o.env.end());
  return env;
}

}  // namespace

std::string DescribeExitStatus(int wait_status) {
  if (wait_status == kReapedElsewhere) return "ended (reaped elsewhere, status unknown)";
  if (WIFEXITED(wait_status)) return absl::StrCat("exited with status ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    const char* name = strsignal(sig);
    return absl::StrCat("killed by signal ", sig, " (", name != nullptr ? name : "?", ")");
  }
  return absl::StrCat("ended with wait status ", wait_status);
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(const ChildOptions& o) {
  if (o.argv.empty()) return absl::InvalidArgumentError("empty argv");
  // Everything the child touches is made here, before fork.
  std::vector<char*> args;
  for (const std::string& a : o.argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const std::vector<std::string> env = Environment(o);
  std::vector<char*> envp;
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  sigset_t empty_mask;
  sigemptyset(&empty_mask);
  const pid_t parent = getpid();

  int err_fd = -1, in_fd = -1, out_r = -1, out_w = -1, report_r = -1, report_w = -1;
  const auto close_all = [&] {
    for (int* fd : {&err_fd, &in_fd, &out_r, &out_w, &report_r, &report_w}) CloseIfOpen(*fd);
  };
  if (!o.stderr_path.empty()) {
    err_fd = open(o.stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (err_fd < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot open ", o.stderr_path, ": ", std::strerror(errno)));
    }
  }
  if (o.stdin_from_dev_null) {
    in_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (in_fd < 0) {
      const int e = errno;
      close_all();
      return absl::InternalError(absl::StrCat("cannot open /dev/null: ", std::strerror(e)));
    }
  }
  int fds[2];
  if (o.pipe_stdout) {
    if (pipe2(fds, O_CLOEXEC) != 0) {
      const int e = errno;
      close_all();
      return absl::InternalError(absl::StrCat("pipe: ", std::strerror(e)));
    }
    out_r = fds[0];
    out_w = fds[1];
  }
  if (pipe2(fds, O_CLOEXEC) != 0) {
    const int e = errno;
    close_all();
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(e)));
  }
  report_r = fds[0];
  report_w = fds[1];

  const pid_t pid = fork();
  if (pid == 0) {
    // The child: async-signal-safe calls only from here to execve.
    if (o.new_process_group) setpgid(0, 0);
    if (o.death_signal != 0) {
      prctl(PR_SET_PDEATHSIG, o.death_signal);
      if (getppid() != parent) _exit(127);  // the parent died before prctl
    }
    sigprocmask(SIG_SETMASK, &empty_mask, nullptr);
    if (in_fd >= 0 && !Redirect(in_fd, STDIN_FILENO)) {
      ReportAndExit(report_w, Step::kStdin, errno);
    }
    if (out_w >= 0 && !Redirect(out_w, STDOUT_FILENO)) {
      ReportAndExit(report_w, Step::kStdout, errno);
    }
    if (err_fd >= 0 && !Redirect(err_fd, STDERR_FILENO)) {
      ReportAndExit(report_w, Step::kStderr, errno);
    }
    execve(args[0], args.data(), envp.data());
    ReportAndExit(report_w, Step::kExec, errno);
  }
  const int fork_errno = errno;
  CloseIfOpen(report_w);
  CloseIfOpen(out_w);
  CloseIfOpen(err_fd);
  CloseIfOpen(in_fd);
  if (pid < 0) {
    close_all();
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(fork_errno)));
  }
  // EOF: execve succeeded (the pipe closed on exec); a report: it failed.
  ExecReport report{};
  ssize_t n;
  do {
    n = read(report_r, &report, sizeof report);
  } while (n < 0 && errno == EINTR);
  CloseIfOpen(report_r);
  if (n == static_cast<ssize_t>(sizeof report)) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    close_all();
    const absl::Status st = absl::FailedPreconditionError(absl::StrCat(
        "cannot ", StepName(report.step), " ", o.argv[0], ": ", std::strerror(report.error)));
    return st;
  }
  if (out_r >= 0) fcntl(out_r, F_SETFL, fcntl(out_r, F_GETFL) | O_NONBLOCK);
  // A pidfd lets Wait poll for the exit; without one (old kernels) Wait
  // falls back to polling waitpid.
  // (glibc 2.36's <sys/pidfd.h> lacks extern "C": call the syscall.)
  const int pid_fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pid_fd >= 0) fcntl(pid_fd, F_SETFD, FD_CLOEXEC);
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, out_r, pid_fd));
}

ChildProcess::~ChildProcess() {
  if (!exit_status_) Kill();
  if (out_fd_ >= 0) close(out_fd_);
  if (pid_fd_ >= 0) close(pid_fd_);
}

bool ChildProcess::ReadAvailable() {
  char buf[4096];
  while (out_fd_ >= 0) {
    const ssize_t n = read(out_fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) {  // EOF, or an error that ends the pipe as well
      close(out_fd_);
      out_fd_ = -1;
      break;
    }
    buffer_.append(buf, static_cast<size_t>(n));
  }
  return false;
}

std::optional<std::string> ChildProcess::TakeLine() {
  const size_t nl = buffer_.find('\n');
  if (nl == std::string::npos) return std::nullopt;
  std::string line = buffer_.substr(0, nl);
  buffer_.erase(0, nl + 1);
  return line;
}

absl::StatusOr<std::string> ChildProcess::ReadLine(absl::Time deadline) {
  while (true) {
    if (std::optional<std::string> line = TakeLine()) return *std::move(line);
    if (out_fd_ < 0) {
      if (!buffer_.empty()) {
        std::string last = std::move(buffer_);
        buffer_.clear();
        return last;
      }
      return absl::UnavailableError(
          absl::StrCat("child ", pid_, " closed stdout (exited?) before a line"));
    }
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0 && deadline != absl::InfiniteFuture()) {
      return absl::DeadlineExceededError(absl::StrCat("no line from child ", pid_, " in time"));
    }
    pollfd p{out_fd_, POLLIN, 0};
    const int timeout =
        deadline == absl::InfiniteFuture() ? -1 : static_cast<int>(std::min<int64_t>(ms, 1 << 30));
    if (poll(&p, 1, timeout) > 0) ReadAvailable();
  }
}

absl::Status ChildProcess::Signal(int sig) {
  if (exit_status_) {
    return absl::FailedPreconditionError(absl::StrCat("child ", pid_, " was already reaped"));
  }
  if (kill(pid_, sig) != 0) {
    return absl::InternalError(absl::StrCat("kill ", pid_, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

std::optional<int> ChildProcess::Reap(bool block) {
  if (exit_status_) return exit_status_;
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) exit_status_ = status;
  // Reaped by someone else (a waitpid(-1) elsewhere): never wait again.
  if (r < 0 && errno == ECHILD) exit_status_ = kReapedElsewhere;
  return exit_status_;
}

std::optional<int> ChildProcess::TryWait() { return Reap(/*block=*/false); }

absl::StatusOr<int> ChildProcess::Wait(absl::Time deadline) {
  absl::Duration backoff = absl::Milliseconds(1);
  while (true) {
    if (std::optional<int> st = Reap(/*block=*/false)) return *st;
    if (deadline == absl::InfiniteFuture()) return *Reap(/*block=*/true);
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat("child ", pid_, " still runs"));
    }
    if (pid_fd_ >= 0) {
      // Readable once the child has exited.
      pollfd p{pid_fd_, POLLIN, 0};
      poll(&p, 1,
           static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1, 1 << 30)));
    } else {
      absl::SleepFor(std::min(backoff, left));
      backoff = std::min(backoff * 2, absl::Milliseconds(50));
    }
  }
}

absl::StatusOr<int> ChildProcess::Stop(int sig, absl::Duration timeout) {
  if (exit_status_) return *exit_status_;
  if (sig != 0) kill(pid_, sig);
  return Wait(absl::Now() + timeout);
}

int ChildProcess::Terminate(absl::Duration grace) {
  absl::StatusOr<int> st = Stop(SIGTERM, grace);
  if (st.ok()) return *st;
  return Kill();
}

int ChildProcess::Kill() {
  if (exit_status_) return *exit_status_;
  kill(pid_, SIGKILL);
  return *Reap(/*block=*/true);
}

}  // namespace dsv2::process
